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


def installed_versions() -> dict[str, str]:
    """``{"attnprobe", "torch", "monai"}`` from package metadata, importing none of them (for
    ``attnprobe --version``, which must answer fast); :func:`versions` is what a result records."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("attnprobe", "torch", "monai"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    if out["attnprobe"] == "not installed":  # running from a source tree
        import attnprobe

        out["attnprobe"] = str(attnprobe.__version__)
    return out
