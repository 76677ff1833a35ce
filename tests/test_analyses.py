"""Every script in ``analyses/`` runs on a workspace and uses only attnprobe's public API.

The workspace is small: 6 phantom cases at 2 mm and two randomly initialised tiny SMIT
checkpoints (the fastest backbone on a CPU), declared in an ``attnprobe.toml`` as a user would.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
import torch

from attnprobe.demo.pipeline import make_phantoms, write_workspace
from attnprobe.models import build_model
from attnprobe.models.checkpoints import save_checkpoint

matplotlib.use("Agg")

ANALYSES = Path(__file__).resolve().parents[1] / "analyses"
SCRIPTS = sorted(p.stem for p in ANALYSES.glob("*.py") if not p.stem.startswith("_"))


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"analysis_{name}", ANALYSES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    datalist = make_phantoms(root / "data", n=6, seed=3, spacing_mm=2.0, split=(0.0, 0.0, 1.0),
                             axial_range_mm=(40.0, 60.0), modalities=("mri",))["mri"]
    models = {}
    for seed, name in ((0, "pre"), (1, "tuned")):
        torch.manual_seed(seed)
        path = save_checkpoint(build_model("smit", preset="tiny"), root / f"{name}.pt")
        models[name] = {"arch": "smit", "checkpoint": path, "roi": [64, 64, 32]}
    return write_workspace(root / "attnprobe.toml", models=models,
                           datasets={"mri": {"path": datalist, "split": "test"}})


def run(name: str, workspace: Path, out: Path, *args: str) -> dict[str, Path]:
    written = load(name).main(["--workspace", str(workspace), "--out", str(out), "--spacing", "2", *args])
    for key, path in written.items():
        assert path.exists(), (name, key)
        if path.suffix == ".png":
            caption = path.with_suffix(".txt").read_text()
            assert caption.count("\n") == 1 and len(caption) > 30
    return written


def test_padding_sweep(workspace, tmp_path):
    written = run("padding_sweep", workspace, tmp_path, "--model", "pre", "--data", "mri", "--paddings", "0,16",
                  "--limit", "3", "--longest", "2")
    summary = pd.read_csv(written["summary"])
    # a_pr/a_pp have no value (NaN, not counted) where a block sees no padding query
    assert set(summary["padding"]) == {0, 16} and set(summary.query("metric == 'adi'")["n"]) == {2}


def test_attention_flow(workspace, tmp_path):
    written = run("attention_flow", workspace, tmp_path, "--model", "pre", "--data", "mri", "--padding", "16",
                  "--limit", "2")
    assert {"flow", "attention"} <= set(written)


def test_feature_reuse(workspace, tmp_path):
    written = run("feature_reuse", workspace, tmp_path, "--ref", "pre", "--tgt", "tuned", "--data", "mri",
                  "--crops", "2", "--limit", "2", "--roi", "64,64,32")
    table = pd.read_csv(written["table"])
    assert list(table["tgt"]) == ["tuned"] and {"stage0", "stage3"} <= set(table.columns)
    assert (tmp_path / "tuned" / "cka.nc").is_file()


def test_interventions(workspace, tmp_path):
    written = run("interventions", workspace, tmp_path, "--model", "pre", "--model", "tuned", "--data", "mri",
                  "--limit", "2")
    table = pd.read_csv(written["table"])
    assert list(table["model"]) == ["pre", "tuned"] and set(table["n_cases"]) == {2}


def test_tumor_clusters(workspace, tmp_path):
    written = run("tumor_clusters", workspace, tmp_path, "--data", "mri", "--k-max", "3")
    wide = pd.read_csv(written["table"])
    assert len(wide) == 6 and "cluster" in wide.columns


def test_token_efficiency(workspace, tmp_path):
    written = run("token_efficiency", workspace, tmp_path, "--data", "mri", "--arch", "smit", "--model-preset",
                  "tiny", "--limit", "3")
    eff = pd.read_csv(written["efficiency"])
    assert set(eff["candidate"]) == {"64x64x64", "64x64x32"}


def test_every_script_is_tested():
    source = Path(__file__).read_text()
    for name in SCRIPTS:
        assert f'run("{name}"' in source, f"analyses/{name}.py has no test"


@pytest.mark.parametrize("name", [*SCRIPTS, "_common"])
def test_scripts_use_only_public_api(name):
    """Every ``from attnprobe... import x`` names something the module exports (``__all__`` or no underscore)."""
    tree = ast.parse((ANALYSES / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnprobe"):
            module = importlib.import_module(node.module)
            exported = getattr(module, "__all__", None)
            for alias in node.names:
                assert not alias.name.startswith("_"), (name, node.module, alias.name)
                if exported is not None:
                    assert alias.name in exported, (name, node.module, alias.name)
