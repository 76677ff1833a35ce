"""The probe: hook lifecycle, window geometry, online reducers and the store writer."""

from attnprobe.capture.edits import Intervention, MaskKeys, ReplaceTokens
from attnprobe.capture.geometry import token_kinds
from attnprobe.capture.intervene import Intervene
from attnprobe.capture.probe import ForwardContext, Probe, TapSink, resolve_taps

__all__ = ["ForwardContext", "Intervene", "Intervention", "MaskKeys", "Probe", "ReplaceTokens", "TapSink",
           "resolve_taps", "token_kinds"]
