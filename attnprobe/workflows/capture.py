"""Capture to a store: the cases of a dataset, or the inputs of a padding sweep (docs/store.md).

- :func:`capture_cases`: what ``attnprobe capture`` runs once the model is loaded: prepared cases
  of one ROI, their preprocessing and data source recorded in the store's attributes (part of
  the fingerprint a resumed capture must match).
- :func:`capture_swept`: the fixed-ROI sweep inputs of one padding amount, with each input crop,
  mask, label and spacing, so offline metrics and figures read exactly what the online sweep saw.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from attnprobe.data.preprocess import PreprocessConfig

__all__ = ["config_dict", "data_source", "capture_cases", "capture_swept"]


def config_dict(config: PreprocessConfig) -> dict[str, Any]:
    """A preprocessing config as JSON-friendly store attributes (tuples as lists)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}


def data_source(data: str | os.PathLike[str]) -> str:
    """A data source as recorded in a store's fingerprint: an absolute path, or the dataset name."""
    path = Path(data).expanduser()
    return str(path.resolve()) if path.exists() else str(data)


def capture_cases(model: nn.Module, cases: Sequence[Any], out: str | os.PathLike[str], *,
                  config: PreprocessConfig, data: str | os.PathLike[str], taps: Sequence[str] | None = None,
                  dtype: str = "float16", device: Any = "cpu", overwrite: bool = False,
                  on_case: Callable[[str, bool], None] | None = None) -> Path:
    """Capture ``taps`` of every case into a Zarr store; an existing store of the same capture resumes.

    Parameters
    ----------
    model
        Loaded model of a registered architecture.
    cases
        Cases prepared with ``config`` (e.g. :func:`attnprobe.workflows.cases.lazy_cases`); under
        torchrun each rank captures its share.
    out
        Store path.
    config
        Their preprocessing; its ROI must be fixed (not ``"full"``).
    data
        Where the cases come from (recorded as :func:`data_source`).
    taps
        Glob patterns over tap names; None or empty means every tap.
    dtype, device, overwrite
        As in :func:`attnprobe.store.capture_to_store`.
    on_case
        Called with ``(case id, skipped)`` after each case (``skipped``: captured before).

    Returns
    -------
    Path
        The store.
    """
    from attnprobe.store import capture_to_store

    attrs = {"preprocessing": config_dict(config), "padding": {"mode": config.pad_mode}, "data": data_source(data)}
    return capture_to_store(model, cases, out, taps=list(taps or ()) or ["*"], dtype=dtype,  # type: ignore[arg-type]
                            device=device, overwrite=overwrite, on_sample=on_case,
                            roi=config.roi,  # type: ignore[arg-type]
                            attrs=attrs)


def capture_swept(model: nn.Module, cases: Sequence[Any], out: str | os.PathLike[str], *, padding: int = 0,
                  taps: Sequence[str] = ("stage3.*", "*.out"), dtype: str = "float32",
                  attrs: Mapping[str, Any] | None = None,
                  on_case: Callable[[str], None] | None = None) -> Path:
    """Capture taps of the sweep's inputs at ``padding`` voxels into a Zarr store (``dtype``).

    Each case becomes the fixed-ROI sweep input of that amount (so the store holds exactly
    what the online sweep saw); the amount is written to the store's ``padding`` attribute,
    where offline metrics read it back. The store keeps each input crop, its real-voxel mask,
    label and spacing (docs/store.md), so attention can be drawn on the anatomy from the store
    alone. ``attrs`` are added to the store's root attributes; ``on_case`` is called with each
    case id after its forward. An existing store is replaced.
    """
    from attnprobe.metrics.sweep import SweepSpec, swept_input
    from attnprobe.store import capture_to_store

    spec = SweepSpec(paddings=(int(padding),))
    inputs = [swept_input(case, int(padding), spec) for case in cases]
    roi = tuple(int(s) for s in inputs[0].image.shape[1:])
    spacing = {case.case_id: [float(v) for v in getattr(case, "spacing", (1.0, 1.0, 1.0))] for case in cases}
    store_attrs = {**dict(attrs or {}),
                   "padding": {"mode": "sweep", "amount": int(padding), "axis": spec.axis, "pad_mode": spec.pad_mode}}
    return capture_to_store(model, inputs, out, taps=list(taps), dtype=dtype, overwrite=True, roi=roi,  # type: ignore[arg-type]
                            attrs=store_attrs, keep_inputs=True, spacing=[spacing[i.case_id] for i in inputs],
                            on_sample=None if on_case is None else (lambda case_id, _skipped: on_case(case_id)))
