"""The workspace file attnprobe.toml: names for models and datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attnprobe.errors import CheckpointError, ConfigError, DataError
from attnprobe.workspace import (
    DatasetRef,
    ModelRef,
    Workspace,
    find_workspace,
    load_workspace,
    resolve_data,
    resolve_model,
)
from tests.helpers import assert_message

TOML = """
[models.ct]
arch = "swin_unetr"
checkpoint = "checkpoints/ct.pt"
roi = [96, 96, 96]

[models.mri]
checkpoint = "checkpoints/mri.pt"

[datasets.rectal]
path = "data/rectal.json"
split = "test"

[datasets.folder]
path = "data/nifti"
"""


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "checkpoints").mkdir(parents=True)
    (root / "checkpoints" / "ct.pt").write_bytes(b"")
    (root / "checkpoints" / "mri.pt").write_bytes(b"")
    (root / "data" / "nifti").mkdir(parents=True)
    (root / "data" / "rectal.json").write_text('{"training": []}')
    (root / "sub" / "deeper").mkdir(parents=True)
    path = root / "attnprobe.toml"
    path.write_text(TOML)
    return path


def test_find_workspace_walks_up(ws: Path, tmp_path: Path, monkeypatch) -> None:
    deeper = ws.parent / "sub" / "deeper"
    assert find_workspace(deeper) == ws
    assert find_workspace(ws) == ws  # a file means its folder
    monkeypatch.chdir(deeper)
    assert find_workspace() == ws
    assert find_workspace(tmp_path) is None


def test_names_resolve_relative_to_the_file(ws: Path, monkeypatch) -> None:
    monkeypatch.chdir(ws.parent / "sub" / "deeper")  # not the file's folder
    root = ws.parent
    assert resolve_model("ct") == ModelRef("ct", "swin_unetr", root / "checkpoints" / "ct.pt", (96, 96, 96))
    assert resolve_model("mri") == ModelRef("mri", None, root / "checkpoints" / "mri.pt", None)
    assert resolve_data("rectal") == DatasetRef("rectal", root / "data" / "rectal.json", "test")
    assert resolve_data("folder").split == "all"


def test_explicit_workspace_argument(ws: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no workspace above tmp_path
    loaded = load_workspace(ws)
    assert isinstance(loaded, Workspace) and loaded.root == ws.parent
    assert sorted(loaded.models) == ["ct", "mri"] and sorted(loaded.datasets) == ["folder", "rectal"]
    with pytest.raises(TypeError):
        loaded.models["x"] = loaded.models["ct"]  # type: ignore[index]  # read-only
    assert resolve_model("ct", workspace=loaded).arch == "swin_unetr"
    assert resolve_model("ct", workspace=str(ws)).roi == (96, 96, 96)


def test_paths_work_where_names_do(ws: Path, tmp_path: Path, monkeypatch) -> None:
    ckpt = tmp_path / "other.pt"
    ckpt.write_bytes(b"")
    store = tmp_path / "run.zarr"
    store.mkdir()
    monkeypatch.chdir(tmp_path)
    assert resolve_model("other.pt", workspace=ws) == ModelRef("other", None, ckpt, None)
    assert resolve_model(store, workspace=ws).checkpoint == store
    data = resolve_data(ws.parent / "data" / "nifti", workspace=ws)
    assert data == DatasetRef("nifti", ws.parent / "data" / "nifti", "all")
    assert os.fspath(data) == str(ws.parent / "data" / "nifti")  # path-like, for list_cases


def test_name_wins_over_same_named_path(ws: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ct").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("ct", workspace=ws).checkpoint == ws.parent / "checkpoints" / "ct.pt"


def test_unknown_name_lists_known_ones(ws: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_model("pet", workspace=ws)
    assert_message(err, "'pet'", "known: ct, mri", "path")
    with pytest.raises(ConfigError) as err:
        resolve_data("prostate", workspace=ws)
    assert_message(err, "'prostate'", "known: folder, rectal", "path")


def test_unknown_name_without_workspace(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        resolve_model("ct")
    assert_message(err, "attnprobe.toml", "none found", "path")


def test_declared_but_missing_files(ws: Path) -> None:
    (ws.parent / "checkpoints" / "mri.pt").unlink()
    with pytest.raises(CheckpointError) as err:
        resolve_model("mri", workspace=ws)
    assert_message(err, "checkpoints/mri.pt")
    (ws.parent / "data" / "rectal.json").unlink()
    with pytest.raises(DataError) as err:
        resolve_data("rectal", workspace=ws)
    assert_message(err, "data/rectal.json")


@pytest.mark.parametrize(
    "text, needles",
    [
        ("[model.ct]\ncheckpoint = 'a.pt'\n", ("model",)),
        ("[models.ct]\ncheckpoint = 'a.pt'\nroi_size = [96, 96, 96]\n", ("roi_size",)),
        ("[models.ct]\narch = 'swin_unetr'\n", ("checkpoint",)),
        ("[models.ct]\ncheckpoint = 'a.pt'\nroi = [96, 96, 100]\n", ("axis z is 100", "96 or 128")),
        ("[models.ct]\ncheckpoint = 'a.pt'\nroi = [96, 96]\n", ("three integer sizes",)),
        ("[models.ct]\ncheckpoint = 3\n", ("non-empty string",)),
        ("[datasets.d]\npath = 'x'\nsplit = 'train'\n", ("'train'", "'training'")),
        ("[datasets.d]\nsplit = 'test'\n", ("path",)),
        ("models = 3\n", ("[models.NAME]",)),
        ("[models.ct\n", ("TOML",)),
    ],
)
def test_bad_workspace_files(tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    path = tmp_path / "attnprobe.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_workspace(path)
    assert_message(err, *needles)


def test_missing_workspace_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_workspace(tmp_path / "attnprobe.toml")
    assert_message(err, "attnprobe.toml")


def test_dataset_ref_feeds_list_cases(ws: Path) -> None:
    import nibabel as nib
    import numpy as np

    from attnprobe.data.io import list_cases

    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), dtype=np.float32), np.eye(4)),
             ws.parent / "data" / "nifti" / "a.nii.gz")
    ref = resolve_data("folder", workspace=ws)
    assert [c.case_id for c in list_cases(ref, split=ref.split)] == ["a"]
