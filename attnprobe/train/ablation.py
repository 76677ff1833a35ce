"""Causal ablation of padding: segmentation under edits of the forward, over a padding sweep.

For each case, each padding amount p of a :class:`~attnprobe.metrics.sweep.SweepSpec` and each
:class:`~attnprobe.capture.edits.Intervention`, one forward on the model ROI:

1. the swept input (:func:`~attnprobe.metrics.sweep.swept_input`; its label is cropped and
   placed exactly like the image) runs through the model inside an
   :class:`~attnprobe.capture.intervene.Intervene` and a read-only
   :class:`~attnprobe.capture.probe.Probe` with an online
   :class:`~attnprobe.metrics.reducers.FlowReducer`, so the ADI is that of the *edited* forward;
2. the prediction (argmax, 0 on padding voxels) is scored against the swept label with
   :func:`~attnprobe.train.evaluate.evaluate_case`.

Standard interventions (:func:`intervention_from_name`, ``docs/ablation.md``): ``none``;
``mask-stage{s}``: padding keys masked in every block of stage s; ``mask-all``: in every block;
``mean-ablate`` / ``zero-ablate``: every block's input-padding output tokens replaced by the
mean real token / by zero.

The tidy table has columns ``case, padding, pad_fraction, intervention, metric, value`` with
metrics ``detected`` (0/1), ``iou``, ``dice``, ``hd95``, ``surface_dice``, ``adi`` (model
level, padding kind ``all``: mean over stages of the block means), ``moved`` (attention mass the
masks moved, mean over the masked blocks; NaN without a mask). :func:`ablation_summary`
adds, per intervention and padding, :func:`~attnprobe.train.evaluate.summarize` and the change
against ``none`` paired by case, with percentile bootstrap intervals over cases.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from attnprobe.capture.edits import Intervention, MaskKeys, ReplaceTokens
from attnprobe.capture.intervene import Intervene
from attnprobe.capture.probe import Probe
from attnprobe.errors import ConfigError, DataError
from attnprobe.metrics.aggregate import model_means
from attnprobe.metrics.reducers import FlowReducer, FlowTag, flows_to_frame
from attnprobe.metrics.sweep import SweepSpec, swept_input
from attnprobe.models.registry import adapter_for
from attnprobe.tokens import PaddingKind
from attnprobe.train.evaluate import CaseResult, evaluate_case, summarize
from attnprobe.train.stats import bootstrap_ci

__all__ = [
    "ABLATION_COLUMNS",
    "AblationResult",
    "standard_interventions",
    "intervention_from_name",
    "run_ablation",
    "ablation_summary",
]

ABLATION_COLUMNS: tuple[str, ...] = ("case", "padding", "pad_fraction", "intervention", "metric", "value")
CASE_METRICS: tuple[str, ...] = ("detected", "iou", "dice", "hd95", "surface_dice")
BASELINE = "none"


def standard_interventions(n_stages: int) -> list[str]:
    """Names of the standard list: none, each stage masked, all masked, mean-ablated."""
    return [BASELINE, *(f"mask-stage{s}" for s in range(n_stages)), "mask-all", "mean-ablate"]


def intervention_from_name(name: str, *, n_stages: int, key_kind: PaddingKind = "all") -> Intervention:
    """The :class:`Intervention` of a standard name (module docstring).

    Parameters
    ----------
    name
        ``none``, ``mask-stage{s}``, ``mask-all``, ``mean-ablate`` or ``zero-ablate``.
    n_stages
        Stages of the model (``mask-stage{s}`` needs ``s < n_stages``).
    key_kind
        Padding kind whose keys the masks hide (``input``, ``window`` or ``all``).
    """
    names = [BASELINE, *(f"mask-stage{s}" for s in range(n_stages)), "mask-all", "mean-ablate", "zero-ablate"]
    if name == BASELINE:
        return Intervention(name=name)
    if name == "mask-all":
        return Intervention(name=name, edits=(MaskKeys(blocks="*", kind=key_kind),))
    stage = re.fullmatch(r"mask-stage(\d+)", name)
    if stage and int(stage.group(1)) < n_stages:
        return Intervention(name=name, edits=(MaskKeys(blocks=f"stage{int(stage.group(1))}.*", kind=key_kind),))
    if name in ("mean-ablate", "zero-ablate"):
        return Intervention(name=name, edits=(ReplaceTokens(blocks="*", kind="input",
                                                            value="mean-real" if name == "mean-ablate" else "zero"),))
    near = difflib.get_close_matches(name, names, n=2, cutoff=0.5)
    raise ConfigError(f"unknown intervention {name!r}", expected=" | ".join(names), got=repr(name),
                      fix=f"did you mean {', '.join(near)}?" if near else "pick names from the expected list")


@dataclass(frozen=True, eq=False)
class AblationResult:
    """Everything one ablation run produced.

    Attributes
    ----------
    table
        Tidy ``case, padding, pad_fraction, intervention, metric, value`` (module docstring).
    adi
        Block-level attention flow of the same forwards (the columns of
        :func:`~attnprobe.metrics.reducers.flows_to_frame` plus ``intervention``).
    results
        ``(intervention, padding)`` -> per-case :class:`~attnprobe.train.evaluate.CaseResult`.
    """

    table: pd.DataFrame
    adi: pd.DataFrame
    results: dict[tuple[str, int], list[CaseResult]]


def _model_adi(frame: pd.DataFrame) -> float:
    """Model-level ADI (kind ``all``) of one forward's block frame."""
    rows = model_means(frame)
    sel = rows[(rows["metric"] == "adi") & (rows["kind"] == "all")]["value"]
    return float(sel.mean()) if len(sel) else math.nan


