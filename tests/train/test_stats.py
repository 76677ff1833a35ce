"""Bootstrap intervals and paired tests, each against an independent computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from attnprobe.errors import ConfigError, DataError
from attnprobe.train.evaluate import CaseResult, summarize
from attnprobe.train.stats import (
    COMPARE_COLUMNS,
    bootstrap_ci,
    compare_cases,
    mcnemar_exact,
    paired_bootstrap_ci,
    rank_biserial,
    wilcoxon_paired,
)


def _quantile(sorted_values, q):
    """Linear-interpolation quantile written out (numpy's default 'linear' method)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def _manual_bootstrap(values, n_resamples, seed, statistic):
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_resamples):  # one row of indices per resample, as a plain loop
        picks = [values[int(i)] for i in rng.integers(0, len(values), size=len(values))]
        numbers = [v for v in picks if not math.isnan(v)]
        if numbers:
            draws.append(statistic(numbers))
    draws.sort()
    return _quantile(draws, 0.025), _quantile(draws, 0.975)


def test_bootstrap_ci_matches_a_manual_loop():
    values = [0.91, 0.42, 0.77, 0.63, 0.88]
    got = bootstrap_ci(values, n_resamples=300, seed=7)
    want = _manual_bootstrap(values, 300, 7, lambda v: sum(v) / len(v))
    assert got == pytest.approx(want, abs=1e-12)
    assert min(values) <= got[0] <= got[1] <= max(values)


def test_bootstrap_ci_skips_nan_and_is_seeded():
    values = [0.5, math.nan, 0.9, 0.7, math.nan, 0.2]
    got = bootstrap_ci(values, n_resamples=500, seed=3)
    assert got == pytest.approx(_manual_bootstrap(values, 500, 3, lambda v: sum(v) / len(v)), abs=1e-12)
    assert bootstrap_ci(values, n_resamples=500, seed=3) == got
    assert bootstrap_ci(values, n_resamples=500, seed=4) != got
    assert all(math.isnan(v) for v in bootstrap_ci([math.nan, math.nan]))
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    with pytest.raises(ConfigError, match="n_resamples"):
        bootstrap_ci(values, n_resamples=0)
    with pytest.raises(ConfigError, match="confidence"):
        bootstrap_ci(values, confidence=95)


def test_paired_bootstrap_resamples_pairs_together():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.5, 3.5, 4.5])  # B - A is always 0.5
    assert paired_bootstrap_ci(a, b, lambda x, y: float(np.median(y - x))) == (0.5, 0.5)


