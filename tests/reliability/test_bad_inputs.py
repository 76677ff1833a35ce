"""Stores and captures a hostile user makes: each gets one clear line, and no data is lost.

Covers resume with other settings (the one-line fingerprint diff), a deleted ``done`` array,
an incomplete layout, disk full while laying out, two captures at once, NaN weights, and a
schema-1 store.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import zarr
from zarr.storage import LocalStore

from attnprobe.errors import StoreError
from attnprobe.store import capture_to_store, open_store
from attnprobe.store.writer import NonFiniteError
from tests.reliability.conftest import count_error
from tests.store.store_helpers import Case, assert_same_store, make_cases, tiny_model

ONE_TAP = ["stage3.block0.out"]
PREP = {"spacing": 1.0, "intensity": "percentile", "orientation": "RAS", "roi": [64, 32, 32]}


def refused(match, fn, *args, **kwargs):
    """The call fails with one clear line matching ``match`` (counted in the battery's totals)."""
    with pytest.raises(StoreError, match=match) as info:
        fn(*args, **kwargs)
    count_error(info.value)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.fixture
def small(tmp_path, model):
    cases = make_cases(1)
    path = capture_to_store(model, cases, tmp_path / "s.zarr", taps=ONE_TAP, attrs={"preprocessing": PREP})
    return path, cases


def test_resume_with_other_preprocessing_names_only_what_differs(small, model):
    path, cases = small
    message = refused("spacing: stored 1.0 vs now 1.5", capture_to_store, model, cases, path, taps=ONE_TAP,
                      attrs={"preprocessing": {**PREP, "spacing": 1.5}})
    assert "intensity" not in message and "roi" not in message and "taps" not in message
    refused("intensity: stored percentile vs now fixed", capture_to_store, model, cases, path, taps=ONE_TAP,
            attrs={"preprocessing": {**PREP, "intensity": "fixed"}})
    refused("dtype: stored float16 vs now float32", capture_to_store, model, cases, path, taps=ONE_TAP,
            dtype="float32", attrs={"preprocessing": PREP})
    other = tiny_model(seed=1)
    refused("weights_sha256: stored", capture_to_store, other, cases, path, taps=ONE_TAP, attrs={"preprocessing": PREP})
    # the same capture still resumes
    capture_to_store(model, cases, path, taps=ONE_TAP, attrs={"preprocessing": PREP})


@dataclass
class Ref:
    case_id: str
    image: Path


@dataclass
class FileCase(Case):
    ref: Ref | None = None


def test_resume_with_changed_input_files_under_the_same_ids_is_refused(tmp_path, model):
    files = []
    for i in range(2):
        files.append(tmp_path / f"case{i}.bin")
        files[-1].write_bytes(bytes([i]) * 100)
    base = make_cases(2)
    cases = [FileCase(c.case_id, c.image, c.mask, Ref(c.case_id, f)) for c, f in zip(base, files)]
    path = capture_to_store(model, cases[:1] + [cases[1]], tmp_path / "s.zarr", taps=ONE_TAP)
    files[1].write_bytes(b"another scan")
    message = refused("file of case case1: stored", capture_to_store, model, cases, path, taps=ONE_TAP)
    assert "case0" not in message


def test_a_deleted_done_array_is_one_line_for_readers_and_capture(small, model):
    path, cases = small
    shutil.rmtree(path / "done")
    refused("has no 'done' array", open_store, path)
    refused("has no 'done' array", capture_to_store, model, cases, path, taps=ONE_TAP, attrs={"preprocessing": PREP})


def test_an_incomplete_layout_says_so_and_how_to_recover(tmp_path, model):
    path = tmp_path / "s.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3).create_group("stage3.block0")  # no schema stamp
    refused("layout of .* is incomplete", open_store, path)
    message = refused("layout of .* is incomplete", capture_to_store, model, make_cases(1), path, taps=ONE_TAP)
    assert "delete" in message and "None" not in message


def test_disk_full_while_laying_out_leaves_nothing_and_a_rerun_works(tmp_path, model, monkeypatch):
    original = LocalStore.set

    async def full(self, key, value):
        if key == "stage3.block0/zarr.json":
            raise OSError(28, "No space left on device")
        return await original(self, key, value)

    monkeypatch.setattr(LocalStore, "set", full)
    path = tmp_path / "s.zarr"
    refused("could not lay out .* No space left on device", capture_to_store, model, make_cases(1), path,
            taps=ONE_TAP)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half store, no staging folder, no lock
    capture_to_store(model, make_cases(1), path, taps=ONE_TAP)
    assert open_store(path)["done"].values.all()


def test_a_second_capture_on_the_same_store_is_refused_and_a_stale_lock_taken_over(tmp_path, model):
    path = tmp_path / "s.zarr"
    lock = tmp_path / "s.zarr.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    message = refused("another capture is writing to", capture_to_store, model, make_cases(1), path, taps=ONE_TAP)
    assert f"pid {os.getpid()}" in message and "s.zarr.lock" in message
    assert not path.exists() and lock.exists()  # the other capture's lock is not ours to remove
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "elsewhere", "since": "now"}))
    refused("if it is no longer running", capture_to_store, model, make_cases(1), path, taps=ONE_TAP)
    gone = subprocess.Popen(["true"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "since": "then"}))
    capture_to_store(model, make_cases(1), path, taps=ONE_TAP)  # a killed capture's lock is taken over
    assert not lock.exists() and open_store(path)["done"].values.all()


def test_nan_weights_are_never_marked_done(tmp_path):
    model = tiny_model()
    with torch.no_grad():
        model.swinViT.layers1[0].blocks[1].mlp.linear1.weight[0, 0] = float("nan")
    path = tmp_path / "s.zarr"
    with pytest.raises(NonFiniteError, match="block stage0.block1, array") as info:
        capture_to_store(model, make_cases(1), path, taps=["stage0.*", "stage3.*"])
    count_error(info.value)
    assert not open_store(path)["done"].values.any()


def test_a_schema_1_store_is_read_but_not_resumed(small, model, tmp_path):
    path, cases = small
    zarr.open_group(str(path), mode="r+").attrs["attnprobe_schema"] = 1
    assert open_store(path)["done"].values.all()
    refused("schema 1, which cannot be resumed", capture_to_store, model, cases, path, taps=ONE_TAP,
            attrs={"preprocessing": PREP})


def test_resume_after_a_clean_rerun_keeps_the_store_identical(small, model, tmp_path):
    path, cases = small
    before = tmp_path / "before.zarr"
    shutil.copytree(path, before)
    capture_to_store(model, cases, path, taps=ONE_TAP, attrs={"preprocessing": PREP})
    assert_same_store(before, path)
