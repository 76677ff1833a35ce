"""Run folders: one typed record per artifact a command leaves, with a manifest (docs/results.md).

- :class:`AdiRun`, :class:`CkaRun`, :class:`EvaluationRun`, :class:`ComparisonRun`,
  :class:`AblationRun`, :class:`ExtentRun`, :class:`TrainRun`, :class:`PhantomSet`:
  ``save(folder)`` / ``load(folder)`` (schema version checked) / ``load_legacy(folder)``
  (folders written before run records).
- :class:`Manifest`: command, arguments, versions, compat, input hashes, start/end time.
- :func:`check_out`: the ``--out`` / ``--overwrite`` rule; capture stores keep their own schema
  (:mod:`attnprobe.store.schema`) and are recognised by :func:`kind_of`.
- :func:`atomic_write_text`, :func:`atomic_write_bytes`, :func:`atomic_path`: temporary name, then rename.
"""

from attnprobe.results.files import atomic_path, atomic_write_bytes, atomic_write_text, sha256_file
from attnprobe.results.folders import RECORD_FILE, OutFolder, check_out, clear_store
from attnprobe.results.manifest import MANIFEST_FILE, InputFile, Manifest
from attnprobe.results.record import RunRecord, kind_of, read_record_meta
from attnprobe.results.runs import (
    RECORDS,
    AblationRun,
    AdiRun,
    CkaRun,
    ComparisonRun,
    EvaluationRun,
    ExtentRun,
    PhantomSet,
    TrainRun,
)

__all__ = ["AblationRun", "AdiRun", "CkaRun", "ComparisonRun", "EvaluationRun", "ExtentRun", "InputFile",
           "MANIFEST_FILE", "Manifest", "OutFolder", "PhantomSet", "RECORDS", "RECORD_FILE", "RunRecord",
           "TrainRun", "atomic_path", "atomic_write_bytes", "atomic_write_text", "check_out", "clear_store",
           "kind_of", "read_record_meta", "sha256_file"]
