"""Shared fixtures: tiny models (feature 12) and small inputs keep the suite fast."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for fixtures/ and examples/

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

from attnprobe.models import build_model  # noqa: E402
from attnprobe.models.checkpoints import save_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the rest of the test module (use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``); the old count is restored after it.

    Two shared cores: small GEMMs under a busy OpenMP pool are 100x slower than on one thread.
    Module scope, so that Hypothesis tests may use it (no function-scoped fixture health check).
    """
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def smit():
    """A tiny SMIT in eval mode (seed 0), one per test module."""
    torch.manual_seed(0)
    return build_model("smit", preset="tiny").eval()


@pytest.fixture(scope="module")
def tiny_swin():
    """A tiny Swin UNETR in eval mode (seed 0), one per test module."""
    torch.manual_seed(0)
    return build_model("swin_unetr", preset="tiny").eval()


def write_volume(path, shape, seed, *, spacing=(1.5, 1.5, 2.0)):
    rng = np.random.default_rng(seed)
    data = rng.normal(100, 20, size=shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    label = np.zeros(shape, dtype=np.uint8)
    c = [s // 2 for s in shape]
    label[c[0] - 3:c[0] + 3, c[1] - 3:c[1] + 3, c[2] - 2:c[2] + 2] = 1
    label_path = path.with_name(path.name.replace(".nii.gz", "_label.nii.gz"))
    nib.save(nib.Nifti1Image(label, np.diag([*spacing, 1.0])), str(label_path))
    return path, label_path


@pytest.fixture(scope="session")
def datalist(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    entries = []
    for i, shape in enumerate([(36, 36, 12), (40, 32, 16), (32, 40, 10)]):
        image, label = write_volume(root / f"case{i}.nii.gz", shape, i)
        entries.append({"image": image.name, "label": label.name, "case": f"case{i}"})
    path = root / "datalist.json"
    path.write_text(json.dumps({"training": entries[:2], "test": entries[2:]}))
    return path


@pytest.fixture(scope="session")
def swin_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model("swin_unetr", preset="tiny"), tmp_path_factory.mktemp("ck") / "swin.pt")


@pytest.fixture(scope="session")
def smit_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    return save_checkpoint(build_model("smit", preset="tiny"), tmp_path_factory.mktemp("ck") / "smit.pt")
