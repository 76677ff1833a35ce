"""attnprobe: open up CT-pretrained 3D shifted-window transformers fine-tuned on MRI.

Main entry points
-----------------
- :func:`attnprobe.models.build_model`, :func:`attnprobe.models.load_checkpoint`
- :class:`attnprobe.capture.Probe` (context manager over forward hooks)
- :func:`attnprobe.open_store` (a capture store as an xarray DataTree)
- :mod:`attnprobe.metrics.flow` (attention flow, ADI) and :mod:`attnprobe.metrics.cka`
"""

from __future__ import annotations

from attnprobe.errors import AttnprobeError

__version__ = "0.1.0"

__all__ = ["AttnprobeError", "open_store", "__version__", "SCHEMA_VERSION"]


def __getattr__(name: str):
    # lazy: importing the store pulls in zarr and xarray, which CLI start-up does not need
    if name == "SCHEMA_VERSION":
        from attnprobe.store.schema import SCHEMA_VERSION

        return SCHEMA_VERSION
    raise AttributeError(f"module 'attnprobe' has no attribute {name!r}")


def open_store(path, **kwargs):
    """Open a capture store; see :func:`attnprobe.store.open_store`."""
    from attnprobe.store import open_store as _open

    return _open(path, **kwargs)
