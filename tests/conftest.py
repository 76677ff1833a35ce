"""Shared fixtures: tiny models (feature 12) and small inputs keep the suite fast."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for fixtures/ and examples/

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture
def tiny_swin():
    from attnprobe.models import build_model

    torch.manual_seed(0)
    return build_model("swin_unetr", preset="tiny").eval()
