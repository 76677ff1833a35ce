"""Sinks that turn tap values into per-sample arrays for a writer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import torch

from attnprobe.capture.probe import ForwardContext
from attnprobe.models.adapter import TapSpec


class SampleWriter(Protocol):
    """Anything that stores one finished sample (e.g. :class:`attnprobe.store.StoreWriter`);
    it gets CPU tensors instead of arrays only when it sets ``casts_tensors``."""

    def submit(self, sample: int, arrays: Mapping[str, Mapping[str, np.ndarray | torch.Tensor]]) -> None: ...


class SampleCollector:
    """Collect a forward's tap values and hand them to a writer sample by sample.

    The forward's ``tag`` (see :meth:`Probe.run`) must be the store sample index of each
    batch row. Values are moved to the CPU and cast once per tap, so at most one batch of
    maps is held here; the writer's bounded queue limits what waits for the disk.
    """

    def __init__(self, writer: SampleWriter, *, dtype: str = "float16") -> None:
        self.writer = writer
        self.dtype = np.dtype(dtype)
        self._batch: dict[str, dict[str, np.ndarray | torch.Tensor]] = {}

    def on_tap(self, tap: TapSpec, value: torch.Tensor, ctx: ForwardContext) -> None:
        block = tap.block.name
        arrays = self._batch.setdefault(block, {})
        if value.device.type == "cpu" and getattr(self.writer, "casts_tensors", False):
            # the writer thread casts: the forward does not wait for a pass over the maps
            arrays[tap.kind] = value.detach()
        else:
            # cast on the device first: a GPU sends half the bytes for float16 stores
            arrays[tap.kind] = value.to(dtype=getattr(torch, self.dtype.name)).to("cpu").numpy()
        if tap.kind == "attn":
            arrays["attn_kind"] = ctx.kinds[block].cpu().numpy()

    def on_forward_end(self, ctx: ForwardContext) -> None:
        samples: Sequence[int] = ctx.tag if ctx.tag is not None else range(ctx.batch)  # type: ignore[assignment]
        batch, self._batch = self._batch, {}
        for row, sample in enumerate(samples):
            self.writer.submit(int(sample), {b: {k: v[row] for k, v in arrs.items()} for b, arrs in batch.items()})
