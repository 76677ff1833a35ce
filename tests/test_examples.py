"""Every example runs (they are documentation that must not rot)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_capture_and_open(tmp_path):
    store = load("capture_and_open").main(tmp_path)
    assert store.exists()


def test_custom_adapter():
    adi = load("custom_adapter").main()
    assert 0.0 < adi < 1.0


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_is_covered(name):
    assert f'load("{name}")' in Path(__file__).read_text(), f"examples/{name}.py has no test"
