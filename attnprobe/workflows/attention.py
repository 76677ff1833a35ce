"""One block's attention mapped onto the voxels of one swept input (the attention-on-anatomy figure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["attention_volume"]


def attention_volume(model: nn.Module, case: Any, *, padding: int, block: str = "stage0.block0") -> dict[str, Any]:
    """One block's attention, mapped onto the voxels of one swept input.

    The input is the case with ``padding`` voxels of its axial extent replaced by padding (the
    sweep's fixed-ROI input); the map is the attention every key token receives, averaged over
    the real queries of its window and the heads
    (:func:`attnprobe.metrics.attention_map.received_attention`), spread over each token's voxels.

    Returns
    -------
    dict
        ``image``, ``attention`` (float32 ``(x, y, z)``), ``padding_mask`` (bool, True on
        padding), ``spacing`` (mm), ``slices`` (voxel ``(x, y, z)`` through the tumor centre,
        else the centre of the real voxels), ``case``, ``block``, ``padding``, ``pad_fraction``.
    """
    from attnprobe.capture.probe import Probe
    from attnprobe.metrics.attention_map import received_attention, to_voxels
    from attnprobe.metrics.sweep import SweepSpec, swept_input
    from attnprobe.models.registry import adapter_for

    item = swept_input(case, int(padding), SweepSpec(paddings=(int(padding),)))
    model = model.eval()
    tap = f"{block}.attn"
    with torch.no_grad(), Probe(model, [tap]) as probe:
        probe.run(item.image[None], mask=item.mask[None])
        probs = probe.cache[tap][0]
        context = probe.context
        if context is None:  # run() sets it
            raise RuntimeError("internal: the probe saw no forward")
        kinds = context.kinds[block][0]
        geom = context.geometry[block]
    tokens = received_attention(probs, kinds, geom, adapter_for(model))
    spatial = tuple(int(s) for s in item.image.shape[1:])
    voxels = to_voxels(tokens, spatial)  # type: ignore[arg-type]
    return {"image": item.image[0].numpy().astype(np.float32), "attention": voxels.cpu().numpy().astype(np.float32),
            "padding_mask": ~item.mask[0].numpy().astype(bool), "spacing": np.asarray(case.spacing, dtype=float),
            "slices": _centre_slices(case, padding=int(padding), real=item.mask[0]),
            "case": str(case.case_id), "block": block, "padding": int(padding),
            "pad_fraction": float(item.pad_fraction)}


@dataclass(frozen=True)
class _LabelAsImage:
    """A case whose image is its label: the sweep places it exactly as it places the image."""

    case_id: str
    image: torch.Tensor
    mask: torch.Tensor
    label: torch.Tensor


def _centre_slices(case: Any, *, padding: int, real: torch.Tensor) -> np.ndarray:
    from attnprobe.metrics.sweep import SweepSpec, swept_input

    target = real.bool()
    label = getattr(case, "label", None)
    if label is not None and bool((label > 0).any()):
        placed = swept_input(_LabelAsImage(case.case_id, label.float(), case.mask, label), padding,
                             SweepSpec(paddings=(padding,))).image[0] > 0
        if bool(placed.any()):
            target = placed
    idx = torch.nonzero(target).float()
    if idx.numel() == 0:
        return np.asarray([s // 2 for s in real.shape], dtype=np.int64)
    return idx.mean(dim=0).round().to(torch.int64).numpy()
