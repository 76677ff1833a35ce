"""The ablation loop's summary against hand computations, its figure, and the standard names."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from attnprobe.capture.edits import MaskKeys, ReplaceTokens  # noqa: E402
from attnprobe.errors import ConfigError, DataError  # noqa: E402
from attnprobe.figures.ablation import ablation_deltas  # noqa: E402
from attnprobe.train.ablation import (  # noqa: E402
    ABLATION_COLUMNS,
    AblationResult,
    ablation_summary,
    intervention_from_name,
    standard_interventions,
)
from attnprobe.train.evaluate import CaseResult  # noqa: E402


def result(case: str, dice: float, detected: bool) -> CaseResult:
    return CaseResult(detected=detected, iou=0.5, dice=dice, hd95=2.0, surface_dice=0.5, n_pred_components=1,
                      n_ref_lesions=1, n_detected_lesions=int(detected), hd95_defined=True, case=case)


def hand_run() -> AblationResult:
    dice = {("none", "a"): 0.8, ("none", "b"): 0.6, ("none", "c"): 0.7,
            ("mask-all", "a"): 0.7, ("mask-all", "b"): 0.6, ("mask-all", "c"): math.nan}
    rows, results = [], {}
    for (name, case), d in dice.items():
        detected = not math.isnan(d)
        res = result(case, d, detected)
        results.setdefault((name, 16), []).append(res)
        values = {"detected": float(detected), "dice": d, "hd95": 2.0, "adi": 0.3 if name == "none" else 0.0,
                  "moved": math.nan if name == "none" else 0.2}
        rows += [{"case": case, "padding": 16, "pad_fraction": 0.5, "intervention": name, "metric": k, "value": v}
                 for k, v in values.items()]
    return AblationResult(table=pd.DataFrame(rows, columns=list(ABLATION_COLUMNS)), adi=pd.DataFrame(),
                          results=results)


def test_summary_deltas_are_paired_by_case():
    summary = ablation_summary(hand_run(), n_resamples=200).set_index("intervention")
    row = summary.loc["mask-all"]
    # Dice pairs: a -0.1, b 0.0, c NaN (missed) -> mean -0.05 over 2 pairs
    assert row["delta_dice"] == pytest.approx(-0.05) and row["delta_dice_n"] == 2
    assert row["delta_dice_ci_low"] <= -0.05 <= row["delta_dice_ci_high"]
    # detection: 1, 1, 0 vs 1, 1, 1 -> -1/3
    assert row["delta_detection"] == pytest.approx(-1 / 3) and row["detection_rate"] == pytest.approx(2 / 3)
    assert row["delta_adi"] == pytest.approx(-0.3) and row["moved_mean"] == pytest.approx(0.2)
    base = summary.loc["none"]
    assert base["delta_dice"] == 0 and math.isnan(base["moved_mean"])


def test_figure_draws_one_line_per_intervention():
    summary = ablation_summary(hand_run(), n_resamples=50)
    fig = ablation_deltas(summary)
    assert len(fig.axes) == 2
    assert [line.get_label() for line in fig.axes[0].lines if not line.get_label().startswith("_")] == ["mask-all"]
    with pytest.raises(DataError, match="columns"):
        ablation_deltas(summary.drop(columns="delta_dice"))
    with pytest.raises(DataError, match="besides the baseline"):
        ablation_deltas(summary[summary["intervention"] == "none"])


def test_standard_names():
    names = standard_interventions(4)
    assert names == ["none", "mask-stage0", "mask-stage1", "mask-stage2", "mask-stage3", "mask-all", "mean-ablate"]
    iv = intervention_from_name("mask-stage2", n_stages=4, key_kind="input")
    assert iv.edits == (MaskKeys(blocks="stage2.*", kind="input"),)
    (edit,) = intervention_from_name("zero-ablate", n_stages=4).edits
    assert isinstance(edit, ReplaceTokens) and edit.value == "zero" and edit.kind == "input"
    assert intervention_from_name("none", n_stages=4).edits == ()
    with pytest.raises(ConfigError, match="did you mean mask-stage3"):
        intervention_from_name("mask-stage4", n_stages=4)
