"""Chunk integrity of capture stores: checksums, presence, one-line errors (docs/store.md).

Every read of a store goes through :class:`CheckedStore`, a local zarr store that checks each
chunk as it is fetched, before zarr decodes it:

- a chunk of a sample marked done that is missing (zarr would read the fill value) is
  corruption, and so is a missing chunk of the ``case`` array;
- a chunk of a schema-2 array must end with the CRC32C of its other bytes (zarr's ``crc32c``
  codec); a bit flip, a truncated or a zero-byte file fails here.

Both raise a :class:`~attnprobe.errors.StoreError` naming the chunk, its block, array and
sample, so readers (``open_store``, ``adi --store``, ``cka`` on stores, figures) stop with one
line instead of computing on zeros or printing a decompression traceback.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
from zarr.storage import LocalStore

from attnprobe.errors import StoreError
from attnprobe.store.schema import CASE


@dataclass(frozen=True)
class ArrayRule:
    """What a store array must look like on disk.

    Attributes
    ----------
    path
        Array path inside the store (``case``, ``done``, ``stage0.block1/attn`` ...).
    shape, chunks
        From the array's metadata.
    crc
        Whether every chunk ends with a CRC32C (the ``crc32c`` codec is in its codecs).
    """

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    crc: bool

    @property
    def block(self) -> str | None:
        return self.path.rsplit("/", 1)[0] if "/" in self.path else None

    @property
    def var(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def per_sample(self) -> bool:
        """Block arrays: one chunk row per sample, which must exist once the sample is done."""
        return self.block is not None

    def grid(self) -> list[range]:
        return [range(math.ceil(s / c)) if c else range(0) for s, c in zip(self.shape, self.chunks)]

    def sample_keys(self, sample: int) -> list[str]:
        """Chunk keys of one sample (block arrays: the sample axis is chunked by one)."""
        return [self.key((sample, *rest)) for rest in product(*self.grid()[1:])]

    def all_keys(self) -> list[str]:
        return [self.key(idx) for idx in product(*self.grid())]

    def key(self, index: Iterable[int]) -> str:
        return f"{self.path}/c/" + "/".join(str(i) for i in index)


def read_rules(path: Path) -> dict[str, ArrayRule]:
    """Array rules of a store, from the ``zarr.json`` files (no chunk is read)."""
    rules: dict[str, ArrayRule] = {}
    for meta_file in sorted(path.rglob("zarr.json")):
        rel = meta_file.parent.relative_to(path).as_posix()
        if rel == "." or "/c/" in f"/{rel}/":
            continue
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path} is corrupt: metadata {rel}/zarr.json cannot be read",
                             got=type(exc).__name__, fix=f"re-capture into a new store ({exc})") from None
        if meta.get("node_type") != "array":
            continue
        grid = meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape")
        codecs = [c.get("name") if isinstance(c, dict) else c for c in meta.get("codecs", [])]
        rules[rel] = ArrayRule(rel, tuple(meta.get("shape", ())), tuple(grid or meta.get("shape", ())),
                               crc="crc32c" in codecs)
    return rules


class CheckedStore(LocalStore):
    """A read-only local store that checks chunk presence and checksums as chunks are fetched.

    Parameters
    ----------
    root
        Store folder.
    rules
        :func:`read_rules` of the store.
    cases
        Case id of every sample (for messages); set after the ``case`` array was read.
    done
        Samples marked done; set after the ``done`` array was read (before it, no block
        chunk counts as required).
    """

    def __init__(self, root: Path, rules: dict[str, ArrayRule]) -> None:
        super().__init__(root, read_only=True)
        self.store_path = Path(root)
        self.rules = rules
        self.cases: list[str] | None = None
        self.done: np.ndarray | None = None

    async def get(self, key: str, prototype: Any = None, byte_range: Any = None) -> Any:
        buf = await super().get(key, prototype, byte_range)
        if "/c/" not in f"/{key}" or byte_range is not None:
            return buf
        array, _, index = f"/{key}".rpartition("/c/")
        rule = self.rules.get(array.lstrip("/"))
        if rule is None:
            return buf
        if buf is None:
            if self.required(rule, index):
                raise self.error("is missing", key, rule, index)
            return buf
        if rule.crc:
            problem = checksum_problem(buf.as_numpy_array())
            if problem:
                raise self.error(problem, key, rule, index)
        return buf

    def required(self, rule: ArrayRule, index: str) -> bool:
        """Whether a chunk must exist: every ``case`` chunk, block chunks of done samples."""
        if rule.path == CASE:
            return True
        if not rule.per_sample or self.done is None:
            return False
        sample = _sample_of(index)
        return sample is not None and sample < len(self.done) and bool(self.done[sample])

    def error(self, problem: str, key: str, rule: ArrayRule, index: str) -> StoreError:
        return chunk_error(self.store_path, key, rule, _sample_of(index), problem, self.cases)


def _sample_of(index: str) -> int | None:
    first = index.split("/", 1)[0]
    return int(first) if first.isdigit() else None


def checksum_problem(data: np.ndarray) -> str | None:
    """Why a chunk's bytes fail their trailing CRC32C, or ``None`` when they pass."""
    if data.size < 4:
        return f"is truncated ({data.size} bytes, not even its checksum)"
    stored = bytes(data[-4:])
    computed = np.uint32(google_crc32c.value(data[:-4].tobytes())).tobytes()
    if stored != computed:
        return "fails its CRC32C checksum (truncated or changed on disk)"
    return None