def _mcnemar_by_formula(b, c):
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize(("b", "c"), [(1, 4), (0, 6), (3, 3), (2, 9), (12, 5), (0, 1)])
def test_mcnemar_exact_matches_the_binomial_formula(b, c):
    concordant = [(True, True)] * 5 + [(False, False)] * 3
    pairs = concordant + [(True, False)] * b + [(False, True)] * c
    x, y = zip(*pairs)
    res = mcnemar_exact(x, y)
    assert (res.a_only, res.b_only) == (b, c)
    assert res.p_value == pytest.approx(_mcnemar_by_formula(b, c), rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_one():
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0
    # 1 vs 4: 2 * (1 + 5) / 32 = 0.375
    assert _mcnemar_by_formula(1, 4) == 0.375


def _exact_wilcoxon_p(d):
    """Two-sided exact p by enumerating all 2^n sign flips (untied, nonzero differences)."""
    ranks = np.argsort(np.argsort(np.abs(d))) + 1
    t_plus = ranks[d > 0].sum()
    total = ranks.sum()
    stat = min(t_plus, total - t_plus)
    count = 0
    for signs in itertools.product((0, 1), repeat=len(d)):
        t = sum(r for r, s in zip(ranks, signs) if s)
        count += min(t, total - t) <= stat
    return stat, count / 2 ** len(d)


def test_wilcoxon_matches_enumeration_and_rank_biserial_by_hand():
    d = np.array([0.12, -0.03, 0.08, 0.21, 0.05, -0.01, 0.15, 0.02])
    res = wilcoxon_paired(d)
    stat, p = _exact_wilcoxon_p(d)
    assert res.statistic == stat and res.p_value == pytest.approx(p, rel=1e-12)
    # ranks of |d|: 0.01->1, 0.02->2, 0.03->3, 0.05->4, 0.08->5, 0.12->6, 0.15->7, 0.21->8;
    # T- = 1 + 3 = 4, T+ = 32: r = (32 - 4) / 36
    assert stat == 4 and res.rank_biserial == pytest.approx(28 / 36)
    assert res.n_nonzero == 8 and res.note == ""


def test_wilcoxon_zeros_ties_and_too_few_pairs():
    res = wilcoxon_paired([0.0, 0.1, -0.2, 0.3, 0.0, 0.4, 0.5, 0.6])  # two zeros dropped
    stat, p = _exact_wilcoxon_p(np.array([0.1, -0.2, 0.3, 0.4, 0.5, 0.6]))
    assert res.n_nonzero == 6 and res.p_value == pytest.approx(p) and "2 zero difference(s) dropped" in res.note
    tied = wilcoxon_paired([0.1, 0.1, -0.1, 0.2, 0.3, 0.3, 0.4])
    assert "tied" in tied.note and 0.0 < tied.p_value < 1.0
    # ties share their average rank: |d| 0.1 x3 -> 2, 0.2 -> 4, 0.3 x2 -> 5.5, 0.4 -> 7
    assert tied.rank_biserial == pytest.approx((2 + 2 + 4 + 5.5 + 5.5 + 7 - 2) / 28)
    few = wilcoxon_paired([0.1, 0.2, 0.3])
    assert few.p_value == pytest.approx(0.25) and "cannot reach 0.05" in few.note
    zeros = wilcoxon_paired([0.0, 0.0])
    assert zeros.p_value == 1.0 and "all 2 paired differences are zero" in zeros.note
    none = wilcoxon_paired([])
    assert math.isnan(none.p_value) and "no pair" in none.note
    assert math.isnan(rank_biserial([0.0]))


def _cases(detected, dice, hd95, iou=None):
    n = len(detected)
    return pd.DataFrame({"case": [f"c{i}" for i in range(n)], "detected": detected,
                         "iou": iou if iou is not None else [0.5] * n, "dice": dice, "hd95": hd95,
                         "surface_dice": [0.9] * n})


def test_compare_cases_rows():
    rng = np.random.default_rng(0)
    n = 12
    det_a = [True] * 8 + [False] * 4
    det_b = [True] * 7 + [False] + [True] * 3 + [False]  # A only: c7; B only: c8, c9, c10
    dice_a = rng.uniform(0.5, 0.8, n)
    dice_b = dice_a + rng.uniform(-0.02, 0.1, n)
    hd_a = rng.uniform(5, 15, n)
    hd_b = hd_a - 1.0
    hd_b[3] = np.nan  # c3 has no HD95 in B: left out of that row only
    a = _cases(det_a, dice_a, hd_a)
    b = _cases(det_b, dice_b, hd_b).iloc[::-1]  # pairing is by case id, not row order
    table = compare_cases(a, b, n_resamples=400, seed=1)
    assert tuple(table.columns) == COMPARE_COLUMNS and list(table.metric) == ["detection", "dice", "hd95"]
    det, dice, hd = (table.iloc[i] for i in range(3))
    assert (det.a_only, det.b_only, det.n_pairs) == (1, 3, 12)
    assert det.p_value == pytest.approx(_mcnemar_by_formula(1, 3))
    assert det.difference == pytest.approx(10 / 12 - 8 / 12) and det.difference_ci_low <= det.difference
    d = dice_b - dice_a
    assert dice.difference == pytest.approx(np.median(d)) and dice.p_value == pytest.approx(_exact_wilcoxon_p(d)[1])
    assert dice.effect_size == pytest.approx(rank_biserial(d))
    assert hd.n_pairs == 11 and hd.difference == pytest.approx(-1.0) and hd.effect_size == -1.0
    assert hd.difference_ci_low == hd.difference_ci_high == pytest.approx(-1.0)
    assert "1 case(s) without a value in both runs left out" in hd.note


def test_compare_cases_leaves_out_cases_without_reference_and_refuses_mismatches():
    a = _cases([True, False, False], [1.0, 0.0, 0.5], [0.0, 1.0, 2.0], iou=[1.0, 0.0, np.nan])
    b = _cases([True, True, False], [1.0, 0.3, 0.5], [0.0, 1.0, 2.0], iou=[1.0, 0.4, np.nan])
    det = compare_cases(a, b, n_resamples=50).iloc[0]
    assert det.n_pairs == 2 and (det.a_only, det.b_only) == (0, 1) and det.p_value == 1.0
    with pytest.raises(DataError, match="different cases"):
        compare_cases(a, b.iloc[:2])
    with pytest.raises(DataError, match="lacks per-case columns"):
        compare_cases(a.drop(columns="dice"), b)
    with pytest.raises(DataError, match="twice"):
        compare_cases(pd.concat([a, a]), b)


def test_summarize_has_bootstrap_intervals():
    def res(case, detected, dice):
        return CaseResult(detected=detected, iou=0.5, dice=dice, hd95=2 * dice, surface_dice=dice,
                          n_pred_components=1, n_ref_lesions=1, n_detected_lesions=int(detected),
                          hd95_defined=True, case=case)

    results = [res("a", True, 0.9), res("b", False, math.nan), res("c", True, 0.7), res("d", True, 0.8)]
    s = summarize(results, n_resamples=300, seed=5)
    want_det = _manual_bootstrap([1.0, 0.0, 1.0, 1.0], 300, 5, lambda v: sum(v) / len(v))
    want_dice = _manual_bootstrap([0.9, math.nan, 0.7, 0.8], 300, 5, lambda v: sum(v) / len(v))
    assert (s["detection_rate_ci_low"], s["detection_rate_ci_high"]) == pytest.approx(want_det)
    assert (s["dice_ci_low"], s["dice_ci_high"]) == pytest.approx(want_dice)
    assert s["hd95_ci_low"] == pytest.approx(2 * want_dice[0]) and s["ci_level"] == 0.95
    assert s["n_resamples"] == 300 and s["bootstrap_seed"] == 5
    assert "dice_ci_low" not in summarize(results, n_resamples=0)
