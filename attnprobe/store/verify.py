"""Check every chunk of a capture store and un-mark damaged samples (``attnprobe verify``).

For each sample marked done, every chunk of every block array is fetched and checked:
present, CRC32C intact (schema 2), decodable, and finite where it holds floats. The
``done`` flag of a sample is checked too. :func:`repair_store` sets ``done`` back to false for
the bad samples, so rerunning the same capture recaptures just those (docs/store.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr

from attnprobe.errors import StoreError
from attnprobe.store.integrity import ChunkError
from attnprobe.store.lock import StoreLock
from attnprobe.store.reader import open_checked
from attnprobe.store.schema import DONE, SCHEMA_VERSION


@dataclass
class Problem:
    """One damaged part of a sample."""

    block: str
    array: str
    chunk: str
    problem: str


@dataclass
class BadSample:
    sample: int
    case: str
    problems: list[Problem] = field(default_factory=list)


@dataclass
class VerifyReport:
    """What :func:`verify_store` found.

    Attributes
    ----------
    store, schema
        The store and its schema version.
    samples, done
        Samples in the store and how many are marked done.
    chunks
        Chunks checked (those of done samples).
    bad
        Damaged samples, each with its problems.
    """

    store: str
    schema: int
    samples: int
    done: int
    chunks: int = 0
    bad: list[BadSample] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.bad

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def verify_store(path: str | Path) -> VerifyReport:
    """Check every chunk of the done samples of a store.

    Raises
    ------
    StoreError
        When the store as a whole cannot be read (not a store, another schema, lost ``case``
        array): no sample can be trusted then, so there is nothing to report per sample.
    """
    checked = open_checked(path, lenient_done=True)
    group = checked.group
    report = VerifyReport(str(checked.path), checked.version, len(checked.cases), int(checked.done.sum()))
    block_rules = sorted((r for r in checked.rules.values() if r.per_sample), key=lambda r: r.path)
    arrays = {r.path: cast(zarr.Array, group[r.path]) for r in block_rules}
    for sample in np.flatnonzero(checked.done).tolist():
        problems: list[Problem] = []
        try:
            cast(zarr.Array, group[DONE])[sample]
        except ChunkError as exc:
            problems.append(Problem("", "done", exc.key, exc.problem))
        report.chunks += 1
        for rule in block_rules:
            report.chunks += len(rule.sample_keys(sample))
            try:
                values = np.asarray(arrays[rule.path][sample])
            except ChunkError as exc:
                problems.append(Problem(rule.block or "", rule.var, exc.key, exc.problem))
                continue
            except Exception as exc:  # a chunk zarr cannot decode (schema 1 has no checksums)
                problems.append(Problem(rule.block or "", rule.var, rule.sample_keys(sample)[0],
                                        f"cannot be decoded ({type(exc).__name__}: {exc})"))
                continue
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                problems.append(Problem(rule.block or "", rule.var, rule.sample_keys(sample)[0],
                                        "holds NaN or infinite values"))
        if problems:
            report.bad.append(BadSample(sample, checked.cases[sample], problems))
    return report


def repair_store(report: VerifyReport) -> VerifyReport:
    """Mark the bad samples of a report as not done; a rerun of the same capture recaptures them.

    Raises
    ------
    StoreError
        A schema-1 store (it cannot be resumed, so un-marking would not help), or a capture
        writing to the store right now (its lock is held).
    """
    if report.ok:
        return report
    path = Path(report.store)
    if report.schema != SCHEMA_VERSION:
        raise StoreError(f"{path} has store schema {report.schema}, which a capture cannot resume",
                         expected=f"schema {SCHEMA_VERSION}", got=f"schema {report.schema}",
                         fix="re-capture into a new store")
    with StoreLock(path):
        done = cast(zarr.Array, zarr.open_group(str(path), mode="r+")[DONE])
        for bad in report.bad:
            done[bad.sample] = False
    report.repaired = True
    return report
