"""Padding sweep: input construction, and the direction of ADI on a uniform-attention model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from attnprobe.capture import Probe
from attnprobe.errors import ConfigError, ShapeError
from attnprobe.metrics.sweep import SweepSpec, padding_sweep, sweep_tables, swept_input
from attnprobe.models import build_model

SHAPE = (32, 32, 64)
# Direction test ROI. With uniform attention the maps depend on geometry only, so the outcome
# is fixed by the sizes. 96 on z: stage-0 grid 48 -> one window-padding token per z-row. On
# ROIs such as 64x64x64 the "all" value dips at p=16: the last z-window loses its last real
# token, is dropped, and takes its window padding with it (the "input" value still rises).
DIR_SHAPE = (32, 32, 96)


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor | None = None


def make_case(*, real_z: tuple[int, int] = (0, 64), label_z: tuple[int, int] | None = None,
              shape: tuple[int, int, int] = SHAPE) -> Case:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, *shape, dtype=torch.bool)
    mask[..., real_z[0]:real_z[1]] = True
    image = (torch.rand(1, *shape, generator=g) + 0.1) * mask  # real voxels are never 0 here
    label = None
    if label_z is not None:
        label = torch.zeros(1, *shape, dtype=torch.uint8)
        label[:, 10:20, 10:20, label_z[0]:label_z[1]] = 1
    return Case("c", image, mask, label)


# ---- input construction ----------------------------------------------------------------------


def test_fixed_roi_end_crops_around_the_centre():
    case = make_case()
    item = swept_input(case, 16, SweepSpec(paddings=(16,)))
    assert item.image.shape == item.mask.shape == (1, *SHAPE)
    assert item.mask[..., :48].all() and not item.mask[..., 48:].any()
    assert int(item.mask.sum()) == 32 * 32 * 48
    assert item.pad_fraction == 1 - 48 / 64  # exact
    # no label: centred on the real voxels (z 0..64, centre 32) -> z 8..56
    assert torch.equal(item.image[..., :48], case.image[..., 8:56])
    assert not item.image[..., 48:].any()


def test_fixed_roi_symmetric_splits_the_padding_extra_voxel_after():
    item = swept_input(make_case(), 15, SweepSpec(paddings=(15,), pad_mode="symmetric"))
    z_real = torch.nonzero(item.mask[0, 0, 0]).flatten()
    assert (int(z_real[0]), int(z_real[-1]) + 1) == (7, 7 + 49)  # 7 before, 8 after
    assert item.pad_fraction == 15 / 64


def test_fixed_roi_centres_on_the_label():
    case = make_case(label_z=(20, 30))  # label centre z = 25 -> window 1..49
    item = swept_input(case, 16, SweepSpec(paddings=(16,)))
    assert torch.equal(item.image[..., :48], case.image[..., 1:49])
    near_end = make_case(label_z=(58, 62))  # centre 60: the window is pushed back inside, 16..64
    item = swept_input(near_end, 16, SweepSpec(paddings=(16,)))
    assert torch.equal(item.image[..., :48], near_end.image[..., 16:64])


def test_existing_padding_is_moved_out_of_the_middle():
    case = make_case(real_z=(10, 50))  # prepared with symmetric padding, real extent 40
    item = swept_input(case, 16, SweepSpec(paddings=(16,)))  # asks for 48: only 40 are real
    assert item.mask[..., :40].all() and not item.mask[..., 40:].any()
    assert torch.equal(item.image[..., :40], case.image[..., 10:50])
    assert item.pad_fraction == 24 / 64


@pytest.mark.parametrize(("axis", "dim"), [("x", 1), ("y", 2)])
def test_other_axes(axis, dim):
    item = swept_input(make_case(), 8, SweepSpec(paddings=(8,), axis=axis))
    assert item.mask.shape == (1, *SHAPE)
    assert not item.mask.narrow(dim, 24, 8).any() and item.mask.narrow(dim, 0, 24).all()
    assert item.pad_fraction == 8 / 32


def test_grow_keeps_the_content_and_grows_the_input():
    case = make_case(real_z=(0, 60))
    end = swept_input(case, 32, SweepSpec(paddings=(32,), mode="grow"))
    assert end.image.shape == (1, 32, 32, 96)
    assert torch.equal(end.image[..., :64], case.image) and torch.equal(end.mask[..., :64], case.mask)
    assert int(end.mask.sum()) == 32 * 32 * 60 and end.pad_fraction == 1 - 60 / 96
    sym = swept_input(case, 32, SweepSpec(paddings=(32,), mode="grow", pad_mode="symmetric"))
    assert torch.equal(sym.image[..., 16:80], case.image) and not sym.mask[..., :16].any()
    grow_x = swept_input(case, 32, SweepSpec(paddings=(32,), mode="grow", axis="x"))
    assert grow_x.image.shape == (1, 64, 32, 64)


def test_sizes_that_cannot_work_are_clear_errors():
    with pytest.raises(ShapeError, match="not divisible by 32") as err:
        SweepSpec(paddings=(0, 16), mode="grow").check_shape(SHAPE)
    assert "fix: use amounts such as 0,32,64" in str(err.value)
    with pytest.raises(ShapeError, match="leaves no content"):
        swept_input(make_case(), 64, SweepSpec(paddings=(64,)))
    for bad in ((), (-16,), (0, 0), (1.5,)):
        with pytest.raises(ConfigError):
            SweepSpec(paddings=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="axis"):
        SweepSpec(axis="t")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="sweep mode"):
        SweepSpec(mode="shrink")  # type: ignore[arg-type]


# ---- direction on uniform attention ------------------------------------------------------------


def window_counts(n_tokens: int, window: int, padded: int) -> np.ndarray:
    """Tokens below ``n_tokens`` in each window of one axis (windows from 0, size ``window``)."""
    starts = np.arange(0, padded, window)
    return np.clip(n_tokens - starts, 0, window)


def uniform_block0_adi(shape: tuple[int, int, int], real_z: int) -> dict[str, float]:
    """Closed-form ADI of a non-shifted stage-0 block whose attention is uniform over its window.

    A real query spreads 1/N on each of the N keys of its window, so H = log N and H^rp =
    (n_P / N) log N: ADI = sum_w r_w n_P(w) / (N sum_w r_w), r_w the real tokens of window w.
    Real voxels fill x, y and z < real_z; grid = voxels / 2 (patch 2); window 7.
    """
    grid = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    real = (grid[0], grid[1], real_z // 2)
    padded = tuple(-(-g // 7) * 7 for g in grid)
    r = np.einsum("i,j,k->ijk", *(window_counts(n, 7, p) for n, p in zip(real, padded))).ravel()
    g = np.einsum("i,j,k->ijk", *(window_counts(n, 7, p) for n, p in zip(grid, padded))).ravel()
    n = 7 ** 3
    return {"input": float((r * (g - r)).sum() / (n * r.sum())),
            "window": float((r * (n - g)).sum() / (n * r.sum())),
            "all": float((r * (n - r)).sum() / (n * r.sum()))}


@pytest.fixture(scope="module")
def uniform_model():
    """Tiny Swin UNETR whose every logit is 0: q = k = 0 and no relative position bias."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".attn.qkv." in name or name.endswith("relative_position_bias_table"):
                param.zero_()
    return model