def run_ablation(
    model: nn.Module,
    cases: Iterable[Any],
    interventions: Sequence[Intervention],
    spec: SweepSpec | None = None,
    *,
    device: str | torch.device = "cpu",
    metric_options: Mapping[str, Any] | None = None,
    on_step: Callable[[str, int, str], None] | None = None,
) -> AblationResult:
    """Evaluate segmentation under each intervention over a padding sweep.

    Parameters
    ----------
    model
        A segmentation model of a registered architecture returning logits
        ``(sample, class, x, y, z)``.
    cases
        Prepared cases at the model ROI with a ``label`` (``(1, x, y, z)``) and optionally a
        ``spacing`` (mm, default 1 mm); consumed lazily, one case in memory at a time.
    interventions
        What to run; names must be distinct. The deltas of :func:`ablation_summary` need one
        named ``none`` (the plain forward).
    spec
        The padding sweep (default ``SweepSpec()``).
    device
        Where the model runs.
    metric_options
        Keyword options of :func:`~attnprobe.train.evaluate.evaluate_case` (scope, detection...).
    on_step
        Called with ``(case id, padding, intervention)`` after each forward.

    Returns
    -------
    AblationResult
    """
    spec = spec or SweepSpec()
    interventions = list(interventions)
    names = [iv.name for iv in interventions]
    if not interventions or len(set(names)) != len(names):
        raise ConfigError("bad intervention list", expected="one or more interventions with distinct names",
                          got=repr(names))
    adapter = adapter_for(model)
    if spec.multiple != adapter.input_multiple:
        spec = replace(spec, multiple=adapter.input_multiple)
    device = torch.device(device)
    model = model.to(device).eval()
    options = dict(metric_options or {})
    reducer = FlowReducer(padding_kinds=("all",))
    rows: list[dict[str, Any]] = []
    flows: list[pd.DataFrame] = []
    results: dict[tuple[str, int], list[CaseResult]] = {}
    with torch.no_grad(), Probe(model, ["*.attn"], sinks=[reducer], keep=False, adapter=adapter) as probe:
        for case in cases:
            if getattr(case, "label", None) is None:
                raise DataError(f"case {case.case_id!r} has no label", expected="labelled cases",
                                got="label None", fix="use a datalist whose entries have a label")
            spec.check_shape(case.image.shape[1:])
            spacing = tuple(getattr(case, "spacing", (1.0, 1.0, 1.0)))
            for p in spec.paddings:
                item = swept_input(case, p, spec)
                image = item.image[None].to(device)
                mask = item.mask[None].to(device)
                for iv in interventions:
                    tag = FlowTag(cases=(item.case_id,), padding=p, pad_fraction=item.pad_fraction)
                    with Intervene(model, iv, measure_moved=True, adapter=adapter) as edit:
                        logits = edit.run(image, mask=mask, probe=probe, tag=tag)
                    pred = (logits[0].argmax(0) * mask[0, 0]).cpu().numpy()
                    res = evaluate_case(pred, cast(torch.Tensor, item.label)[0].numpy(),  # labels checked above
                                         spacing=spacing, case=item.case_id, **options)
                    results.setdefault((iv.name, p), []).append(res)
                    flow = flows_to_frame([reducer.records.pop()]).assign(intervention=iv.name)
                    flows.append(flow)
                    moved = [float(v.mean()) for v in edit.moved.values() if not torch.isnan(v).all()]
                    values = {"detected": float(res.detected), "iou": res.iou, "dice": res.dice, "hd95": res.hd95,
                              "surface_dice": res.surface_dice, "adi": _model_adi(flow),
                              "moved": float(np.mean(moved)) if moved else math.nan}
                    rows += [{"case": item.case_id, "padding": p, "pad_fraction": item.pad_fraction,
                              "intervention": iv.name, "metric": k, "value": v} for k, v in values.items()]
                    if on_step is not None:
                        on_step(item.case_id, p, iv.name)
    table = pd.DataFrame(rows, columns=list(ABLATION_COLUMNS))
    adi = pd.concat(flows, ignore_index=True) if flows else pd.DataFrame()
    return AblationResult(table=table, adi=adi, results=results)


