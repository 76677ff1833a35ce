"""Online flow reducer: equals attention_flow on the probe's cached maps, keeps nothing big."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from attnprobe.capture import Probe
from attnprobe.capture.probe import ForwardContext
from attnprobe.errors import ConfigError, ShapeError
from attnprobe.metrics.aggregate import TIDY_COLUMNS
from attnprobe.metrics.flow import METRICS, PAD_QUERY_MODES, attention_flow
from attnprobe.metrics.reducers import FlowReducer, FlowTag, reduce_block
from attnprobe.models import build_model
from attnprobe.tokens import PADDING_KINDS, REAL

SHAPE = (32, 32, 64)  # smallest Swin UNETR input whose bottleneck has >1 voxel for instance norm


@pytest.fixture(scope="module")
def hooked():
    """One batch of two samples with different padding, reduced online in both head modes."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny").eval()
    g = torch.Generator().manual_seed(3)
    mask = torch.zeros(2, 1, *SHAPE, dtype=torch.bool)
    mask[0, ..., :40] = True  # input padding at the end of z
    mask[1, :, 5:25] = True  # on x, both sides
    x = torch.randn(2, 1, *SHAPE, generator=g) * mask
    mean_red = FlowReducer()
    # A small chunk budget sends the big blocks through the accumulator in several pieces.
    head_red = FlowReducer(heads="per-head", max_chunk_bytes=8 << 20)
    tag = FlowTag(cases=("a", "b"), padding=7, pad_fraction=(0.25, 0.5))
    with torch.no_grad(), Probe(model, ["*.attn"], sinks=[mean_red, head_red], keep=True) as probe:
        probe.run(x, mask=mask, tag=tag)
    return {"probe": probe, "mean": mean_red, "head": head_red}


def test_reducer_equals_attention_flow_on_cached_maps(hooked):
    probe = hooked["probe"]
    names = sorted({k.rsplit(".", 1)[0] for k in probe.cache})
    assert len(names) == 8
    # per-head: a plain block, a shifted one and the last stage keep the check fast
    checked = {"mean": names, "per-head": ["stage0.block1", "stage1.block0", "stage3.block1"]}
    for heads, reducer in (("mean", hooked["mean"]), ("per-head", hooked["head"])):
        (record,) = reducer.records
        assert set(record.blocks) == set(names)
        for name in checked[heads]:
            bf = record.blocks[name]
            assert (f"stage{bf.stage}.block{bf.block}") == name
            probs = probe.cache[f"{name}.attn"]
            for kind in PADDING_KINDS:
                want = attention_flow(probs, probe.context.kinds[name], padding=kind, heads=heads)
                got = bf.results[kind]
                assert got.padding == kind and got.heads == heads
                for field, value in want.as_dict().items():
                    # float64 sums; the chunked per-head path only changes summation order.
                    np.testing.assert_allclose(getattr(got, field).numpy(), value.numpy(), rtol=1e-10,
                                               atol=1e-12, err_msg=f"{heads} {name} {kind} {field}")
                assert got.adi.device.type == "cpu"
                if heads == "per-head":
                    assert got.adi.shape == (2, probs.shape[2])


def test_padding_kinds_add_up(hooked):
    # input and window padding partition "all": their a_rp, h_rp and adi add up to it.
    for bf in hooked["mean"].records[0].blocks.values():
        r = bf.results
        for metric in ("a_rp", "h_rp", "adi"):
            total = getattr(r["input"], metric) + getattr(r["window"], metric)
            np.testing.assert_allclose(total.numpy(), getattr(r["all"], metric).numpy(), rtol=1e-9, atol=1e-12)


