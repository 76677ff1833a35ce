"""Versions of the software a result was computed with (one helper for stores, runs, checkpoints)."""

from __future__ import annotations

import platform


def versions() -> dict[str, str]:
    """``{"attnprobe", "torch", "monai", "python"}`` version strings of this process.

    Stores keep them as ``<name>_version`` root attributes, run folders in ``manifest.json``
    (docs/results.md), training checkpoints under ``versions``.
    """
    import monai
    import torch

    import attnprobe

    return {"attnprobe": str(attnprobe.__version__), "torch": str(torch.__version__),
            "monai": str(monai.__version__), "python": platform.python_version()}
