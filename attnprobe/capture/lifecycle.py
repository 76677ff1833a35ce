"""What every hook context manager of attnprobe does on entry and exit (Probe, Intervene).

On entry: the explicit softmax is forced on every attention module that has a flash path, so
hooks on ``...attn.softmax`` see (and may edit) the probabilities. On exit, also after an
exception: every hook handle is removed and every flag restored, last switched first restored.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

Handles = list[torch.utils.hooks.RemovableHandle]
FlashFlags = list[tuple[nn.Module, bool]]


def force_explicit_softmax(modules: Iterable[nn.Module], saved: FlashFlags) -> None:
    """Switch ``use_flash_attention`` off where it exists, recording each old value in ``saved``."""
    for module in modules:
        if hasattr(module, "use_flash_attention"):
            saved.append((module, bool(module.use_flash_attention)))
            module.use_flash_attention = False  # type: ignore[assignment]  # a plain bool attribute


def release(handles: Handles, saved: FlashFlags) -> None:
    """Remove every hook and restore every flash flag; both lists are emptied."""
    try:
        for handle in handles:
            handle.remove()
    finally:
        handles.clear()
        for module, flag in reversed(saved):
            module.use_flash_attention = flag  # type: ignore[assignment]  # a plain bool attribute
        saved.clear()
