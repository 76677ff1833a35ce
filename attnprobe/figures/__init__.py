"""Plotting functions: data in, matplotlib Figure out (docs/definitions.md).

Every function takes tidy data (pandas frames, xarray arrays, numpy volumes), draws it in the
attnprobe theme (:func:`paper_style`: seaborn paper context, colour-blind-safe palettes,
constrained layout) and returns the :class:`matplotlib.figure.Figure`; nothing is computed
beyond grouping for display. No backend is selected on import; save with
``fig.savefig("name.png")``.

- ADI and attention flow: :func:`adi_vs_padding`, :func:`flow_matrices`
- attention on the volume: :func:`attention_on_volume`
- CKA: :func:`cka_heatmap`, :func:`feature_reuse_lines`
- interventions: :func:`detection_bars`, :func:`dice_hd95_boxes`, :func:`token_efficiency`,
  :func:`tumor_clusters`
- training: :func:`training_curves`
- causal ablation of padding: :func:`ablation_deltas`
- paper figures (:mod:`attnprobe.figures.paper`): :func:`main_figure`,
  :func:`attention_padding_pair` from :func:`store_attention`, :func:`prediction_overlays`,
  :func:`adi_vs_dice`, :func:`cka_panels`
"""

from __future__ import annotations

from attnprobe.figures.ablation import ablation_deltas
from attnprobe.figures.adi import METRIC_LABELS, adi_vs_padding
from attnprobe.figures.cka import cka_heatmap, feature_reuse_lines
from attnprobe.figures.flow import flow_matrices
from attnprobe.figures.interventions import (
    FEATURE_LABELS,
    detection_bars,
    dice_hd95_boxes,
    token_efficiency,
    tumor_clusters,
)
from attnprobe.figures.paper import (
    adi_vs_dice,
    attention_padding_pair,
    cka_panels,
    main_figure,
    prediction_overlays,
    store_attention,
)
from attnprobe.figures.style import paper_style
from attnprobe.figures.training import training_curves
from attnprobe.figures.volume import attention_on_volume

__all__ = [
    "paper_style",
    "adi_vs_padding",
    "flow_matrices",
    "attention_on_volume",
    "cka_heatmap",
    "feature_reuse_lines",
    "detection_bars",
    "dice_hd95_boxes",
    "token_efficiency",
    "tumor_clusters",
    "training_curves",
    "ablation_deltas",
    "main_figure",
    "store_attention",
    "attention_padding_pair",
    "prediction_overlays",
    "adi_vs_dice",
    "cka_panels",
    "METRIC_LABELS",
    "FEATURE_LABELS",
]
