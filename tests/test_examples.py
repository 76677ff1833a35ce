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
    from attnprobe import open_store

    store = load("capture_and_open").main(tmp_path)
    assert store == tmp_path / "phantoms.zarr" and store.exists()
    tree = open_store(store)
    # two phantoms (seeds 0 and 1), both captured
    assert list(tree["case"].values) == ["phantom_s0", "phantom_s1"]
    assert tree["done"].values.tolist() == [True, True]
    # taps "stage0.*" (maps and outputs) and "stage3.*.out" (outputs only); tiny Swin UNETR: 2 blocks a stage
    assert sorted(tree.children) == ["stage0.block0", "stage0.block1", "stage3.block0", "stage3.block1"]
    for name in ("stage0.block0", "stage0.block1"):
        assert set(tree[name].data_vars) == {"attn", "attn_kind", "out"}, name
    for name in ("stage3.block0", "stage3.block1"):
        assert set(tree[name].data_vars) == {"out"}, name
    assert dict(tree["stage0.block1"]["attn"].sizes) == {"sample": 2, "window": 75, "head": 3, "query": 343,
                                                        "key": 343}


def test_custom_adapter():
    adi = load("custom_adapter").main()
    assert 0.0 < adi < 1.0


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_every_example_is_covered(name):
    assert f'load("{name}")' in Path(__file__).read_text(), f"examples/{name}.py has no test"
