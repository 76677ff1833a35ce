"""One exception root for everything attnprobe raises on purpose.

Messages follow one shape so a user can act on them: what was expected, what came,
and how to fix it. The CLI turns any ``AttnprobeError`` into one line and exit code 2.

The errors that mean "a bad value was passed" (:class:`ConfigError`, :class:`ShapeError`,
:class:`DataError`) are also :class:`ValueError`, so ``except ValueError`` catches them as it
catches PyTorch's, NumPy's and MONAI's. The others (:class:`CheckpointError`,
:class:`StoreError`, :class:`TapError`) concern files on disk or the hooks' state and derive
from :class:`AttnprobeError` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

_T = TypeVar("_T")


class AttnprobeError(Exception):
    """Root of every error attnprobe raises for bad input or a broken contract.

    Parameters
    ----------
    what
        One sentence naming the problem.
    expected, got, fix
        Optional parts appended as ``expected ...; got ...; fix: ...``.
    """

    def __init__(self, what: str, *, expected: str | None = None, got: str | None = None,
                 fix: str | None = None) -> None:
        parts = [what.rstrip(".")]
        if expected is not None:
            parts.append(f"expected {expected}")
        if got is not None:
            parts.append(f"got {got}")
        if fix is not None:
            parts.append(f"fix: {fix}")
        super().__init__("; ".join(parts))
        self.what, self.expected, self.got, self.fix = what, expected, got, fix


class ConfigError(AttnprobeError, ValueError):
    """Unknown architecture, bad option value, bad workspace file (also a ``ValueError``)."""


class CheckpointError(AttnprobeError):
    """A checkpoint that cannot be read or does not fit the architecture."""


class ShapeError(AttnprobeError, ValueError):
    """A tensor or volume with the wrong shape, rank or size (also a ``ValueError``)."""


class DataError(AttnprobeError, ValueError):
    """Input data that cannot be read or used (empty datalist, NaNs, bad NIfTI; also a ``ValueError``)."""


class StoreError(AttnprobeError):
    """A capture store that is missing, corrupt or from another schema version."""


class TapError(AttnprobeError):
    """A tap pattern that matches nothing, or a tap that did not fire as expected."""


def check_option(name: str, value: _T, allowed: Sequence[str]) -> _T:
    """``value`` when it is one of ``allowed``, else :class:`ConfigError` ``unknown {name} option``.

    The one checker of string options (``kernel=``, ``pooling=``, ``pad_queries=``, ...), so
    every bad option reads the same: ``unknown kernel option; expected 'linear' | 'rbf';
    got 'rfb'; fix: pass kernel= one of the allowed values``.
    """
    if value not in allowed:
        raise ConfigError(
            f"unknown {name} option",
            expected=" | ".join(repr(a) for a in allowed),
            got=repr(value),
            fix=f"pass {name}= one of the allowed values",
        )
    return value
