"""Backbones, their adapters (one per architecture) and checkpoint loading."""

from attnprobe.models import smit_adapter as _smit_adapter  # noqa: F401  (registers the adapter)
from attnprobe.models import swin_unetr as _swin_unetr  # noqa: F401  (registers the adapter)
from attnprobe.models.adapter import ATTN_DIMS, KIND_DIMS, OUT_DIMS, Adapter, BlockGeometry, BlockRef, TapSpec
from attnprobe.models.checkpoints import CompatNotice, LoadReport, load_checkpoint, read_checkpoint
from attnprobe.models.compat import COMPAT_MODES, Compat, compat_of
from attnprobe.models.registry import (
    ARCH_LABELS,
    adapter_for,
    available_architectures,
    build_model,
    get_adapter,
    model_config,
    register_adapter,
    resolve_config,
)

__all__ = [
    "ATTN_DIMS", "KIND_DIMS", "OUT_DIMS", "Adapter", "BlockGeometry", "BlockRef", "TapSpec",
    "LoadReport", "load_checkpoint", "read_checkpoint", "adapter_for", "available_architectures",
    "build_model", "get_adapter", "model_config", "register_adapter", "resolve_config", "ARCH_LABELS",
    "COMPAT_MODES", "Compat", "CompatNotice", "compat_of",
]
