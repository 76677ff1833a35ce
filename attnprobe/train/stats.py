"""Statistics a reviewer asks for: bootstrap intervals and paired tests between two evaluations.

- :func:`bootstrap_ci`: percentile bootstrap interval of a statistic over cases -- resample the
  cases with replacement (``numpy.random.default_rng(seed)``, one ``(n_resamples, n)`` draw of
  indices), compute the statistic on each resample (NaN values skipped, as the summary means
  skip them; a resample without any number is left out), and take the
  ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles (linear interpolation).
- :func:`mcnemar_exact`: exact McNemar test of paired binary outcomes -- under H0 the b
  discordant pairs "A only" out of the b + c discordant ones follow Binomial(b + c, 1/2); the
  two-sided p is ``min(1, 2 P(X <= min(b, c)))`` (``scipy.stats.binomtest``).
- :func:`wilcoxon_paired`: Wilcoxon signed-rank test of paired differences ``B - A``
  (``scipy.stats.wilcoxon``; zero differences dropped, Wilcox's convention; the exact null
  distribution without ties up to 50 pairs, the normal approximation with tie correction
  otherwise), with the matched-pairs rank-biserial correlation
  ``r = (T+ - T-) / (T+ + T-)`` (Kerby 2014) as its effect size.
- :func:`compare_cases`: the three comparisons of two evaluation runs, paired by case.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from attnprobe.errors import ConfigError, DataError

# with n nonzero differences the smallest two-sided exact p is 2 / 2**n: below 6 pairs it is
# >= 0.0625, so the test cannot reach 0.05 whatever the data
MIN_WILCOXON_PAIRS = 6
COMPARE_COLUMNS = ("metric", "test", "n_pairs", "a", "b", "difference", "difference_ci_low", "difference_ci_high",
                   "statistic", "p_value", "effect_size", "effect_name", "a_only", "b_only", "note")


def _check_bootstrap(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) < 1 or not 0.0 < confidence < 1.0:
        raise ConfigError("Bad bootstrap option.", expected="n_resamples >= 1 and 0 < confidence < 1",
                          got=f"n_resamples={n_resamples}, confidence={confidence}",
                          fix="use n_resamples=2000, confidence=0.95")


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    finite = np.isfinite(x)
    count = finite.sum(1)
    total = np.where(finite, x, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _quantiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-case values (NaN values skipped).

    Parameters
    ----------
    values
        One value per case (NaN = undefined for that case; still resampled, then skipped).
    n_resamples
        Number of resamples.
    confidence
        Interval coverage, e.g. 0.95.
    seed
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    low, high
        NaN, NaN when no case has a number.
    """
    _check_bootstrap(n_resamples, confidence)
    x = np.asarray(values, dtype=np.float64).ravel()
    if not np.isfinite(x).any():
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, x.size, size=(int(n_resamples), x.size))
    return _quantiles(_nanmean_rows(x[idx]), confidence)


