"""Token kinds shared by geometry, capture, store and metrics.

Every token of every block is one of three kinds (docs/definitions.md): a real token, an input-padding
token (its voxels were added to reach the model ROI), or a window-padding token (added inside
a block to reach a window multiple). Stored as ``uint8``.
"""

from __future__ import annotations

from typing import Literal

REAL = 0
INPUT_PAD = 1
WINDOW_PAD = 2

KIND_NAMES = {REAL: "real", INPUT_PAD: "input", WINDOW_PAD: "window"}

PaddingKind = Literal["input", "window", "all"]
PADDING_KINDS: tuple[PaddingKind, ...] = ("input", "window", "all")