def test_zeroed_logits_give_uniform_attention(uniform_model):
    case = make_case()  # uniformity is a property of the weights: the small ROI is enough
    with torch.no_grad(), Probe(uniform_model, ["stage0.*.attn", "stage3.block0.attn"]) as probe:
        probe.run(case.image[None], mask=case.mask[None])
    for name in ("stage0.block0.attn", "stage3.block0.attn"):
        probs = probe.cache[name]
        n = probs.shape[-1]
        torch.testing.assert_close(probs, torch.full_like(probs, 1.0 / n), rtol=0, atol=1e-7)
    # The shifted block: uniform over the keys its shift mask allows (-100 leaves ~e^-100).
    shifted = probe.cache["stage0.block1.attn"]
    allowed = shifted > 1e-20
    row_max = shifted.amax(-1)
    row_min_allowed = torch.where(allowed, shifted, torch.ones_like(shifted)).amin(-1)
    torch.testing.assert_close(row_max, row_min_allowed, rtol=1e-6, atol=0)
    torch.testing.assert_close(row_max, 1.0 / allowed.sum(-1), rtol=1e-5, atol=0)


def test_stage0_adi_rises_with_padding_on_uniform_attention(uniform_model):
    case = make_case(real_z=(0, 96), shape=DIR_SHAPE)
    frame = padding_sweep(uniform_model, [case], SweepSpec(paddings=(0, 16, 32), axis="z"))
    adi = frame[frame["metric"] == "adi"]
    # Golden values: block 0 matches the closed form for uniform attention at every padding.
    for p in (0, 16, 32):
        want = uniform_block0_adi(DIR_SHAPE, DIR_SHAPE[2] - p)
        got = adi[(adi["padding"] == p) & (adi["stage"] == 0) & (adi["block"] == 0)].set_index("kind")["value"]
        for kind, value in want.items():
            assert got[kind] == pytest.approx(value, rel=1e-5, abs=1e-9), (p, kind)  # float32 key sums
    # The stage value (mean over both blocks, the shifted one included) rises strictly.
    tables = sweep_tables(frame)
    stage0 = tables.stages[(tables.stages["metric"] == "adi") & (tables.stages["stage"] == 0)]
    for kind in ("input", "all"):
        series = stage0[stage0["kind"] == kind].sort_values("padding")["value"].to_numpy()
        assert np.all(np.diff(series) > 1e-3), (kind, series)
    assert stage0[(stage0["kind"] == "input") & (stage0["padding"] == 0)]["value"].item() == 0.0
    fractions = frame.groupby("padding")["pad_fraction"].first().to_dict()
    assert fractions == {0: 0.0, 16: 16 / 96, 32: 32 / 96}
    summary = tables.summary
    assert {"mean", "std", "n"} <= set(summary.columns)
    # n counts the cases with a value: A_pr/A_pp of a cell without padding queries have none
    no_value = summary["mean"].isna()
    assert (summary.loc[no_value, "n"] == 0).all() and set(summary.loc[no_value, "metric"]) == {"a_pr", "a_pp"}
    assert (summary.loc[~no_value, "n"] == 1).all()


