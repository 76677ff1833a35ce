"""Atomic writes and streaming hashes (attnprobe.results.files)."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from attnprobe.results.files import (
    TMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
    sha256_tree,
)


def test_a_crash_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "adi.csv"
    atomic_write_text(target, "old,complete\n1,2\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new,half")  # half a file ...
        raise RuntimeError("killed")  # ... then the process dies
    assert target.read_text() == "old,complete\n1,2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["adi.csv"]


def test_a_dataframe_goes_through_a_temporary_name(tmp_path):
    target = tmp_path / "t.csv"
    seen = []
    with atomic_path(target) as tmp:
        pd.DataFrame({"a": [1, 2]}).to_csv(tmp, index=False)
        seen.append(tmp.name)
        assert not target.exists()  # the final name appears only on success
    assert seen[0].startswith(TMP_PREFIX) and pd.read_csv(target)["a"].tolist() == [1, 2]


def test_bytes_round_trip_and_streaming_hash(tmp_path):
    data = bytes(range(256)) * 10_000  # > one 1 MiB read
    path = atomic_write_bytes(tmp_path / "x.bin", data)
    assert path.read_bytes() == data
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_folder_hash_covers_names_and_contents(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.txt").write_text("1")
    first, n = sha256_tree(tmp_path)
    assert n == 1
    (tmp_path / "a" / "f.txt").write_text("2")
    assert sha256_tree(tmp_path)[0] != first
    (tmp_path / "a" / "f.txt").write_text("1")
    assert sha256_tree(tmp_path)[0] == first
    (tmp_path / "a" / "f.txt").rename(tmp_path / "a" / "g.txt")
    assert sha256_tree(tmp_path)[0] != first
