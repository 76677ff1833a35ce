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
from tests.helpers import run_torchrun_groups  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "torchrun(group): the test reads GROUP's runs from the torchrun_runs fixture")


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


@pytest.fixture(scope="session")
def torchrun_runs(request, tmp_path_factory, swin_ckpt, smit_ckpt, datalist):
    """The distributed tests' runs, made once: every group named by a ``torchrun`` mark of a
    selected test runs on 2 ranks in one shared torchrun launch (one start-up of torch, MONAI and
    attnprobe per rank instead of one per command) and in one process, here, meanwhile.

    A test calls ``torchrun_runs.check(GROUP)``: the group's folder and what its 2-rank runs printed.
    """
    groups = sorted({m.args[0] for item in request.session.items for m in item.iter_markers("torchrun")})
    root = tmp_path_factory.mktemp("torchrun")

    def phantoms():
        from attnprobe.data.phantoms import write_phantom_dataset

        return write_phantom_dataset(root / "phantoms", n=7, seed=0, shape=(48, 48, 24), modalities=("mri",))["mri"]

    return run_torchrun_groups(groups, root, swin=swin_ckpt, smit=smit_ckpt, datalist=datalist, phantoms=phantoms)
