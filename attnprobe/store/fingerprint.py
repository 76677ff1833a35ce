"""The capture fingerprint: everything that determines a stored sample (docs/store.md).

A store records it in its root attrs when it is created; a resumed capture builds it again
and refuses on any difference, naming only the keys that differ
(``spacing: stored 1.0 vs now 1.5``), as ``train --resume`` does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: preprocessing keys of the fingerprint (the ROI is the top-level ``roi``)
_SKIP_PREPROCESSING = ("roi",)


class FileHashes:
    """SHA-256 of input files, each file read once per capture run."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def file(self, path: Path) -> str:
        path = Path(path).resolve()
        if path not in self._cache:
            digest = hashlib.sha256()
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            for f in files:  # a DICOM series folder: every file, in name order
                if path.is_dir():
                    digest.update(f.relative_to(path).as_posix().encode())
                with open(f, "rb") as handle:
                    for block in iter(lambda: handle.read(1 << 20), b""):
                        digest.update(block)
            self._cache[path] = digest.hexdigest()
        return self._cache[path]

    def case(self, case: Any) -> str:
        """A case's source: its image file (and label) when it has a ``ref``, else its tensors."""
        ref = getattr(case, "ref", None)
        if ref is not None and getattr(ref, "image", None) is not None:
            return self.file(ref.image)
        digest = hashlib.sha256()
        for tensor in (case.image, case.mask):
            array = tensor.detach().to("cpu").contiguous().numpy()
            digest.update(str((array.dtype, array.shape)).encode())
            digest.update(array.tobytes())
        return "tensor:" + digest.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(array.view(torch.uint8).numpy().tobytes() if array.numel() else b"")
    return digest.hexdigest()


def build_fingerprint(model: nn.Module, cases: Sequence[Any], *, model_attrs: Mapping[str, Any],
                      roi: Sequence[int], taps: Sequence[str], dtype: str, attrs: Mapping[str, Any],
                      hashes: FileHashes | None = None) -> dict[str, Any]:
    """The flat fingerprint dict of one capture (JSON-ready).

    Keys: ``arch``, ``compat``, ``model_config``, ``checkpoint_sha256``, ``weights_sha256``,
    ``roi``, ``taps``, ``dtype``, ``data`` (the data source), ``cases`` (ids in sample order),
    ``case_sha256`` (case id -> hash of its image file, or of its tensors), ``padding``, and
    every preprocessing setting (``spacing``, ``intensity``, ``orientation``, ...).
    """
    hashes = hashes or FileHashes()
    found = {
        "arch": model_attrs.get("arch"),
        "compat": model_attrs.get("compat"),
        "model_config": model_attrs.get("model_config"),
        "checkpoint_sha256": model_attrs.get("checkpoint_sha256"),
        "weights_sha256": weights_sha256(model),
        "roi": [int(v) for v in roi],
        "taps": list(taps),
        "dtype": dtype,
        "data": attrs.get("data"),
        "cases": [c.case_id for c in cases],
        "case_sha256": {c.case_id: hashes.case(c) for c in cases},
        "padding": attrs.get("padding"),
    }
    for key, value in (attrs.get("preprocessing") or {}).items():
        if key not in _SKIP_PREPROCESSING:
            found[key] = value
    return found


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        shown = [_show(v) for v in value[:3]] + ([f"+{len(value) - 3} more"] if len(value) > 4 else
                                                  [_show(v) for v in value[3:]])
        return "(" + ", ".join(shown) + ")"
    elif isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        text = value[:12] + "..."  # a sha256
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:50] + f" (+{len(text) - 50} chars)"


def fingerprint_diff(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``key: stored A vs now B`` for every key that differs (per case for ``case_sha256``)."""
    diffs = []
    for key in [*stored, *(k for k in now if k not in stored)]:
        old, new = stored.get(key), now.get(key)
        if key == "case_sha256" and isinstance(old, Mapping) and isinstance(new, Mapping):
            changed = [c for c in new if c in old and old[c] != new[c]]
            for case in changed[:3]:
                diffs.append(f"file of case {case}: stored {_show(old[case])} vs now {_show(new[case])}")
            if len(changed) > 3:
                diffs.append(f"({len(changed) - 3} more case files differ)")
            continue  # added or dropped cases show under 'cases'
        if _normal(old) != _normal(new):
            diffs.append(_list_diff(key, old, new) or f"{key}: stored {_show(old)} vs now {_show(new)}")
    return diffs


def _list_diff(key: str, old: Any, new: Any) -> str | None:
    """For two lists of names (taps, cases): what only one side holds, so that a difference past
    the first few entries stays visible; None when the lists hold the same names in another order."""
    if not (isinstance(old, (list, tuple)) and isinstance(new, (list, tuple))):
        return None
    if not all(isinstance(v, str) for v in [*old, *new]):
        return None
    gone, added = [v for v in old if v not in set(new)], [v for v in new if v not in set(old)]
    if not gone and not added:
        return f"{key}: same entries in another order (stored {_show(old)} vs now {_show(new)})"
    parts = [f"only stored {_show(gone)}" if gone else "", f"only now {_show(added)}" if added else ""]
    return f"{key}: " + ", ".join(p for p in parts if p)


def _normal(value: Any) -> Any:
    """JSON round trips turn tuples into lists and may turn 1.0 into 1."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    return value
