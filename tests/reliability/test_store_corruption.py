"""Damage one chunk of a store at a time: every reader and ``verify`` must notice.

For each chunk kind (``attn``, ``attn_kind``, ``out``, ``done``, ``case``) and each damage
(bit flip, truncation, zero bytes, deletion) of sample 1, reading the store must fail with one
line naming the block, array and sample (never compute on fill values), ``verify`` must name
the sample, and ``verify --repair`` plus a rerun must bring back the uninterrupted store.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnprobe.errors import StoreError
from attnprobe.metrics.features import store_outputs
from attnprobe.metrics.offline import store_flow
from attnprobe.store import capture_to_store, open_store
from attnprobe.store.verify import repair_store, verify_store
from tests.reliability.conftest import TOTALS, count_error
from tests.store.store_helpers import TAPS, assert_same_store

CHUNKS = {
    "attn": "stage0.block1/attn/c/1/2/0/0/0",
    "attn_kind": "stage0.block1/attn_kind/c/1/0/0",
    "out": "stage3.block0/out/c/1/0/0/0/0",
    "done": "done/c/1",
    "case": "case/c/0",
}
DAMAGES = ("flip", "truncate", "zero", "delete")


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    elif how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "zero":
        path.write_bytes(b"")
    else:
        path.unlink()


def read_everything(path):
    """What the readers do: open, every array's values, offline ADI, block outputs for CKA."""
    tree = open_store(path)
    for node in tree.subtree:
        for var in node.dataset.data_vars.values():
            np.asarray(var.values)
    store_flow(path)
    list(store_outputs(path))


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(CHUNKS))
def test_damage_to_one_chunk_is_detected(kind, how, reference, copy_of):
    store = copy_of(reference)
    chunk = store / CHUNKS[kind]
    assert chunk.is_file(), sorted(p.relative_to(store).as_posix() for p in store.rglob("c/*"))
    damage(chunk, how)
    TOTALS["faults"] += 1
    if kind == "done" and how == "delete":
        # a lost done flag un-marks the sample: readers leave it out and say so, a rerun recaptures it
        assert open_store(store)["done"].values.tolist() == [True, False]
        assert verify_store(store).ok
        TOTALS["survived"] += 1
        return
    with pytest.raises(StoreError) as info:
        read_everything(store)
    message = str(info.value)
    count_error(info.value)
    assert CHUNKS[kind] in message and "\n" not in message
    if kind in ("attn", "attn_kind", "out"):
        block, array = CHUNKS[kind].split("/")[:2]
        assert f"block {block}, array {array}, sample 1, case case1" in message, message
    if kind == "case":
        with pytest.raises(StoreError, match="case ids are lost"):
            verify_store(store)
        TOTALS["survived"] += 1
        return
    report = verify_store(store)
    assert [b.sample for b in report.bad] == [1], report
    assert report.bad[0].problems[0].chunk == CHUNKS[kind]
    TOTALS["survived"] += 1


@pytest.mark.parametrize("kind", ["attn", "out", "done"])
def test_repair_then_rerun_recaptures_only_the_bad_sample(kind, reference, model, cases, copy_of):
    store = copy_of(reference)
    damage(store / CHUNKS[kind], "flip")
    report = repair_store(verify_store(store))
    assert report.repaired and [b.sample for b in report.bad] == [1]
    assert verify_store(store).ok
    calls = []
    capture_to_store(model, cases, store, taps=TAPS, on_sample=lambda c, s: calls.append((c, s)))
    assert calls == [("case0", True), ("case1", False)]
    assert_same_store(reference, store)
