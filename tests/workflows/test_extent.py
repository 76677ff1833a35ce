"""Axial extents, token efficiency of crops and the crop recommendation, against hand counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from attnprobe.data.preprocess import PreprocessConfig, prepare_array
from attnprobe.errors import ConfigError
from attnprobe.workflows.extent import (
    default_candidates,
    extent_and_efficiency,
    fit_mask,
    recommend_crop,
    roi_name,
    summarize_efficiency,
    summarize_extents,
    token_efficiency,
)

# Hand computation for Swin UNETR (patch 2, window 7, shift 3) with a 64x64x32 input whose real
# voxels are the box [0, 40) x [0, 64) x [0, 20) (padding at the end):
#
# stage 0: grid (32, 32, 16) -> window-padded (35, 35, 21); real tokens 20*32*10 = 6400 of
#   35*35*21 = 25725. Windows 5x5x3 = 75. Unshifted: real windows per axis x 3 ([0,7),[7,14),[14,21)
#   hold tokens 0..19), y 5, z 2 -> 30, so 45 empty. Shifted (roll -3): a new index i holds old
#   (i+3) mod 35; x real at i in [0,17) and 32..34 -> windows 0,1,2,4 = 4; y 5; z (mod 21, old 0..9)
#   i in [0,7) and 18..20 -> windows 0 and 2 = 2 -> 40 real, 35 empty. Mean empty = 80/150.
# stage 1: grid (16, 16, 8) -> (21, 21, 14); real 10*16*5 = 800 of 6174. Windows 3x3x2 = 18.
#   Unshifted: x 2, y 3, z 1 -> 6 real, 12 empty. Shifted: x (mod 21, old 0..9) windows 0 and 2 = 2;
#   y 3; z (mod 14, old 0..4: i in [0,2) and 11..13) 2 -> 12 real, 6 empty. Mean empty = 18/36.
HAND = {
    0: {"real": 6400, "total": 25725, "empty_fraction": 80 / 150, "input_pad": 32 * 32 * 16 - 6400},
    1: {"real": 800, "total": 6174, "empty_fraction": 18 / 36, "input_pad": 16 * 16 * 8 - 800},
}


@pytest.fixture(scope="module")
def box_case():
    """A 40x64x20 mm volume at 1 mm, every voxel foreground (nothing is cropped)."""
    image = np.random.default_rng(0).uniform(0.5, 1.0, size=(40, 64, 20)).astype(np.float32)
    return prepare_array(image, spacing=1.0, case_id="box", config=PreprocessConfig(roi="full"))


def test_token_efficiency_matches_hand_count(tiny_swin):
    mask = torch.zeros(1, 64, 64, 32, dtype=torch.bool)
    mask[0, :40, :, :20] = True
    frame = token_efficiency(tiny_swin, mask).set_index("stage")
    for stage, hand in HAND.items():
        row = frame.loc[stage]
        assert row["real_tokens"] == hand["real"] and row["total_tokens"] == hand["total"]
        assert row["efficiency"] == pytest.approx(hand["real"] / hand["total"], abs=1e-12)
        assert row["empty_window_fraction"] == pytest.approx(hand["empty_fraction"], abs=1e-12)
        assert row["input_pad_fraction"] == pytest.approx(hand["input_pad"] / hand["total"], abs=1e-12)
        # the three kinds partition the tokens
        assert row["efficiency"] + row["input_pad_fraction"] + row["window_pad_fraction"] == pytest.approx(1.0)


def test_fit_mask_places_the_case_like_preprocessing(box_case):
    assert box_case.box.kept_shape == (40, 64, 20)
    fitted = fit_mask(box_case, (64, 64, 32))
    expected = torch.zeros(1, 64, 64, 32, dtype=torch.bool)
    expected[0, :40, :, :20] = True
    assert torch.equal(fitted, expected)
    # a crop smaller than the case keeps a full crop of real voxels on that axis
    small = fit_mask(box_case, (32, 32, 32))
    assert small.shape == (1, 32, 32, 32) and int(small.sum()) == 32 * 32 * 20
    # the same mask as preparing the volume straight to the crop
    direct = prepare_array(box_case.image[0, :40, :64, :20].numpy(), spacing=1.0,
                           config=PreprocessConfig(roi=(32, 32, 32)))
    assert torch.equal(small, direct.mask)


def test_extent_and_efficiency_tables(box_case):
    extents, per_case = extent_and_efficiency([box_case], [(64, 64, 64), (64, 64, 32)], arch="swin_unetr",
                                              model_preset="tiny")
    assert extents.loc[0, ["extent_x_mm", "extent_y_mm", "extent_z_mm"]].tolist() == [40.0, 64.0, 20.0]
    row = per_case[(per_case.candidate == "64x64x32") & (per_case.stage == 0)].iloc[0]
    assert row["efficiency"] == pytest.approx(6400 / 25725) and bool(row["fits_axially"])
    summary = summarize_efficiency(per_case)
    assert set(summary.candidate) == {"64x64x64", "64x64x32"} and (summary.n_cases == 1).all()
    s0 = summary[summary.stage == 0].set_index("candidate")["efficiency_mean"]
    # the anisotropic crop wastes fewer tokens on this short case
    assert s0["64x64x32"] > s0["64x64x64"]
    dist = summarize_extents(extents).set_index("axis")
    assert dist.loc["z", "p90"] == 20.0 and dist.loc["z", "n"] == 1


def _extents(z_mm):
    return pd.DataFrame({"case": [f"c{i}" for i in range(len(z_mm))], "extent_x_mm": 100.0,
                         "extent_y_mm": 100.0, "extent_z_mm": z_mm})


def test_recommend_coverage_rule():
    # 90th percentile of 40..85 mm (linear interpolation) is 80.5 mm -> 96 voxels at 1 mm
    ext = _extents(np.arange(40.0, 90.0, 5.0))
    rec = recommend_crop(ext, arch="swin_unetr")
    assert rec.axial_quantile_mm == pytest.approx(80.5) and rec.roi == (96, 96, 96)
    rec = recommend_crop(ext, arch="swin_unetr", coverage=0.5)  # 62.5 mm -> 64
    assert rec.roi == (96, 96, 64)
    rec = recommend_crop(_extents([30.0, 31.0]), arch="smit")
    assert rec.roi == (128, 128, 32)
    # never deeper than the pretrained cube
    assert recommend_crop(_extents([300.0]), arch="swin_unetr").roi == (96, 96, 96)
    with pytest.raises(ConfigError):
        recommend_crop(ext, arch="swin_unetr", coverage=0.0)


def test_recommend_efficiency_rule():
    ext = _extents([50.0, 60.0])
    eff = pd.DataFrame({"case": "c0", "candidate": ["96x96x96", "96x96x64", "96x96x32"], "roi_x": 96,
                        "roi_y": 96, "roi_z": [96, 64, 32], "stage": 0, "efficiency": [0.4, 0.6, 0.9]})
    rec = recommend_crop(ext, eff, arch="swin_unetr", rule="efficiency")
    # 96x96x32 is the most efficient but does not cover 59 mm
    assert rec.roi == (96, 96, 64) and rec.stage0_efficiency == pytest.approx(0.6)
    with pytest.raises(ConfigError):
        recommend_crop(ext, None, arch="swin_unetr", rule="efficiency")


def test_candidates_and_names():
    assert default_candidates("swin_unetr") == [(96, 96, 96), (96, 96, 64), (96, 96, 32)]
    assert default_candidates("swin_unetr", "tiny") == [(64, 64, 64), (64, 64, 32)]
    assert roi_name((128, 128, 64)) == "128x128x64"
    with pytest.raises(ConfigError):
        fit_mask(prepare_array(np.random.default_rng(1).uniform(0.5, 1.0, (8, 8, 8)), config=PreprocessConfig(roi="full")),
                 (48, 64, 64))


def test_study_crops_measures_recommends_and_records(box_case, tmp_path):
    from attnprobe.results import ExtentRun
    from attnprobe.workflows.extent import study_crops

    seen = []
    study = study_crops([box_case], arch="swin_unetr", model_preset="tiny", rule="efficiency", on_case=seen.append)
    assert seen == [box_case]
    # default candidates: the pretrained cube (64) and every shallower multiple of 32
    assert list(dict.fromkeys(study.efficiency["candidate"])) == ["64x64x64", "64x64x32"]
    assert study.efficiency.equals(summarize_efficiency(study.per_case))
    assert study.recommendation.roi == (64, 64, 32)  # both cover 20 mm; the shallower wastes fewer tokens
    study.record(label="box").save(tmp_path / "ext")
    back = ExtentRun.load(tmp_path / "ext")
    assert back.arch == "swin_unetr" and back.model_preset == "tiny" and len(back.extents) == 1
