"""Run records: round trips, schema checks, legacy folders, manifests, crash safety."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from attnprobe.errors import DataError
from attnprobe.results import (
    MANIFEST_FILE,
    RECORD_FILE,
    AblationRun,
    AdiRun,
    CkaRun,
    EvaluationRun,
    ExtentRun,
    Manifest,
    TrainRun,
    kind_of,
)


def adi_frame() -> pd.DataFrame:
    """A tiny block-level sweep: 2 cases, 2 paddings, 2 stages of one block, one kind."""
    rows = []
    for case in ("c0", "c1"):
        for padding in (0, 16):
            for stage in (0, 1):
                for metric, value in (("adi", 0.1 * stage + padding / 100), ("sfr", 0.9)):
                    rows.append({"case": case, "padding": padding, "pad_fraction": padding / 64, "stage": stage,
                                 "block": 0, "kind": "all", "metric": metric, "value": value,
                                 "n_real_queries": 10, "n_pad_queries": padding})
    return pd.DataFrame(rows)


def cka_matrix():
    import xarray as xr

    blocks = ["stage0.block0", "stage1.block0"]
    return xr.DataArray(np.array([[1.0, 0.4], [0.3, 0.9]]), dims=("ref", "tgt"),
                        coords={"ref": blocks, "tgt": blocks},
                        attrs={"ref": "a", "tgt": "b", "unit": "pooled", "n": 5, "estimator": "biased"})


def test_adi_round_trip_keeps_the_files_users_read(tmp_path):
    frame = adi_frame()
    manifest = Manifest.start("adi", {"out": tmp_path, "heads": "mean"})
    AdiRun(frame=frame, attrs={"roi": [32, 32, 64], "compat": "current"}, label="tiny swin",
           manifest=manifest).save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["adi.csv", "adi.json", "adi.nc", "adi.parquet", MANIFEST_FILE, RECORD_FILE, "summary.csv"]
    assert list(pd.read_csv(tmp_path / "adi.csv").columns) == list(frame.columns)  # same columns as before
    run = AdiRun.load(tmp_path)
    pd.testing.assert_frame_equal(run.frame, frame)
    assert run.label == "tiny swin" and run.attrs["roi"] == [32, 32, 64] and not run.legacy
    assert run.manifest is not None and run.manifest.arguments == {"out": str(tmp_path), "heads": "mean"}
    assert set(run.manifest.versions) == {"attnprobe", "torch", "monai", "python"}
    assert run.manifest.finished >= run.manifest.started
    assert kind_of(tmp_path) == "adi"


def test_other_records_round_trip(tmp_path):
    cka = CkaRun(matrix=cka_matrix())
    cka.save(tmp_path / "cka")
    back = CkaRun.load(tmp_path / "cka")
    np.testing.assert_array_equal(back.matrix.values, cka.matrix.values)
    assert back.ref_label == "a" and back.summary["diagonal_mean"] == pytest.approx(0.95)

    cases = pd.DataFrame({"case": ["001", "002"], "detected": [True, False], "dice": [0.8, np.nan]})
    EvaluationRun(cases=cases, summary={"n_detected": 1, "dice_mean": np.float64(0.8), "hd95_mean": float("nan")},
                  preset="act", backbone="Swin UNETR").save(tmp_path / "eval")
    ev = EvaluationRun.load(tmp_path / "eval")
    assert ev.cases["case"].tolist() == ["001", "002"]  # ids stay text
    assert ev.summary == {"n_detected": 1, "dice_mean": 0.8, "hd95_mean": None}
    assert (ev.preset, ev.backbone) == ("act", "Swin UNETR")

    ExtentRun(extents=pd.DataFrame({"case": ["a"], "z_mm": [80.0]}),
              efficiency=pd.DataFrame({"candidate": ["64x64x32"], "stage": [0], "efficiency_mean": [0.7]}),
              arch="swin_unetr", model_preset="tiny").save(tmp_path / "extent")
    ex = ExtentRun.load(tmp_path / "extent")
    assert ex.arch == "swin_unetr" and ex.efficiency["efficiency_mean"].tolist() == [0.7]

    table = pd.DataFrame({"case": ["a"], "padding": [0], "pad_fraction": [0.0], "intervention": ["none"],
                          "metric": ["dice"], "value": [0.5]})
    summary = pd.DataFrame({"intervention": ["none"], "padding": [0], "delta_dice": [0.0]})
    AblationRun(table=table, adi=adi_frame(), summary=summary, info={"model": "/x/m.pt"}, label="m").save(
        tmp_path / "abl")
    ab = AblationRun.load(tmp_path / "abl")
    assert ab.info == {"model": "/x/m.pt"} and ab.display_label() == "m"
    pd.testing.assert_frame_equal(ab.summary, summary)


def test_an_unknown_schema_version_is_one_clear_error(tmp_path):
    AdiRun(frame=adi_frame()).save(tmp_path)
    meta = json.loads((tmp_path / RECORD_FILE).read_text())
    (tmp_path / RECORD_FILE).write_text(json.dumps({**meta, "schema_version": 99}))
    with pytest.raises(DataError, match="an adi run of schema version 99.*expected adi schema version 1.*upgrade"):
        AdiRun.load(tmp_path)
    (tmp_path / RECORD_FILE).write_text(json.dumps({**meta, "schema_version": 0, "attnprobe_version": "0.0.9"}))
    with pytest.raises(DataError, match="schema version 0.*attnprobe 0.0.9"):
        AdiRun.load_any(tmp_path)


def test_a_run_of_another_kind_is_one_clear_error(tmp_path):
    CkaRun(matrix=cka_matrix()).save(tmp_path)
    with pytest.raises(DataError, match="is a cka run, not an adi run"):
        AdiRun.load(tmp_path)
    with pytest.raises(DataError, match="is a cka run, not an evaluation run"):
        EvaluationRun.load_any(tmp_path)


def test_folders_of_the_previous_version_read_through_the_legacy_loader(tmp_path):
    # what attnprobe demo wrote before run records: adi.csv + adi.json with a label
    frame = adi_frame()
    frame.to_csv(tmp_path / "adi.csv", index=False)
    (tmp_path / "adi.json").write_text(json.dumps({"label": "Swin UNETR (base)", "model": "swin-base"}))
    with pytest.raises(DataError, match="without record.json.*load_legacy"):
        AdiRun.load(tmp_path)
    run = AdiRun.load_any(tmp_path)
    assert run.legacy and run.label == "Swin UNETR (base)"
    pd.testing.assert_frame_equal(run.frame, frame)
    # the CLI's adi wrote no adi.json: the folder's name is the label
    (tmp_path / "adi.json").unlink()
    assert AdiRun.load_legacy(tmp_path).display_label() == tmp_path.name
    # an evaluation summary without preset: the trainer metadata of the checkpoint, else none
    ev = tmp_path / "ev"
    ev.mkdir()
    pd.DataFrame({"case": ["a"], "dice": [0.5]}).to_csv(ev / "cases.csv", index=False)
    (ev / "summary.json").write_text(json.dumps({"n_detected": 1, "model": str(tmp_path / "missing.pt")}))
    old = EvaluationRun.load_any(ev)
    assert old.legacy and old.preset is None and old.backbone is None


def test_a_crash_in_the_middle_of_saving_leaves_the_old_files(tmp_path, monkeypatch):
    AdiRun(frame=adi_frame(), label="first").save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name not in (RECORD_FILE, MANIFEST_FILE)}

    def crash(self, tmp):
        (tmp / "adi.csv").write_text("case,padd")  # half a file in the staging folder
        raise KeyboardInterrupt

    monkeypatch.setattr(AdiRun, "_write", crash)
    with pytest.raises(KeyboardInterrupt):
        AdiRun(frame=adi_frame().head(3), label="second").save(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name not in (RECORD_FILE, MANIFEST_FILE)}
    assert after == before  # every data file as it was, no temporary left behind
    assert not (tmp_path / RECORD_FILE).exists()  # and the folder says it is incomplete


def test_the_manifest_hashes_the_inputs(tmp_path, datalist):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"weights" * 1000)
    manifest = Manifest.start("adi", {"model": ckpt})
    manifest.add_input(ckpt, "checkpoint")
    manifest.add_data(datalist)
    manifest.add_input("a-dataset-name", "data-name")
    AdiRun(frame=adi_frame(), manifest=manifest).save(tmp_path / "run")
    inputs = json.loads((tmp_path / "run" / MANIFEST_FILE).read_text())["inputs"]
    by_role = {}
    for entry in inputs:
        by_role.setdefault(entry["role"], []).append(entry)
    assert by_role["checkpoint"][0]["sha256"] == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert by_role["data"][0]["sha256"] == hashlib.sha256(open(datalist, "rb").read()).hexdigest()
    images = by_role["data-image"]
    assert len(images) >= 2 and all(len(e["sha256"]) == 64 for e in images)
    assert by_role["data-name"][0]["sha256"] is None  # not a path: recorded, not hashed


def test_a_store_input_hashes_its_metadata(tmp_path):
    import zarr

    store = tmp_path / "s.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=3)
    root.attrs["checkpoint_sha256"] = "abc"
    manifest = Manifest.start("cka")
    manifest.add_input(store, "ref-store")
    entry = manifest.inputs[0]
    assert entry.hashed == "store-metadata" and entry.files == 1 and len(entry.sha256) == 64


def test_train_record_lists_the_trainer_files_it_finds(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"preset": "act", "arch": "swin_unetr"}))
    (tmp_path / "metrics.csv").write_text("epoch,step,loss,val_dice,lr,elapsed\n0,1,0.9,,0.001,1.0\n")
    TrainRun(finished=False, label="act").save(tmp_path)
    assert json.loads((tmp_path / RECORD_FILE).read_text())["files"] == ["config.json", "metrics.csv"]
    run = TrainRun.load(tmp_path)
    assert run.preset == "act" and run.arch == "swin_unetr" and run.finished is False
    assert run.metrics is not None and run.metrics["loss"].tolist() == [0.9]