def _delta(table: pd.DataFrame, intervention: str, padding: int, metric: str) -> pd.Series:
    """Per-case ``metric(intervention) - metric(none)`` at one padding, indexed by case (NaN kept)."""
    sel = table[(table["padding"] == padding) & (table["metric"] == metric)]
    wide = sel.pivot(index="case", columns="intervention", values="value")
    if BASELINE not in wide or intervention not in wide:
        return pd.Series(dtype=np.float64)
    return (wide[intervention] - wide[BASELINE]).astype(np.float64)


def ablation_summary(result: AblationResult, *, n_resamples: int = 2000, confidence: float = 0.95,
                     seed: int = 0) -> pd.DataFrame:
    """Per intervention and padding: the evaluation summary and the change against ``none``.

    Parameters
    ----------
    result
        From :func:`run_ablation`.
    n_resamples, confidence, seed
        Percentile bootstrap over cases (:func:`attnprobe.train.stats.bootstrap_ci`).

    Returns
    -------
    pandas.DataFrame
        One row per (intervention, padding) with every key of
        :func:`~attnprobe.train.evaluate.summarize`, ``adi_mean``, ``moved_mean`` and, for
        ``dice``, ``detection`` (cases with a reference lesion only), ``hd95`` and ``adi``:
        ``delta_{m}`` (mean over cases of the paired difference to ``none``, NaN pairs
        skipped), ``delta_{m}_ci_low/high`` and ``delta_{m}_n`` (pairs with a number).
        Without a ``none`` intervention the deltas are NaN.
    """
    table = result.table
    has_ref = {r.case: r.has_reference for res in result.results.values() for r in res}
    rows = []
    for (name, padding), res in result.results.items():
        row: dict[str, Any] = {"intervention": name, "padding": padding,
                               **summarize(res, n_resamples=n_resamples, confidence=confidence, seed=seed)}
        sel = table[(table["intervention"] == name) & (table["padding"] == padding)]
        for metric in ("adi", "moved"):
            vals = sel.loc[sel["metric"] == metric, "value"].to_numpy(dtype=np.float64)
            row[f"{metric}_mean"] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
        for metric, column in (("dice", "dice"), ("detection", "detected"), ("hd95", "hd95"), ("adi", "adi")):
            pairs = _delta(table, name, padding, column)
            if metric == "detection":  # the detection rate counts cases with a reference lesion only
                pairs = pairs[[has_ref.get(c, False) for c in pairs.index]]
            diffs = pairs.to_numpy(dtype=np.float64)
            finite = diffs[np.isfinite(diffs)]
            row[f"delta_{metric}"] = float(finite.mean()) if finite.size else math.nan
            low, high = (bootstrap_ci(diffs, n_resamples=n_resamples, confidence=confidence, seed=seed)
                         if finite.size and n_resamples > 0 else (math.nan, math.nan))
            row[f"delta_{metric}_ci_low"], row[f"delta_{metric}_ci_high"] = low, high
            row[f"delta_{metric}_n"] = int(finite.size)
        rows.append(row)
    return pd.DataFrame(rows)


#: files of an ablation run folder (``attnprobe ablate``, the demo's ``ablation/<model>``)
ABLATION_FILES = ("ablation.csv", "adi.csv", "summary.csv", "summary.json")


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    return None if isinstance(value, float) and math.isnan(value) else value


def write_ablation(result: AblationResult, summary: pd.DataFrame, out: str | os.PathLike[str], *,
                   info: Mapping[str, Any]) -> list[Path]:
    """Write an ablation run: the tidy table, the ADI of the same forwards, the summary (CSV and
    JSON with ``info``); returns the paths in :data:`ABLATION_FILES` order."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(folder / "ablation.csv", index=False)
    result.adi.to_csv(folder / "adi.csv", index=False)
    summary.to_csv(folder / "summary.csv", index=False)
    rows = [{k: _json_value(v) for k, v in row.items()} for row in summary.to_dict("records")]
    (folder / "summary.json").write_text(json.dumps({**info, "summary": rows}, indent=1, default=str))
    return [folder / name for name in ABLATION_FILES]