def paired_bootstrap_ci(a: np.ndarray, b: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float], *,
                        n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(a[i], b[i])``, resampling pairs (one index per case)."""
    _check_bootstrap(n_resamples, confidence)
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, a.size, size=(int(n_resamples), a.size))
    return _quantiles(np.array([statistic(a[i], b[i]) for i in idx]), confidence)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: ``a_only`` / ``b_only`` discordant pairs, two-sided ``p_value``."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> McNemarResult:
    """Exact (binomial) McNemar test of paired binary outcomes.

    Parameters
    ----------
    a, b
        Outcome per pair (e.g. detected) under A and under B, same length.

    Returns
    -------
    McNemarResult
        p = 1 without discordant pairs.
    """
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    n = a_only + b_only
    p = 1.0 if n == 0 else float(stats.binomtest(min(a_only, b_only), n, 0.5).pvalue)
    return McNemarResult(a_only=a_only, b_only=b_only, p_value=min(1.0, p))


def rank_biserial(differences: Sequence[float] | np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of paired differences (zeros dropped; NaN if none left)."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return math.nan
    ranks = stats.rankdata(np.abs(d))  # ties get their average rank
    t_plus, t_minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((t_plus - t_minus) / (t_plus + t_minus))


@dataclass(frozen=True)
class WilcoxonResult:
    """Wilcoxon signed-rank test of differences: statistic (min(T+, T-)), p, nonzero pairs, a note."""

    statistic: float
    p_value: float
    n_nonzero: int
    rank_biserial: float
    note: str


def wilcoxon_paired(differences: Sequence[float] | np.ndarray) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of paired differences (NaN-free).

    Parameters
    ----------
    differences
        ``B - A`` per pair.

    Returns
    -------
    WilcoxonResult
        No pair -> p NaN; every difference zero -> p 1 (no evidence of a difference); fewer than
        :data:`MIN_WILCOXON_PAIRS` nonzero pairs -> the test runs but ``note`` says it cannot reach 0.05.
    """
    d = np.asarray(differences, dtype=np.float64)
    nonzero = d[d != 0]
    if d.size == 0:
        return WilcoxonResult(math.nan, math.nan, 0, math.nan, "no pair with a value in both runs")
    if nonzero.size == 0:
        return WilcoxonResult(0.0, 1.0, 0, math.nan, f"all {d.size} paired differences are zero")
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    # the exact null distribution assumes untied, nonzero differences; scipy's 'auto' says the same
    method = "exact" if not ties and nonzero.size <= 50 else "approx"
    res = stats.wilcoxon(nonzero, zero_method="wilcox", method=method)
    notes = []
    if nonzero.size < d.size:
        notes.append(f"{d.size - nonzero.size} zero difference(s) dropped")
    if ties:
        notes.append("tied differences: normal approximation with tie correction")
    if nonzero.size < MIN_WILCOXON_PAIRS:
        notes.append(f"only {nonzero.size} nonzero pair(s): the smallest possible p is "
                     f"{2.0 / 2 ** nonzero.size:.3g}, the test cannot reach 0.05")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), int(nonzero.size), rank_biserial(nonzero),
                          "; ".join(notes))


@dataclass(frozen=True)
class CompareRow:
    """One row of :func:`compare_cases` (see :data:`COMPARE_COLUMNS`)."""

    metric: str
    test: str
    n_pairs: int
    a: float
    b: float
    difference: float
    difference_ci_low: float
    difference_ci_high: float
    statistic: float
    p_value: float
    effect_size: float
    effect_name: str
    a_only: int | None
    b_only: int | None
    note: str


def _detection_row(a: np.ndarray, b: np.ndarray, boot: dict) -> CompareRow:
    test = mcnemar_exact(a, b)
    low, high = paired_bootstrap_ci(a, b, lambda x, y: float(y.mean() - x.mean()), **boot)
    n = int(a.size)
    rate_a, rate_b = (float(a.mean()), float(b.mean())) if n else (math.nan, math.nan)
    note = "" if n else "no case with a reference lesion in both runs"
    if n and test.a_only + test.b_only == 0:
        note = "no discordant pair: p = 1"
    return CompareRow("detection", "exact McNemar", n, rate_a, rate_b, rate_b - rate_a, low, high,
                      float(min(test.a_only, test.b_only)), test.p_value, rate_b - rate_a,
                      "difference in detection rate (B - A)", test.a_only, test.b_only, note)


