"""Imports flow one way: no module of attnprobe imports a module of a higher layer.

The layers, lowest first, are written once here and in docs/architecture.md. A module may
import its own layer and every layer below. Every import counts: module level, inside
functions, and under ``if TYPE_CHECKING`` (a type-only import still couples the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnprobe"

# Lowest first. Names are subpackages or top-level modules of attnprobe.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "tokens", "dist", "environment"),
    ("data", "workspace"),
    ("models",),
    ("capture",),
    ("store",),
    ("metrics",),
    ("train",),
    ("results",),
    ("workflows",),
    ("figures",),
    ("demo", "cli", "__init__", "__main__"),
)
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """``attnprobe.metrics.flow`` -> ``metrics``; the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """``(line, module)`` of every attnprobe import in a file, at any depth of the syntax tree."""
    me = _module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "attnprobe":  # from attnprobe import dist -> attnprobe.dist
                found += [(node.lineno, f"attnprobe.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, m) for line, m in found if m == "attnprobe" or m.startswith("attnprobe.")]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    units = {_unit(_module_name(p)) for p in _modules()}
    missing = sorted(units - set(RANK))
    assert not missing, f"add {missing} to LAYERS here and in docs/architecture.md"


def _upward(path: Path, root: Path = PACKAGE) -> list[str]:
    me = _unit(_module_name(path, root))
    bad = []
    for line, target in _imports(path, root):
        unit = _unit(target)
        if target == "attnprobe" or unit not in RANK:
            continue  # the package root (its __version__) or a name that is not a module
        if RANK[unit] > RANK[me]:
            bad.append(f"{path.relative_to(root.parent)}:{line} ({me}) imports {target} ({unit})")
    return bad


def test_no_upward_import():
    bad = [entry for path in _modules() for entry in _upward(path)]
    assert not bad, "upward imports (move the code up, see docs/architecture.md):\n" + "\n".join(bad)


@pytest.mark.parametrize("source, expected, upward", [
    ("from attnprobe.train.presets import pretrained_roi\n", ["attnprobe.train.presets"], True),
    ("def f():\n    import attnprobe.capture.probe\n", ["attnprobe.capture.probe"], True),
    ("from attnprobe import errors, tokens\n", ["attnprobe.errors", "attnprobe.tokens"], False),
    ("from attnprobe import dist, figures\n", ["attnprobe.dist", "attnprobe.figures"], True),
    ("from . import preprocess\nfrom ..models import registry\n", ["attnprobe.data", "attnprobe.models"], True),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from attnprobe.cli import app\n",
     ["attnprobe.cli"], True),
    ("import numpy\nfrom attnprobe.data.io import CaseRef\n", ["attnprobe.data.io"], False),
])
def test_import_parser_sees_every_form(tmp_path, source, expected, upward):
    # a module attnprobe/data/probe_me.py of a copy of the package in tmp_path
    fake = tmp_path / "attnprobe" / "data" / "probe_me.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    root = tmp_path / "attnprobe"
    assert [m for _, m in _imports(fake, root)] == expected
    assert bool(_upward(fake, root)) is upward