def test_frame_is_tidy_and_labelled(hooked):
    frame = hooked["mean"].frame()
    assert list(frame.columns) == [*TIDY_COLUMNS, "n_real_queries", "n_pad_queries"]
    assert len(frame) == 2 * 8 * len(PADDING_KINDS) * len(METRICS)
    assert set(frame["case"]) == {"a", "b"} and set(frame["padding"]) == {7}
    assert dict(frame.groupby("case")["pad_fraction"].first()) == {"a": 0.25, "b": 0.5}
    assert list(frame["kind"].drop_duplicates()) == list(PADDING_KINDS)
    assert frame[["stage", "block"]].drop_duplicates().values.tolist() == [[s, b] for s in range(4) for b in (0, 1)]
    # NaN only where a block has no padding query (a_pr/a_pp, e.g. no window padding at stage 3)
    missing = frame["value"].isna()
    assert (frame.loc[missing, "metric"].isin(["a_pr", "a_pp"]) & (frame.loc[missing, "n_pad_queries"] == 0)).all()
    assert frame.loc[frame["n_pad_queries"] > 0, "value"].notna().all()
    adi = frame[frame["metric"] == "adi"]["value"]
    assert ((adi >= 0) & (adi <= 1)).all() and adi.max() > 0

    per_head = hooked["head"].frame()
    assert "head" in per_head.columns
    # samples x (two blocks a stage x heads 3, 6, 12, 24) x kinds x metrics
    assert len(per_head) == 2 * 2 * (3 + 6 + 12 + 24) * len(PADDING_KINDS) * len(METRICS)


def test_smit_too_and_nothing_changes_or_stays():
    # Architecture-agnostic: the same reducer on SMIT (window 4, its own adapter).
    torch.manual_seed(0)
    model = build_model("smit", preset="tiny").eval()
    reducer = FlowReducer()
    mask = torch.ones(1, 1, *SHAPE, dtype=torch.bool)
    mask[:, :, :, 20:] = False  # input padding on y
    x = torch.randn(1, 1, *SHAPE) * mask
    with torch.no_grad():
        plain = model(x)
        with Probe(model, ["*"], sinks=[reducer], keep=True) as probe:
            hooked = probe.run(x, mask=mask)
    assert torch.equal(plain, hooked)  # the reducer only reads
    (record,) = reducer.records
    assert record.tag.cases == ("sample0",) and math.isnan(record.tag.pad_fraction)
    assert len(record.blocks) == len([k for k in probe.cache if k.endswith(".attn")])
    for name, bf in record.blocks.items():
        for kind, got in bf.results.items():
            want = attention_flow(probe.cache[f"{name}.attn"], probe.context.kinds[name], padding=kind)
            for field, value in want.as_dict().items():
                np.testing.assert_allclose(getattr(got, field).numpy(), value.numpy(), rtol=1e-10, atol=1e-12)
    assert any(float(bf.results["input"].adi) > 0 for bf in record.blocks.values())
    held = [t for bf in record.blocks.values() for r in bf.results.values() for t in r.as_dict().values()]
    assert max(t.numel() for t in held) == 1  # one number per sample: no map survives the hook
    reducer.clear()
    assert reducer.records == []


def _brute_force_pad_rows(probs: np.ndarray, kinds: np.ndarray, pad_queries: str) -> tuple[float, float, int]:
    """A_pr, A_pp (P = both padding kinds) and the padding-query count of one sample, window by
    window: head-average, then each padding query's attention to real and to padding keys."""
    to_real = to_pad = 0.0
    count = 0
    for attn, kind in zip(probs, kinds, strict=True):  # (head, N, N), (N,)
        real = kind == REAL
        if pad_queries == "real-windows" and not real.any():
            continue
        mean = attn.astype(np.float64).mean(axis=0)
        for i in np.flatnonzero(~real):
            to_real += mean[i, real].sum()
            to_pad += mean[i, ~real].sum()
            count += 1
    return (to_real / count, to_pad / count, count) if count else (math.nan, math.nan, 0)