def test_sweep_checks_sizes_before_running(uniform_model):
    with pytest.raises(ShapeError, match="not divisible by 32"):
        padding_sweep(uniform_model, [make_case()], SweepSpec(paddings=(0, 16), mode="grow"))
    with pytest.raises(ConfigError, match="pad_queries"):
        padding_sweep(uniform_model, [make_case()], SweepSpec(paddings=(0,)), pad_queries="real")


def uniform_block0_a_pp(shape: tuple[int, int, int], real_z: int, pad_queries: str) -> float:
    """Closed-form A_pp (P = all padding) of a non-shifted stage-0 block with uniform attention.

    A padding query of window w spreads 1/N on each key, so it puts (N - r_w)/N on padding keys;
    A_pp is the mean over the padding queries: of every window, or of windows with r_w > 0."""
    grid = (shape[0] // 2, shape[1] // 2, shape[2] // 2)
    real = (grid[0], grid[1], real_z // 2)
    padded = tuple(-(-g // 7) * 7 for g in grid)
    r = np.einsum("i,j,k->ijk", *(window_counts(n, 7, p) for n, p in zip(real, padded))).ravel()
    n = 7 ** 3
    if pad_queries == "real-windows":
        r = r[r > 0]
    return float(((n - r) * (n - r) / n).sum() / (n - r).sum())


def test_sweep_pad_queries_rules_match_the_closed_form(uniform_model):
    # 64 z voxels with content on 16: stage-0 z windows 0..6 hold real tokens, the rest (21 of
    # 35 token rows) none, so the two rules differ.
    case = make_case(real_z=(0, 64), shape=(32, 32, 64))
    spec = SweepSpec(paddings=(48,), axis="z")
    for rule in ("all-windows", "real-windows"):
        frame = padding_sweep(uniform_model, [case], spec, pad_queries=rule)
        got = frame.query("stage == 0 and block == 0 and kind == 'all' and metric == 'a_pp'")["value"].item()
        assert got == pytest.approx(uniform_block0_a_pp((32, 32, 64), 16, rule), rel=1e-5), rule
    assert uniform_block0_a_pp((32, 32, 64), 16, "all-windows") > uniform_block0_a_pp((32, 32, 64), 16,
                                                                                       "real-windows") + 0.05


@pytest.mark.parametrize("mode", ["fixed-roi", "grow"])
@pytest.mark.parametrize("pad_mode", ["end", "symmetric"])
@pytest.mark.parametrize("axis", ["x", "z"])
def test_the_label_is_swept_exactly_like_the_image(mode, pad_mode, axis):
    case = make_case(real_z=(4, 60), label_z=(20, 30))
    # a label that is a function of the image voxel by voxel: any misplacement breaks the identity
    case.label = ((case.image > 0.6) & case.mask).to(torch.uint8)
    case.label[:, 10:20, 10:20, 20:30] = 1  # and a lesion for the crop to centre on
    case.image[:, 10:20, 10:20, 20:30] = 0.95
    for p in ((0, 8, 20) if mode == "fixed-roi" else (0, 32)):
        item = swept_input(case, p, SweepSpec(paddings=(p,), axis=axis, pad_mode=pad_mode, mode=mode))
        assert item.label is not None and item.label.dtype == torch.uint8
        assert torch.equal(item.label.bool(), (item.image > 0.6) & item.mask)
    assert swept_input(make_case(), 16, SweepSpec(paddings=(16,))).label is None
