"""The probe: hook lifecycle, window geometry, online reducers and the store writer."""

from attnprobe.capture.geometry import token_kinds
from attnprobe.capture.probe import ForwardContext, Probe, TapSink, resolve_taps

__all__ = ["ForwardContext", "Probe", "TapSink", "resolve_taps", "token_kinds"]
