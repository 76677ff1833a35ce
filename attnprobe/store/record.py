"""Capture a model's taps over a set of prepared cases into a Zarr store (resumable)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from attnprobe import dist
from attnprobe.capture.probe import Probe
from attnprobe.capture.sinks import SampleCollector
from attnprobe.environment import versions
from attnprobe.errors import AttnprobeError, ShapeError, StoreError
from attnprobe.models.adapter import as_triple
from attnprobe.models.compat import compat_of
from attnprobe.models.registry import adapter_for
from attnprobe.store.fingerprint import build_fingerprint
from attnprobe.store.inputs import create_sample_arrays, write_sample
from attnprobe.store.schema import StoreDType
from attnprobe.store.writer import StoreWriter


class CaseLike(Protocol):
    """A prepared case: channel-first image and real-voxel mask of the model ROI."""

    @property
    def case_id(self) -> str: ...
    @property
    def image(self) -> torch.Tensor: ...  # (1, x, y, z) float
    @property
    def mask(self) -> torch.Tensor: ...  # (1, x, y, z) bool


def environment_attrs() -> dict[str, Any]:
    """Software versions as store root attributes (``attnprobe_version``, ``torch_version`` ...)."""
    return {f"{name}_version": version for name, version in versions().items()}


def model_attrs(model: nn.Module) -> dict[str, Any]:
    report = getattr(model, "attnprobe_checkpoint", None)
    return {
        "arch": adapter_for(model).name,
        "compat": compat_of(model),
        "model_config": getattr(model, "attnprobe_config", {}),
        "checkpoint": getattr(report, "path", None),
        "checkpoint_sha256": getattr(report, "sha256", None),
    }


def capture_to_store(
    model: nn.Module,
    cases: Sequence[CaseLike],
    out: str | os.PathLike[str],
    *,
    taps: Iterable[str] = ("*",),
    dtype: StoreDType = "float16",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    attrs: Mapping[str, Any] | None = None,
    on_sample: Callable[[str, bool], None] | None = None,
    roi: Sequence[int] | None = None,
    keep_inputs: bool = False,
    spacing: Sequence[Sequence[float]] | None = None,
) -> Path:
    """Run every case through the model and stream the requested taps to a store.

    Parameters
    ----------
    model
        A model of a registered architecture, in eval mode.
    cases
        Prepared cases of one ROI (``image`` and ``mask`` ``(1, x, y, z)``).
    out
        Store path. An existing store of the same capture (same fingerprint: weights, compat,
        input files, preprocessing, ROI, taps, dtype; docs/store.md) is resumed: samples
        marked done are skipped. Another capture there is an error naming what differs,
        unless ``overwrite``.
    taps
        Glob patterns over canonical tap names.
    attrs
        Extra root attributes (``preprocessing``, ``padding``, ``data`` source ...); these
        three are part of the fingerprint.
    on_sample
        Called after each sample with ``(case id, skipped)`` (progress bars).
    roi
        The input size every case has. When given, cases are only touched when processed
        (lazy cases under torchrun prepare just their rank's share); else read from the cases.
    keep_inputs
        Also keep each sample's input crop, real-voxel mask, label, spacing and crop box
        (:mod:`attnprobe.store.inputs`, docs/store.md), so maps can be drawn on the anatomy.
    spacing
        Voxel size (mm) of every case, in case order (default: each case's ``spacing``).

    Returns
    -------
    Path
        The store path.
    """
    if not cases:
        raise ShapeError("nothing to capture", expected="at least one case", got="0 cases")
    spatial = as_triple(tuple(roi) if roi is not None else _common_shape(cases), "roi")
    model = model.to(device).eval()
    with Probe(model, taps, keep=False) as probe:
        geometry = {g.name: g for g in probe.adapter.geometry(model, spatial)}
        blocks: dict[str, tuple[Any, set[str]]] = {}
        for tap in probe.taps:
            blocks.setdefault(tap.block.name, (geometry[tap.block.name], set()))[1].add(tap.kind)
        described = model_attrs(model)
        tap_names = [t.name for t in probe.taps]
        root_attrs = {
            **environment_attrs(), **described, "roi": list(spatial), "taps": tap_names, **(attrs or {}),
        }
        # rank 0 alone hashes weights and input files; the other ranks open what it checked
        fingerprint = build_fingerprint(model, cases, model_attrs=described, roi=spatial, taps=tap_names,
                                        dtype=dtype, attrs=attrs or {}) if dist.is_main() else None
        writer = _open_writer(out, cases, blocks, root_attrs, dtype=dtype, overwrite=overwrite,
                              fingerprint=fingerprint)
        if dist.is_main():
            create_sample_arrays(out, len(cases), spatial, keep_inputs=keep_inputs)  # type: ignore[arg-type]
        dist.barrier()
        try:
            done = writer.done
            probe.sinks.append(SampleCollector(writer, dtype=dtype))
            with torch.no_grad():
                # under torchrun each rank takes its share of samples; chunks are per sample,
                # so ranks write disjoint chunks of the same store without locks
                for index in dist.shard(cases):
                    case = cases[index]
                    if done[index]:
                        if on_sample:
                            on_sample(case.case_id, True)
                        continue
                    if tuple(case.image.shape[-3:]) != spatial:
                        raise ShapeError(f"case {case.case_id} does not have the store's size",
                                         expected=str(spatial), got=str(tuple(case.image.shape[-3:])),
                                         fix="prepare every case with the same fixed --roi")
                    image = case.image[None].to(device=device, dtype=torch.float32)
                    mask = case.mask[None].to(device)
                    # inputs first: the writer thread marks the sample done once its maps are written
                    write_sample(writer.root, index, case, spacing=None if spacing is None else spacing[index])
                    probe.run(image, mask=mask, tag=[index])
                    if on_sample:
                        on_sample(case.case_id, False)
        finally:
            writer.close()
    dist.barrier()
    return Path(out)


def _common_shape(cases: Sequence[CaseLike]) -> tuple[int, ...]:
    shapes = {tuple(c.image.shape[-3:]) for c in cases}
    if len(shapes) != 1:
        raise ShapeError(
            "cases have different sizes, a store needs one ROI",
            expected="every prepared image of the same (x, y, z)", got=str(sorted(shapes)),
            fix="prepare with a fixed --roi instead of 'full'",
        )
    return shapes.pop()


def _open_writer(out, cases, blocks, attrs, *, dtype, overwrite, fingerprint) -> StoreWriter:
    """Rank 0 lays out (or validates) the store first; the other ranks then open it."""
    ids = [c.case_id for c in cases]
    writer, failure = None, None
    if dist.is_main():
        try:
            writer = StoreWriter(out, cases=ids, blocks=blocks, attrs=attrs, dtype=dtype, overwrite=overwrite,
                                 fingerprint=fingerprint)
        except AttnprobeError as exc:
            failure = exc
    failed = dist.broadcast_object(None if failure is None else str(failure))
    if failure is not None:
        raise failure
    if failed is not None:
        raise StoreError(f"rank 0 could not open the store: {failed}")
    if writer is None:
        writer = StoreWriter(out, cases=ids, blocks=blocks, attrs=attrs, dtype=dtype, overwrite=False, lock=False)
    return writer
