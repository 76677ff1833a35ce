"""The causal test: segmentation and attention flow under interventions on padding, over a padding sweep.

Interventions, metrics and the summary are those of :mod:`attnprobe.train.ablation`
(docs/ablation.md); the run folder is :class:`~attnprobe.results.AblationRun`. The ``ablate``
command and the demo build the cases and the sweep, then call :func:`run_interventions`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn

from attnprobe.capture.edits import Intervention
from attnprobe.metrics.sweep import SweepSpec
from attnprobe.results import AblationRun, Manifest
from attnprobe.train.ablation import AblationResult

__all__ = ["Ablation", "n_stages", "intervention_plan", "describe", "run_interventions", "ablation_run"]


def n_stages(model: nn.Module) -> int:
    """Number of encoder stages of a model of a registered architecture."""
    from attnprobe.models.registry import adapter_for

    return len({ref.stage for ref in adapter_for(model).blocks(model)})


def intervention_plan(model: nn.Module, names: Sequence[str] | None = None, *,
                      key_kind: Any = "all") -> list[Intervention]:
    """The interventions of standard names (default: none, every mask-stage, mask-all, mean-ablate).

    ``key_kind``: the padding keys the masks hide (``"input"``, ``"window"`` or ``"all"``).
    """
    from attnprobe.train.ablation import intervention_from_name, standard_interventions

    stages = n_stages(model)
    chosen = list(names) if names is not None else standard_interventions(stages)
    return [intervention_from_name(n, n_stages=stages, key_kind=key_kind) for n in chosen]


def describe(iv: Intervention) -> list[dict[str, Any]]:
    """What an intervention edits, for ``summary.json``."""
    from attnprobe.capture.edits import ReplaceTokens

    # only token replacements (site "out") carry a value
    return [{"site": e.site, "blocks": e.blocks, "kind": e.kind,
             **({"value": e.value} if isinstance(e, ReplaceTokens) else {})} for e in iv.edits]


@dataclass
class Ablation:
    """Outcome of :func:`run_interventions`.

    Attributes
    ----------
    plan
        The interventions run, in order.
    result
        Tidy per-case table and block-level flow (:class:`~attnprobe.train.ablation.AblationResult`).
    summary
        Per intervention and padding: summary with bootstrap intervals and the paired change against ``none``.
    """

    plan: list[Intervention]
    result: AblationResult
    summary: pd.DataFrame


def run_interventions(
    model: nn.Module,
    cases: Iterable[Any],
    plan: Sequence[Intervention],
    spec: SweepSpec,
    *,
    device: str | torch.device = "cpu",
    metric_options: Mapping[str, Any] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    on_step: Callable[[str, int, str], None] | None = None,
) -> Ablation:
    """Run every intervention on every case at every padding of ``spec`` and summarise.

    Parameters
    ----------
    model
        A segmentation model of a registered architecture.
    cases
        Labelled cases prepared at the model ROI (consumed lazily).
    plan
        From :func:`intervention_plan`.
    spec
        The padding sweep.
    device
        Where the forwards run.
    metric_options
        Keywords of :func:`attnprobe.train.evaluate.evaluate_case` (scope, detection, surface).
    n_resamples, seed
        Bootstrap of the summary's 95 % intervals.
    on_step
        Called with ``(case, padding, intervention)`` after each forward.
    """
    from attnprobe.train.ablation import ablation_summary, run_ablation

    result = run_ablation(model, cases, list(plan), spec, device=device, metric_options=metric_options,
                          on_step=on_step)
    summary = ablation_summary(result, n_resamples=n_resamples, seed=seed)
    return Ablation(plan=list(plan), result=result, summary=summary)


def ablation_run(ablation: Ablation, *, info: Mapping[str, Any], label: str | None = None,
                 manifest: Manifest | None = None) -> AblationRun:
    """The run record of an ablation (``info``: the run's options, written to ``summary.json``)."""
    return AblationRun(table=ablation.result.table, adi=ablation.result.adi, summary=ablation.summary,
                       info=dict(info), manifest=manifest, label=label)
