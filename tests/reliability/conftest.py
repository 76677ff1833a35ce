"""The fault battery's shared pieces: a reference store and the totals printed at the end."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from attnprobe.errors import AttnprobeError
from attnprobe.store import capture_to_store
from tests.store.store_helpers import TAPS, make_cases, tiny_model

TOTALS: Counter = Counter()


def count_error(exc: BaseException) -> None:
    """A bad input or a fault: a clear error is an AttnprobeError of one line."""
    TOTALS["bad inputs"] += 1
    if isinstance(exc, AttnprobeError) and "\n" not in str(exc):
        TOTALS["clear errors"] += 1
    else:
        TOTALS["tracebacks"] += 1


def summary() -> str:
    t = TOTALS
    return (f"{t['bad inputs']} bad inputs, {t['clear errors']} clear errors, {t['tracebacks']} tracebacks, "
            f"{t['silent wrong']} silent wrong; {t['faults']} faults, {t['survived']} survived")


def pytest_terminal_summary(terminalreporter):
    if TOTALS:
        terminalreporter.write_line(f"reliability battery: {summary()}")


@pytest.fixture(scope="session")
def model():
    return tiny_model()


@pytest.fixture(scope="session")
def cases():
    return make_cases(2)


@pytest.fixture(scope="session")
def reference(tmp_path_factory, model, cases):
    """An uninterrupted capture every fault run must reproduce."""
    path = tmp_path_factory.mktemp("ref") / "ref.zarr"
    capture_to_store(model, cases, path, taps=TAPS)
    return path


@pytest.fixture
def copy_of(tmp_path):
    def copy(src):
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst
    return copy
