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
from attnprobe.store.schema import SCHEMA_VERSION  # noqa: E402

__all__ = ["AttnprobeError", "open_store", "__version__", "SCHEMA_VERSION"]


def open_store(path, **kwargs):
    """Open a capture store; see :func:`attnprobe.store.open_store`."""
    from attnprobe.store import open_store as _open

    return _open(path, **kwargs)
