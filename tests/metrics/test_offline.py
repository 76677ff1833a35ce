"""Offline ADI from a capture store: equals the online reducer, reads chunk by chunk."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from attnprobe.capture import Probe
from attnprobe.capture.sinks import SampleCollector
from attnprobe.errors import ConfigError, StoreError
from attnprobe.metrics.offline import OfflineStats, store_flow
from attnprobe.metrics.reducers import FlowReducer, FlowTag
from attnprobe.models import build_model, get_adapter
from attnprobe.store import StoreWriter, capture_to_store, open_store

SHAPE = (32, 32, 64)
ID_COLUMNS = ["case", "padding", "pad_fraction", "stage", "block", "kind", "metric", "n_real_queries",
              "n_pad_queries"]


@dataclass
class Case:
    case_id: str
    image: torch.Tensor
    mask: torch.Tensor


def make_cases(shape=SHAPE) -> list[Case]:
    g = torch.Generator().manual_seed(7)
    cases = []
    for i, extent in enumerate((40, 20)):
        mask = torch.zeros(1, *shape, dtype=torch.bool)
        mask[..., :extent] = True
        cases.append(Case(f"c{i}", torch.randn(1, *shape, generator=g) * mask, mask))
    return cases


def fraction(case: Case) -> float:
    return 1.0 - float(case.mask.sum()) / case.mask.numel()


class StoreSink:
    """Hands the collector the store sample index it expects as the tag (the reducers get a FlowTag)."""

    def __init__(self, collector: SampleCollector) -> None:
        self.collector, self.index = collector, 0

    def on_tap(self, tap, value, ctx) -> None:
        self.collector.on_tap(tap, value, ctx)

    def on_forward_end(self, ctx) -> None:
        self.collector.on_forward_end(replace(ctx, tag=[self.index]))


# Both kinds of block (plain and shifted) and every stage, without the bulk of stage 0.
TAPS = ["stage0.block1.attn", "stage1.block0.attn", "stage2.*.attn", "stage3.*.attn"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Online frames (both head modes) and a float32 store, all from the same forwards."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny").eval()
    return online_and_store(model, make_cases(), SHAPE, tmp_path_factory.mktemp("offline") / "s.zarr")


def online_and_store(model, cases, shape, path):
    mean_red, head_red = FlowReducer(), FlowReducer(heads="per-head")
    kept_red = FlowReducer(pad_queries="real-windows")
    with torch.no_grad(), Probe(model, TAPS, sinks=[mean_red, head_red, kept_red], keep=False) as probe:
        geometry = {g.name: g for g in probe.adapter.geometry(model, shape)}
        blocks = {t.block.name: (geometry[t.block.name], {"attn"}) for t in probe.taps}
        # The store writer of attnprobe capture, fed by the very forwards the reducers see.
        writer = StoreWriter(path, cases=[c.case_id for c in cases], blocks=blocks, dtype="float32",
                             attrs={"pad_fraction": [fraction(c) for c in cases]})
        store_sink = StoreSink(SampleCollector(writer, dtype="float32"))
        probe.sinks.append(store_sink)
        try:
            for index, case in enumerate(cases):
                store_sink.index = index
                probe.run(case.image[None], mask=case.mask[None],
                          tag=FlowTag(cases=(case.case_id,), padding=0, pad_fraction=fraction(case)))
        finally:
            writer.close()
    return {"model": model, "cases": cases, "mean": mean_red.frame(), "head": head_red.frame(),
            "kept": kept_red.frame(), "store": path}


def assert_same_rows(offline: pd.DataFrame, online: pd.DataFrame, *, atol: float) -> None:
    ids = [c for c in ID_COLUMNS + ["head"] if c in online.columns]
    pd.testing.assert_frame_equal(offline[ids].reset_index(drop=True), online[ids].reset_index(drop=True))
    np.testing.assert_allclose(offline["value"].to_numpy(), online["value"].to_numpy(), rtol=0, atol=atol)


@pytest.mark.parametrize(("arch", "compat"), [("smit", "original"), ("swin_unetr", "original")])
def test_offline_equals_online_in_the_original_mode(arch, compat, tmp_path):
    """The window geometry of the original code (SMIT: no shrinking, shift kept on small grids;
    Swin UNETR: MONAI < 1.5's merging) reaches both the online reducer and the store's kinds."""
    torch.manual_seed(0)
    model = build_model(arch, preset="tiny", compat=compat).eval()
    shape = (32, 64, 32) if arch == "smit" else SHAPE  # the original SMIT cannot run 32x32x64
    run = online_and_store(model, make_cases(shape), shape, tmp_path / "s.zarr")
    assert_same_rows(store_flow(run["store"]), run["mean"], atol=1e-5)
    if arch == "smit":  # stage 3 (grid 1x2x1): window 4 and shift 2 kept, so window padding is seen
        geom = {g.name: g for g in get_adapter(arch).geometry(model, shape)}["stage3.block1"]
        assert geom.window == (4, 4, 4) and geom.shift == (2, 2, 2)
        # unshifted, real queries attend to the window padding; shifted, the -100 mask hides it
        window_adi = run["mean"].query("stage == 3 and kind == 'window' and metric == 'adi'")
        assert (window_adi.query("block == 0")["value"] > 0.01).all()
        assert (window_adi.query("block == 1")["value"] < 1e-6).all()


@pytest.mark.parametrize("heads", ["mean", "per-head"])
def test_offline_equals_online_to_1e5(run, heads):
    stats = OfflineStats()
    offline = store_flow(run["store"], heads=heads, stats=stats)
    assert_same_rows(offline, run["mean" if heads == "mean" else "head"], atol=1e-5)
    assert stats.attn_bytes > 0 and stats.skipped_samples == ()


def test_offline_equals_online_for_both_padding_query_rules(run):
    kept = store_flow(run["store"], pad_queries="real-windows")
    assert_same_rows(kept, run["kept"], atol=1e-5)  # NaN rows (no padding query) must match too
    # the inputs have windows without a real token (c1: content on 20 of 64 z voxels), so the
    # rules differ on A_pr/A_pp and only there
    every = run["mean"]
    diff = (every["value"] - kept["value"]).abs()
    pad_rows = every["metric"].isin(["a_pr", "a_pp"])
    assert diff[pad_rows].max() > 0.01
    # (online and offline batch the windows differently: float32 GEMM rounding, ~1e-9, only)
    assert diff[~pad_rows].max() < 1e-8
    with pytest.raises(ConfigError, match="pad_queries"):
        store_flow(run["store"], pad_queries="every-window")


@pytest.mark.filterwarnings("ignore:The specified chunks separate the stored chunks")
def test_reads_chunk_by_chunk_never_a_whole_block(run):
    # Re-chunk the view to two windows a chunk: the result must not depend on the chunking,
    # and no read may hold more than two windows of one sample.
    tree = open_store(run["store"], chunks={"window": 2})
    stats = OfflineStats()
    blocks = ["stage1.block0", "stage2.block1"]  # 12 and 2 windows
    offline = store_flow(tree, stats=stats, blocks=blocks)
    online = run["mean"]
    assert_same_rows(offline, online[(online["stage"] == 1) & (online["block"] == 0)
                                     | (online["stage"] == 2) & (online["block"] == 1)], atol=1e-5)
    nodes = [tree[b].dataset["attn"] for b in blocks]
    window_bytes = max(int(np.prod(a.shape[2:])) * 4 for a in nodes)
    sample_block_bytes = max(a.nbytes // a.sizes["sample"] for a in nodes)
    assert stats.largest_chunk_bytes == 2 * window_bytes < sample_block_bytes
    assert stats.chunks == 2 * sum(math.ceil(a.sizes["window"] / 2) for a in nodes)


def test_lazy_numpy_view_reads_by_store_chunks(run):
    # A view opened without dask (chunks=None) is read slice by slice along the stored chunks.
    tree = open_store(run["store"])
    stats = OfflineStats()
    offline = store_flow(tree, stats=stats, blocks=["stage1.block0"])
    assert_same_rows(offline, run["mean"].query("stage == 1 and block == 0"), atol=1e-5)
    attn = tree["stage1.block0"].dataset["attn"]
    stored_windows = attn.encoding["chunks"][1]
    assert stats.largest_chunk_bytes == stored_windows * int(np.prod(attn.shape[2:])) * 4
    assert stats.chunks == 2 * math.ceil(attn.sizes["window"] / stored_windows)


def test_float16_store_differs_by_rounding_only(run, tmp_path):
    case = run["cases"][:1]
    path = capture_to_store(run["model"], case, tmp_path / "h.zarr", taps=["stage1.block0.attn"],
                            dtype="float16", attrs={"pad_fraction": [fraction(case[0])]})
    offline = store_flow(path)
    online = run["mean"].query("case == 'c0' and stage == 1 and block == 0")
    diff = np.abs(offline["value"].to_numpy() - online["value"].to_numpy())
    assert diff.max() < 5e-3  # storage rounding of the maps (fp16: ~1e-3 relative per entry)
    assert diff.max() > 0


def test_unfinished_samples_are_left_out(run):
    done = zarr.open_group(str(run["store"]), mode="r+")["done"]
    done[1] = False  # as if the capture had been killed before the second sample finished
    try:
        stats = OfflineStats()
        offline = store_flow(run["store"], stats=stats, read_ahead=False)
    finally:
        done[1] = True
    assert set(offline["case"]) == {"c0"} and stats.skipped_samples == ("c1",)
    assert_same_rows(offline, run["mean"][run["mean"]["case"] == "c0"], atol=1e-5)


def test_labels_and_block_selection(run):
    offline = store_flow(run["store"], blocks=["stage1.block0"], padding=16, pad_fraction=[0.5, 0.75])
    assert set(zip(offline["stage"], offline["block"])) == {(1, 0)}
    assert set(offline["padding"]) == {16}
    assert dict(offline.groupby("case")["pad_fraction"].first()) == {"c0": 0.5, "c1": 0.75}


def test_store_errors(run, tmp_path):
    with pytest.raises(StoreError, match="no attention maps for some requested blocks"):
        store_flow(run["store"], blocks=["stage0.block0"])  # not captured
    with pytest.raises(StoreError, match="no store"):
        store_flow(tmp_path / "missing.zarr")
    geom = {g.name: g for g in get_adapter("swin_unetr").geometry(run["model"], SHAPE)}["stage3.block1"]
    writer = StoreWriter(tmp_path / "out.zarr", cases=["c0"], blocks={"stage3.block1": (geom, {"out"})}, attrs={})
    writer.submit(0, {"stage3.block1": {"out": np.zeros((*geom.grid, geom.channels), np.float16)}})
    writer.close()
    with pytest.raises(StoreError, match="holds no attention maps"):
        store_flow(tmp_path / "out.zarr")
    empty = StoreWriter(tmp_path / "empty.zarr", cases=["c0"], blocks={"stage3.block1": (geom, {"attn"})}, attrs={})
    empty.close()
    with pytest.raises(StoreError, match="no sample of the store is complete"):
        store_flow(tmp_path / "empty.zarr")
