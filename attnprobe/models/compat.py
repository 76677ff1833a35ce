"""Which semantics a model computes: the code that trained a checkpoint (``original``) or today's (``current``).

Published checkpoints were trained by code that differs from what attnprobe builds by
default (see ``docs/compat.md``):

- Swin UNETR: MONAI < 1.5 merged 2x2x2 tokens in an order that reads two sub-voxels twice
  and two never; installed MONAI (>= 1.5) reads all eight.
- SMIT: the original code merges windows back with a permutation that is not the inverse of
  its partition, never shrinks a window or drops the shift on small grids, and pads the first
  and last axis by each other's amounts.

``original`` reproduces the training code exactly (quirks included); ``current`` is installed
MONAI for Swin UNETR and a true inverse window merge with MONAI's window rules for SMIT. The
choice is stored in the model config (``config["compat"]``), in every checkpoint attnprobe
saves and in every store and result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from torch import nn

from attnprobe.errors import ConfigError

Compat = Literal["original", "current"]

COMPAT_MODES: tuple[Compat, ...] = ("original", "current")

#: what a model built without a checkpoint computes
BUILD_DEFAULT: Compat = "current"

#: what a checkpoint that attnprobe did not write is computed as, unless told otherwise
FOREIGN_DEFAULT: Compat = "original"


def check_compat(value: object) -> Compat:
    """Return ``value`` as a compat mode or raise a :class:`ConfigError` naming the choices."""
    if value not in COMPAT_MODES:
        raise ConfigError(
            "unknown compat mode", expected=f"one of {list(COMPAT_MODES)}", got=repr(value),
            fix="use 'original' for checkpoints trained by the published code, 'current' for models "
            "trained with installed MONAI or attnprobe",
        )
    return value


def compat_of(model: nn.Module) -> Compat:
    """The compat mode a model built by attnprobe computes."""
    return cast(Compat, getattr(model, "attnprobe_config", {}).get("compat", BUILD_DEFAULT))


@dataclass(frozen=True)
class CompatChoice:
    """The mode a checkpoint is computed in, and why.

    ``notice`` is set when the mode was a default the user may want to change.
    """

    mode: Compat
    reason: str
    notice: str | None = None


def choose_compat(raw: Mapping[str, Any], meta: Mapping[str, Any], requested: str | None) -> CompatChoice:
    """Pick the compat mode of a checkpoint.

    Order: what the caller asks for; what attnprobe recorded in the checkpoint (its metadata,
    or the ``info`` of a checkpoint an attnprobe function made); ``current`` for attnprobe
    checkpoints saved before the mode was recorded (attnprobe always computed ``current``);
    else ``original`` with a notice.
    """
    if requested is not None:
        return CompatChoice(check_compat(requested), "requested")
    config = c if isinstance(c := meta.get("config"), Mapping) else {}
    if meta:
        recorded = config.get("compat", meta.get("compat"))
        if recorded is not None:
            return CompatChoice(check_compat(recorded), "recorded in the checkpoint")
        return CompatChoice("current", "saved by attnprobe before compat was recorded (it computed 'current')")
    info = i if isinstance(i := raw.get("info"), Mapping) else {}
    if str(info.get("made_by", "")).startswith("attnprobe."):
        recorded = info.get("compat")
        if recorded is not None:
            return CompatChoice(check_compat(recorded), "recorded in the checkpoint")
        return CompatChoice("current", f"made by {info['made_by']} (attnprobe computes 'current')")
    return CompatChoice(
        FOREIGN_DEFAULT, "checkpoint not written by attnprobe: computed as its training code did",
        notice="computing this checkpoint with compat='original' (the published training code's semantics); "
        "if it was trained with MONAI >= 1.5 or attnprobe, pass --compat current (compat='current' in Python)",
    )
