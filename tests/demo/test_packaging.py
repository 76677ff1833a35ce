"""The wheel carries what an installed attnprobe needs: the demo checkpoints and py.typed."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import attnprobe
from attnprobe.demo.pipeline import PRETRAINED_FILES, find_pretrained, pretrained_dir

REPO = Path(__file__).resolve().parents[2]
PACKAGE = Path(attnprobe.__file__).resolve().parent


def test_pretrained_dir_is_inside_the_package():
    # a wheel install has no source tree around it: the lookup must not leave the package
    folder = pretrained_dir()
    assert folder.is_relative_to(PACKAGE)
    for arch, name in PRETRAINED_FILES.items():
        assert find_pretrained(arch) == folder / name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {manifest[arch]["file"] for arch in PRETRAINED_FILES} == set(PRETRAINED_FILES.values())


@pytest.mark.slow
def test_wheel_ships_checkpoints_and_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("attnprobe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"attnprobe/demo/pretrained/{n}" for n in [*PRETRAINED_FILES.values(), "manifest.json"]}
    assert shipped <= names, sorted(shipped - names)
    assert "attnprobe/py.typed" in names
    # what pretrained_dir() reads, relative to the package, is what the wheel holds
    rel = pretrained_dir().relative_to(PACKAGE.parent).as_posix()
    assert all(name.startswith(rel + "/") for name in shipped)