def test_pad_queries_rules_on_a_64_cube_with_all_padding_windows():
    """Swin UNETR tiny on 64³ with content on 8 of 64 z voxels: most windows hold no real token.

    Both rules against a window-by-window loop; they differ on A_pr/A_pp only."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny").eval()
    shape = (64, 64, 64)
    mask = torch.zeros(1, 1, *shape, dtype=torch.bool)
    mask[..., :8] = True
    x = torch.randn(1, 1, *shape, generator=torch.Generator().manual_seed(5)) * mask
    reducers = {rule: FlowReducer(pad_queries=rule, padding_kinds=("all",)) for rule in PAD_QUERY_MODES}
    with torch.no_grad(), Probe(model, ["*.attn"], sinks=list(reducers.values()), keep=True) as probe:
        probe.run(x, mask=mask)
    records = {rule: r.records[0].blocks for rule, r in reducers.items()}
    largest = 0.0
    for name in records["all-windows"]:
        probs = probe.cache[f"{name}.attn"][0].numpy()
        kinds = probe.context.kinds[name].expand(1, *probe.context.kinds[name].shape[-2:])[0].numpy()
        got = {rule: records[rule][name].results["all"] for rule in PAD_QUERY_MODES}
        for rule in PAD_QUERY_MODES:
            a_pr, a_pp, n_pad = _brute_force_pad_rows(probs, kinds, rule)
            np.testing.assert_allclose([float(got[rule].a_pr), float(got[rule].a_pp)], [a_pr, a_pp],
                                       rtol=1e-6, atol=1e-9, err_msg=f"{name} {rule}")
            assert int(got[rule].n_pad_queries) == n_pad
        for m in ("adi", "sfr", "a_rr", "a_rp", "h", "h_rp", "n_real_queries"):
            assert torch.equal(getattr(got["all-windows"], m), getattr(got["real-windows"], m)), (name, m)
        largest = max(largest, abs(float(got["all-windows"].a_pp) - float(got["real-windows"].a_pp)))
    # Padding queries of windows without a real token attend only to padding (A_pp = 1 there),
    # so counting them moves A_pp by far more than rounding (about 0.40 at most here).
    print(f"largest |A_pp(all-windows) - A_pp(real-windows)| = {largest:.4f}")
    assert largest > 0.3


def test_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 9, 3, 27, 27, generator=g).softmax(-1)
    kinds = torch.randint(0, 3, (2, 9, 27), generator=g, dtype=torch.uint8)
    whole = reduce_block(probs, kinds, max_chunk_bytes=None)
    pieces = reduce_block(probs, kinds, max_chunk_bytes=27 * 27 * 4 * 2)  # one window per chunk
    for kind in PADDING_KINDS:
        for field, value in whole[kind].as_dict().items():
            # a batched float32 GEMM may order its sums differently for another batch of
            # windows: float32 rounding (~2e-9 relative here), see test_flow
            np.testing.assert_allclose(getattr(pieces[kind], field).numpy(), value.numpy(), rtol=1e-7)


def _ctx(batch: int, tag) -> ForwardContext:
    return ForwardContext((32, 32, 64), batch, {}, {}, {}, tag)


def test_bad_tags_and_options_are_clear_errors():
    reducer = FlowReducer()
    with pytest.raises(ConfigError, match="FlowTag"):
        reducer.on_forward_end(_ctx(2, ("a", "b")))
    with pytest.raises(ShapeError, match="2 case ids"):
        reducer.on_forward_end(_ctx(2, FlowTag(cases=("a",))))
    with pytest.raises(ConfigError, match="heads"):
        FlowReducer(heads="max")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="padding kinds"):
        FlowReducer(padding_kinds=("inputs",))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_chunk_bytes"):
        FlowReducer(max_chunk_bytes=0)
    with pytest.raises(ConfigError, match=re.escape("unknown pad_queries option; expected 'all-windows' | 'real-windows'")):
        FlowReducer(pad_queries="all")  # type: ignore[arg-type]
