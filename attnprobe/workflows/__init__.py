"""Orchestration: steps that combine models, capture, stores and metrics into one analysis.

Modules here may import every lower layer (docs/architecture.md); nothing below imports them.
"""
