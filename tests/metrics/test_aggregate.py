"""Tidy frames and block -> stage -> model -> sweep aggregation on hand-built numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from attnprobe.errors import ConfigError, DataError, ShapeError
from attnprobe.metrics.aggregate import (
    TIDY_COLUMNS,
    model_means,
    stage_means,
    sweep_summary,
    tidy_flow,
    to_xarray,
)
from attnprobe.metrics.flow import METRICS, FlowResult, attention_flow


def hand_result(n_samples=2, heads=None, padding="input") -> FlowResult:
    """A FlowResult whose metric m of sample s (head h) is 10*s + index(m) (+ h/10)."""
    shape = (n_samples,) if heads is None else (n_samples, heads)
    base = 10.0 * torch.arange(n_samples, dtype=torch.float64).reshape(-1, *([1] if heads else []))
    if heads:
        base = base + torch.arange(heads, dtype=torch.float64) / 10
    vals = {m: (base + i).expand(shape).clone() for i, m in enumerate(METRICS)}
    return FlowResult(**vals, n_real_queries=torch.tensor([5, 7][:n_samples]),
                      n_pad_queries=torch.tensor([1, 0][:n_samples]), padding=padding,
                      heads="mean" if heads is None else "per-head")


def row(case, stage, block, metric, value, *, padding=0, kind="all", nr=10, npq=2, pf=None):
    return {"case": case, "padding": padding, "pad_fraction": padding / 96 if pf is None else pf,
            "stage": stage, "block": block, "kind": kind, "metric": metric, "value": value,
            "n_real_queries": nr, "n_pad_queries": npq}


def hand_frame() -> pd.DataFrame:
    """Case a: stage 0 has two blocks, stage 1 three (SMIT-like uneven depths)."""
    return pd.DataFrame([
        row("a", 0, 0, "adi", 0.2, nr=100, npq=0),
        row("a", 0, 1, "adi", 0.4, nr=100, npq=0),
        row("a", 1, 0, "adi", 0.1, nr=10, npq=4),
        row("a", 1, 1, "adi", 0.2, nr=10, npq=4),
        row("a", 1, 2, "adi", 1.2, nr=10, npq=4),
        row("a", 0, 0, "a_pr", math.nan, nr=100, npq=0),  # no padding query: no value
        row("a", 0, 1, "a_pr", math.nan, nr=100, npq=0),
        row("a", 1, 0, "a_pr", 0.6, nr=10, npq=4),
        row("a", 1, 1, "a_pr", 0.6, nr=10, npq=4),
        row("a", 1, 2, "a_pr", 0.9, nr=10, npq=4),
    ])


# ---------------------------------------------------------------- tidy_flow


def test_tidy_flow_layout_and_values():
    df = tidy_flow(hand_result(), cases=["c0", "c1"], padding=16, pad_fraction=[0.1, 0.2], stage=2, block=1)
    assert list(df.columns) == [*TIDY_COLUMNS, "n_real_queries", "n_pad_queries"]
    assert len(df) == 2 * len(METRICS)
    one = df.set_index(["case", "metric"])
    for i, m in enumerate(METRICS):
        assert one.loc[("c0", m), "value"] == i and one.loc[("c1", m), "value"] == 10 + i
    assert set(df["kind"]) == {"input"} and set(df["stage"]) == {2} and set(df["block"]) == {1}
    assert one.loc[("c1", "adi"), "pad_fraction"] == 0.2 and one.loc[("c1", "adi"), "n_real_queries"] == 7


def test_tidy_flow_per_head_and_single_sample():
    df = tidy_flow(hand_result(heads=3), cases=["c0", "c1"], padding=0, pad_fraction=0.0, stage=0, block=0)
    assert list(df.columns)[:7] == ["case", "padding", "pad_fraction", "stage", "block", "head", "kind"]
    assert len(df) == 2 * 3 * len(METRICS)
    v = df.set_index(["case", "head", "metric"])["value"]
    assert v[("c1", 2, "h")] == pytest.approx(10 + METRICS.index("h") + 0.2)
    # 0-d result from a single-sample computation
    probs = torch.softmax(torch.randn(4, 2, 5, 5), dim=-1)
    kinds = torch.tensor([[0, 0, 1, 2, 2]] * 4, dtype=torch.uint8)
    single = tidy_flow(attention_flow(probs, kinds), cases="only", padding=0, pad_fraction=0.0, stage=0, block=0)
    assert len(single) == len(METRICS) and set(single["case"]) == {"only"}


def test_tidy_flow_errors():
    with pytest.raises(ShapeError):
        tidy_flow(hand_result(), cases=["one"], padding=0, pad_fraction=0.0, stage=0, block=0)
    with pytest.raises(ShapeError):
        tidy_flow(hand_result(), cases=["a", "b"], padding=0, pad_fraction=[0.1], stage=0, block=0)
    probs = torch.softmax(torch.randn(2, 2, 3, 1, 4, 4), dim=-1)
    kinds = torch.zeros(2, 2, 3, 4, dtype=torch.uint8)
    with pytest.raises(ShapeError):
        tidy_flow(attention_flow(probs, kinds), cases=["a", "b"], padding=0, pad_fraction=0.0, stage=0, block=0)


# ---------------------------------------------------------------- stage / model


def test_stage_means_are_unweighted_block_means():
    s = stage_means(hand_frame()).set_index(["stage", "metric"])
    assert s.loc[(0, "adi"), "value"] == pytest.approx(0.3)
    assert s.loc[(1, "adi"), "value"] == pytest.approx(0.5)  # (0.1 + 0.2 + 1.2) / 3
    assert s.loc[(1, "a_pr"), "value"] == pytest.approx(0.7)
    assert math.isnan(s.loc[(0, "a_pr"), "value"]) and s.loc[(0, "a_pr"), "n_blocks"] == 0
    assert s.loc[(1, "adi"), "n_blocks"] == 3
    assert s.loc[(0, "adi"), "n_real_queries"] == 200 and s.loc[(1, "a_pr"), "n_pad_queries"] == 12
    assert "block" not in s.reset_index().columns


def test_model_means_stage_and_token_weighted():
    df = hand_frame()
    m = model_means(df).set_index("metric")["value"]  # block frame is reduced to stages first
    assert m["adi"] == pytest.approx((0.3 + 0.5) / 2)
    assert m["a_pr"] == pytest.approx(0.7)  # stage 0 has no value: skipped, not averaged in as 0
    assert model_means(stage_means(df)).equals(model_means(df))
    t = model_means(df, weighting="tokens").set_index("metric")["value"]
    # real-query metric: weights 200 (stage 0) and 30 (stage 1) ...
    assert t["adi"] == pytest.approx((200 * 0.3 + 30 * 0.5) / 230)
    # ... equal to the mean over every (block, real query), since n is constant within a stage
    assert t["adi"] == pytest.approx((100 * 0.2 + 100 * 0.4 + 10 * (0.1 + 0.2 + 1.2)) / 230)
    # padding-query metric: weighted by padding queries; stage 0 has none (and no value)
    assert t["a_pr"] == pytest.approx(0.7)
    no_pad = df[df["metric"] == "a_pr"].assign(n_pad_queries=0)
    assert math.isnan(model_means(no_pad, weighting="tokens")["value"].item())  # no padding query anywhere
    no_real = df[df["metric"] == "adi"].assign(n_real_queries=0)
    assert model_means(no_real, weighting="tokens")["value"].tolist() == [0.0]  # real-query metrics stay 0
    with pytest.raises(ConfigError):
        model_means(df, weighting="blocks")
    with pytest.raises(DataError):
        model_means(df.drop(columns=["n_real_queries", "n_pad_queries"]), weighting="tokens")


# ---------------------------------------------------------------- sweeps


def sweep_frame() -> pd.DataFrame:
    rows = []
    for case, vals in {"a": (0.1, 0.0), "b": (0.2, 0.2), "c": (0.6, 0.4)}.items():
        for padding, v in zip((32, 0), vals, strict=True):
            for stage in (0, 1):  # same value in both blocks and stages -> model value v
                for block in (0, 1):
                    rows.append(row(case, stage, block, "adi", v, padding=padding))
    return pd.DataFrame(rows)


def test_sweep_mean_std_n_over_cases():
    model = model_means(sweep_frame())
    sw = sweep_summary(model).set_index(["padding", "metric"])
    cell = sw.loc[(32, "adi")]
    assert cell["mean"] == pytest.approx(0.3)
    assert cell["std"] == pytest.approx(math.sqrt((0.2**2 + 0.1**2 + 0.3**2) / 2))  # ddof 1
    assert cell["n"] == 3 and cell["pad_fraction"] == pytest.approx(32 / 96)
    assert sw.loc[(0, "adi"), "mean"] == pytest.approx(0.2)
    pop = sweep_summary(model, ddof=0).set_index(["padding", "metric"])
    assert pop.loc[(32, "adi"), "std"] == pytest.approx(math.sqrt(0.14 / 3))
    # a stage frame keeps the stage dim in the sweep
    by_stage = sweep_summary(stage_means(sweep_frame()))
    assert {"padding", "stage", "kind", "metric", "mean", "std", "n"} <= set(by_stage.columns)
    assert len(by_stage) == 2 * 2  # paddings x stages
    one_case = sweep_summary(model[model["case"] == "a"])
    assert one_case["n"].tolist() == [1, 1] and one_case["std"].isna().all()


def test_missing_values_are_skipped_at_every_level():
    """Hand-made frame: NaN a_pr (blocks without padding queries) never enters a mean as 0."""
    nan = math.nan
    rows = []
    # case a: stage 0 has no padding query in block 0 only; stage 1 none at all
    for case, values in {"a": ((nan, 0.4), (nan, nan)), "b": ((0.2, 0.6), (0.8, 0.9)),
                         "c": ((nan, nan), (nan, nan))}.items():
        for stage, pair in enumerate(values):
            for block, v in enumerate(pair):
                rows.append(row(case, stage, block, "a_pr", v, npq=0 if math.isnan(v) else 5))
                rows.append(row(case, stage, block, "adi", 0.0 if math.isnan(v) else 0.1))
    frame = pd.DataFrame(rows)

    stages = stage_means(frame).set_index(["case", "stage", "metric"])
    assert stages.loc[("a", 0, "a_pr"), "value"] == pytest.approx(0.4)  # nanmean, not (0 + 0.4) / 2
    assert stages.loc[("a", 0, "a_pr"), "n_blocks"] == 1
    assert math.isnan(stages.loc[("a", 1, "a_pr"), "value"]) and stages.loc[("a", 1, "a_pr"), "n_blocks"] == 0
    assert stages.loc[("b", 1, "a_pr"), "value"] == pytest.approx(0.85)
    assert stages.loc[("a", 0, "adi"), "value"] == pytest.approx(0.05)  # ADI keeps its 0 (no padding seen)

    models = model_means(frame).set_index(["case", "metric"])
    assert models.loc[("a", "a_pr"), "value"] == pytest.approx(0.4) and models.loc[("a", "a_pr"), "n_stages"] == 1
    assert models.loc[("b", "a_pr"), "value"] == pytest.approx((0.4 + 0.85) / 2)
    assert math.isnan(models.loc[("c", "a_pr"), "value"]) and models.loc[("c", "a_pr"), "n_stages"] == 0
    tokens = model_means(frame, weighting="tokens").set_index(["case", "metric"])
    assert tokens.loc[("a", "a_pr"), "value"] == pytest.approx(0.4)
    assert tokens.loc[("b", "a_pr"), "value"] == pytest.approx((0.2 + 0.6 + 0.8 + 0.9) / 4)
    assert math.isnan(tokens.loc[("c", "a_pr"), "value"])

    summary = sweep_summary(model_means(frame)).set_index("metric")
    assert summary.loc["a_pr", "mean"] == pytest.approx((0.4 + 0.625) / 2)  # case c has no value
    assert summary.loc["a_pr", "n"] == 2
    assert summary.loc["a_pr", "std"] == pytest.approx(np.std([0.4, 0.625], ddof=1))
    assert summary.loc["adi", "n"] == 3


def test_sweep_refuses_unreduced_frames():
    df = sweep_frame().drop(columns=["block"])  # two rows per case and stage now
    with pytest.raises(DataError, match="more than once"):
        sweep_summary(df)


# ---------------------------------------------------------------- xarray


def test_to_xarray_named_dims_and_values():
    df = pd.concat([hand_frame(), hand_frame().assign(kind="input", value=lambda d: d["value"] / 2)])
    ds = to_xarray(df)
    assert tuple(ds["adi"].dims) == ("case", "padding", "stage", "block", "kind")
    assert list(ds["kind"].values) == ["input", "all"]  # report order, not alphabetical
    assert float(ds["adi"].sel(case="a", padding=0, stage=1, block=2, kind="all")) == pytest.approx(1.2)
    assert float(ds["adi"].sel(case="a", padding=0, stage=1, block=2, kind="input")) == pytest.approx(0.6)
    assert np.isnan(float(ds["adi"].sel(case="a", padding=0, stage=0, block=2, kind="all")))  # no block 2
    assert int(ds["n_real_queries"].sel(case="a", padding=0, stage=0, block=0, kind="all")) == 100
    assert "pad_fraction" in ds.coords and ds["pad_fraction"].dims == ("case", "padding")
    assert ds["adi"].attrs["long_name"] == "attention dilution index"
    sw = to_xarray(sweep_summary(model_means(sweep_frame())), value="mean")
    assert tuple(sw["adi"].dims) == ("padding", "kind")
    assert float(sw["adi"].sel(padding=32, kind="all")) == pytest.approx(0.3)
    assert sw["pad_fraction"].dims == ("padding",)
    with pytest.raises(DataError):
        to_xarray(df.drop(columns=["block"]))


def test_end_to_end_from_attention():
    g = torch.Generator().manual_seed(0)
    frames = []
    for stage in range(2):
        for block in range(2):
            probs = torch.softmax(torch.randn(3, 4, 2, 8, 8, generator=g), dim=-1)
            kinds = torch.randint(0, 3, (3, 4, 8), generator=g).to(torch.uint8)
            for kind in ("input", "window", "all"):
                res = attention_flow(probs, kinds, padding=kind)
                frames.append(tidy_flow(res, cases=["x", "y", "z"], padding=8, pad_fraction=8 / 96,
                                        stage=stage, block=block))
    df = pd.concat(frames, ignore_index=True)
    assert len(df) == 3 * 2 * 2 * 3 * len(METRICS)
    model = model_means(df)
    assert len(model) == 3 * 3 * len(METRICS)
    ds = to_xarray(df)
    assert ds["adi"].shape == (3, 1, 2, 2, 3) and not ds["adi"].isnull().any()
    summary = sweep_summary(model)
    assert (summary["n"] == 3).all()