def _continuous_row(metric: str, a: np.ndarray, b: np.ndarray, boot: dict) -> CompareRow:
    both = np.isfinite(a) & np.isfinite(b)
    x, y = a[both], b[both]
    test = wilcoxon_paired(y - x)
    low, high = paired_bootstrap_ci(x, y, lambda u, v: float(np.median(v - u)), **boot)
    notes = [test.note] if test.note else []
    if (~both).any():
        notes.insert(0, f"{int((~both).sum())} case(s) without a value in both runs left out")
    median = lambda v: float(np.median(v)) if v.size else math.nan  # noqa: E731
    return CompareRow(metric, "Wilcoxon signed-rank", int(both.sum()), median(x), median(y), median(y - x), low,
                      high, test.statistic, test.p_value, test.rank_biserial, "matched-pairs rank-biserial r",
                      None, None, "; ".join(notes))


def compare_cases(a: pd.DataFrame, b: pd.DataFrame, *, n_resamples: int = 2000, confidence: float = 0.95,
                  seed: int = 0) -> pd.DataFrame:
    """Paired comparison of two evaluations of the same cases (B against A).

    Parameters
    ----------
    a, b
        Per-case tables (``cases.csv``) with columns ``case, detected, iou, dice, hd95``; the same
        case ids in both.
    n_resamples, confidence, seed
        Bootstrap of the differences (pairs resampled with one index per case).

    Returns
    -------
    pandas.DataFrame
        Rows ``detection`` (exact McNemar on the cases with a reference lesion -- ``iou`` is a
        number -- in both runs; ``a``/``b`` the rates, ``difference`` B - A with its bootstrap
        interval, ``a_only``/``b_only`` the discordant counts), ``dice`` and ``hd95``
        (Wilcoxon signed-rank on the cases with a value in both; ``a``/``b`` the medians,
        ``difference`` the median paired difference B - A with its bootstrap interval,
        ``effect_size`` the rank-biserial correlation). Columns :data:`COMPARE_COLUMNS`.

    Raises
    ------
    DataError
        Missing columns, duplicate case ids, or case sets that differ.
    """
    _check_bootstrap(n_resamples, confidence)
    need = {"case", "detected", "iou", "dice", "hd95"}
    for name, frame in (("A", a), ("B", b)):
        if not need <= set(frame.columns):
            raise DataError(f"run {name} lacks per-case columns", expected=", ".join(sorted(need)),
                            got=", ".join(map(str, frame.columns)), fix="pass cases.csv of attnprobe evaluate")
        if frame["case"].astype(str).duplicated().any():
            raise DataError(f"run {name} lists a case twice", expected="one row per case",
                            got=str(frame["case"][frame["case"].astype(str).duplicated()].iloc[0]))
    ia, ib = a.assign(case=a["case"].astype(str)).set_index("case"), b.assign(case=b["case"].astype(str)).set_index("case")
    if set(ia.index) != set(ib.index):
        only_a, only_b = sorted(set(ia.index) - set(ib.index)), sorted(set(ib.index) - set(ia.index))
        raise DataError("the two runs scored different cases", expected="the same case ids in both runs",
                        got=f"{len(only_a)} only in A {only_a[:3]}, {len(only_b)} only in B {only_b[:3]}",
                        fix="evaluate both models on the same cases")
    ib = ib.loc[ia.index]
    boot = {"n_resamples": n_resamples, "confidence": confidence, "seed": seed}
    with_ref = ia["iou"].notna().to_numpy() & ib["iou"].notna().to_numpy()
    det = [_detection_row(_as_bool(ia["detected"])[with_ref], _as_bool(ib["detected"])[with_ref], boot)]
    rows = det + [_continuous_row(m, pd.to_numeric(ia[m], errors="coerce").to_numpy(float),
                                  pd.to_numeric(ib[m], errors="coerce").to_numpy(float), boot)
                  for m in ("dice", "hd95")]
    frame = pd.DataFrame([asdict(r) for r in rows], columns=list(COMPARE_COLUMNS))
    return frame.astype({"a_only": "Int64", "b_only": "Int64"})  # counts, empty on the Dice/HD95 rows


def _as_bool(column: pd.Series) -> np.ndarray:
    # cases.csv read back holds True/False as bools or as the strings "True"/"False"
    return column.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).to_numpy(bool)