class ChunkError(StoreError):
    """A missing or damaged chunk; ``key``, ``rule``, ``sample`` and ``problem`` say which and how."""

    key: str
    rule: ArrayRule
    sample: int | None
    problem: str


def chunk_error(store: Path, key: str, rule: ArrayRule, sample: int | None, problem: str,
                cases: list[str] | None) -> ChunkError:
    """The one-line error for a bad chunk: block, array and sample (with its case id)."""
    where = f"array {rule.var}" if rule.block is None else f"block {rule.block}, array {rule.var}"
    if sample is not None and rule.per_sample:
        where += f", sample {sample}"
        if cases is not None and sample < len(cases):
            where += f", case {cases[sample]}"
    if rule.path == CASE:
        fix = "re-capture into a new store (the case ids are lost)"
    else:
        fix = f"run 'attnprobe verify {store} --repair', then rerun the same capture to recapture the bad samples"
    error = ChunkError(f"{store} is corrupt: chunk {key} ({where}) {problem}", fix=fix)
    error.key, error.rule, error.sample, error.problem = key, rule, sample, problem
    return error


def chunk_files(path: Path, rules: Iterable[ArrayRule]) -> set[str]:
    """Keys of the chunk files on disk of the given arrays (a directory listing, nothing read)."""
    keys: set[str] = set()
    for rule in rules:
        for folder, _dirs, files in os.walk(path / rule.path / "c"):
            rel = Path(folder).relative_to(path).as_posix()
            keys.update(f"{rel}/{name}" for name in files)
    return keys


def missing_done_chunks(path: Path, rules: dict[str, ArrayRule], done: np.ndarray) -> list[tuple[str, ArrayRule, int]]:
    """Chunks of done samples (and of ``case``) that have no file: ``(key, rule, sample)``."""
    block_rules = [r for r in rules.values() if r.per_sample]
    listing = chunk_files(path, [*block_rules, *([rules[CASE]] if CASE in rules else [])])
    missing = []
    if CASE in rules:
        missing += [(k, rules[CASE], -1) for k in rules[CASE].all_keys() if k not in listing]
    for sample in np.flatnonzero(done).tolist():
        for rule in block_rules:
            missing += [(k, rule, sample) for k in rule.sample_keys(sample) if k not in listing]
    return missing


def check_done_chunks(path: Path, rules: dict[str, ArrayRule], done: np.ndarray, cases: list[str] | None) -> None:
    """Raise on the first missing chunk of a done sample (a cheap listing, no chunk is read)."""
    missing = missing_done_chunks(path, rules, done)
    if missing:
        key, rule, sample = missing[0]
        more = f" ({len(missing) - 1} more chunk(s) missing)" if len(missing) > 1 else ""
        raise chunk_error(path, key, rule, sample if sample >= 0 else None, f"is missing{more}", cases)


__all__ = ["ArrayRule", "CheckedStore", "ChunkError", "check_done_chunks", "checksum_problem", "chunk_error", "chunk_files",
           "missing_done_chunks", "read_rules"]
