"""Training and evaluation: trainer presets (docs/conventions.md), the trainer, sliding-window inference.

Detection / Dice / HD95 evaluation lives in :mod:`attnprobe.train.evaluate`. The names below are
loaded on first use, so ``import attnprobe.train.evaluate`` does not pull in torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "presets": ("TRAIN_PRESETS", "TrainConfig", "TrainPreset", "anisotropic_roi", "get_preset", "pretrained_roi",
                "resolve_train_config"),
    "trainer": ("EpochInfo", "StepInfo", "TrainResult", "Trainer", "initial_model", "read_train_metadata", "train"),
    "inference": ("InferenceConfig", "Prediction", "predict_case", "sliding_window_probs", "write_prediction"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
