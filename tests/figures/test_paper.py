"""Paper figures: n stated in the titles, intervals drawn as artists (bands, error bars), and the
attention-on-anatomy pair drawn from capture stores that keep their inputs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PolyCollection  # noqa: E402

from attnprobe.data.preprocess import PreprocessConfig, prepare_array  # noqa: E402
from attnprobe.errors import DataError  # noqa: E402
from attnprobe.figures.paper import adi_vs_dice, attention_padding_pair, main_figure, store_attention  # noqa: E402
from attnprobe.store import capture_to_store  # noqa: E402
from attnprobe.store.inputs import read_input  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _adi(n_cases: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for backbone in ("Swin UNETR", "SMIT"):
        for preset, slope in (("base", 0.004), ("act", 0.002)):
            for case in range(n_cases):
                for p in (0, 16, 32, 48):
                    rows.append({"model": f"{backbone}-{preset}", "backbone": backbone, "preset": preset,
                                 "case": f"c{case}", "padding": p, "value": slope * p + rng.normal(0, 0.01)})
    return pd.DataFrame(rows)


def _cka() -> pd.DataFrame:
    rows = []
    for model in ("swin-base", "swin-act"):
        for i, block in enumerate(["stage0.block0", "stage1.block0", "stage2.block0"]):
            v = 0.9 - 0.1 * i
            rows.append({"model": model, "block": block, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.03,
                         "baseline_mean": 0.4, "baseline_sd": 0.05, "baseline_seeds": 2, "n": 8})
    return pd.DataFrame(rows)


def _detection() -> pd.DataFrame:
    return pd.DataFrame({"preset": ["base", "act", "base", "act"], "backbone": ["Swin", "Swin", "SMIT", "SMIT"],
                         "n_detected": [3, 6, 2, 5], "n_cases": [8, 8, 8, 8],
                         "detection_rate_ci_low": [0.1, 0.4, 0.0, 0.3], "detection_rate_ci_high": [0.7, 1.0, 0.5, 0.9]})


def test_main_figure_states_n_and_draws_intervals():
    fig = main_figure(_adi(), _cka(), _detection(), preset_order=["base", "act"])
    try:
        adi, cka, det = fig.axes[:3]
        assert "n = 6 cases" in adi.get_title() and "n = 8" in cka.get_title() and "n = 8" in det.get_title()
        # one case-bootstrap band per (backbone, preset) line
        assert sum(isinstance(c, PolyCollection) for c in adi.collections) == 4
        # CKA: error bars from the recorded intervals and the random-init baseline band
        assert any(isinstance(c, LineCollection) for c in cka.collections)
        assert any(isinstance(c, PolyCollection) for c in cka.collections)
        assert any("random-init baseline" in t.get_text() for t in cka.get_legend().get_texts())
        assert any(isinstance(c, LineCollection) for c in det.collections)  # detection error bars
    finally:
        plt.close(fig)
    fig = main_figure(_adi(), None, None)
    assert len(fig.axes) == 1
    plt.close(fig)
    with pytest.raises(DataError, match="needs the ADI sweep"):
        main_figure(pd.DataFrame(), _cka())


def test_adi_vs_dice_has_interval_bars_and_n():
    table = _adi().rename(columns={"value": "adi"}).assign(dice=lambda f: 0.8 - f["adi"])
    fig = adi_vs_dice(table)
    try:
        ax = fig.axes[0]
        assert "n = 6 cases" in ax.get_title()
        assert any(isinstance(c, LineCollection) for c in ax.collections)
    finally:
        plt.close(fig)


@pytest.fixture(scope="module")
def stores(smit, tmp_path_factory):
    """One labelled case captured at two amounts of axial padding, inputs kept."""
    rng = np.random.default_rng(3)
    image = rng.random((40, 40, 24), dtype=np.float32) + 0.1
    label = np.zeros(image.shape, dtype=np.uint8)
    label[15:25, 15:25, 8:14] = 1
    out = []
    folder = tmp_path_factory.mktemp("stores")
    for pad in (0, 12):
        case = prepare_array(image[:, :, : 24 - pad] if pad else image, label=label[:, :, : 24 - pad] if pad else label,
                             spacing=(2.0, 2.0, 3.0), case_id="c0",
                             config=PreprocessConfig(roi=(64, 64, 32), spacing=None, pad_mode="end"))
        out.append(capture_to_store(smit, [case], folder / f"p{pad}.zarr", taps=["stage0.block0.attn"],
                                    keep_inputs=True, attrs={"padding": {"mode": "sweep", "amount": pad}}))
    return out


def test_store_keeps_the_input_crop_and_its_box(stores):
    kept = read_input(stores[1], 0)
    assert kept is not None and kept.case_id == "c0" and kept.image.shape == (64, 64, 32)
    assert kept.spacing == (2.0, 2.0, 3.0) and kept.label.sum() > 0 and (~kept.mask).any()
    assert kept.crop_box is not None and kept.crop_box["pad_after"][2] > 0
    import zarr

    fraction = float(zarr.open_group(str(stores[1]), mode="r")["pad_fraction"][0])
    assert 0 < fraction < 1
    # offline metrics report the fraction the store knows (was NaN, "pad frac n/a")
    from attnprobe.metrics.offline import store_flow

    assert np.allclose(store_flow(stores[1])["pad_fraction"].to_numpy(float), fraction)


def test_attention_pair_from_stores(stores):
    panels = [store_attention(s) for s in stores]
    assert panels[0].block == "stage0.block0" and panels[1].padding == 12 and panels[0].padding == 0
    assert panels[1].pad_fraction > panels[0].pad_fraction
    fig = attention_padding_pair(panels)
    try:
        image_axes = [ax for ax in fig.axes if ax.get_images()]
        assert len(image_axes) == 2
        assert "n = 1 case" in fig.get_suptitle()
        assert all("(mm)" in ax.get_xlabel() and "(mm)" in ax.get_ylabel() for ax in image_axes)
        # one colour scale, from percentiles of the real voxels (not the maximum: not saturated)
        limits = {ax.get_images()[1].get_clim() for ax in image_axes}
        assert len(limits) == 1
        lo, hi = limits.pop()
        assert hi < max(float(p.attention.max()) for p in panels) and lo >= 0
    finally:
        plt.close(fig)


def test_store_without_inputs_is_refused(smit, tmp_path):
    case = prepare_array(np.random.default_rng(0).random((40, 40, 24), dtype=np.float32), case_id="c0",
                         config=PreprocessConfig(roi=(64, 64, 32), spacing=None))
    path = capture_to_store(smit, [case], tmp_path / "plain.zarr", taps=["stage0.block0.attn"])
    assert read_input(path, 0) is None
    with pytest.raises(DataError, match="keeps no input crops"):
        store_attention(path)


def test_prediction_overlays_outline_reference_and_prediction():
    from matplotlib.contour import ContourSet

    from attnprobe.figures.paper import prediction_overlays

    image = np.random.default_rng(0).random((20, 20, 16)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[8:12, 8:12, 6:10] = 1
    pred = np.roll(label, 2, axis=0)
    arrays = {"image": image, "label": label, "prediction": pred, "spacing": np.array([2.0, 2.0, 3.0]), "case": "c0"}
    fig = prediction_overlays([("Swin (base)", arrays), ("Swin (act)", arrays)])
    try:
        assert "n = 1 case" in fig.get_suptitle()
        drawn = [ax for ax in fig.axes if ax.get_images()]
        assert len(drawn) == 2 and all(sum(isinstance(c, ContourSet) for c in ax.collections) == 2 for ax in drawn)
        assert drawn[0].get_xlabel() == "x (mm)" and drawn[0].get_ylabel() == "z (mm)"
    finally:
        plt.close(fig)
