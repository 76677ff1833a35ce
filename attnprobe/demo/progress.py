"""Progress of a multi-step run: which step, how far into it, how many steps in all.

:class:`Steps` walks a plan of named steps known in advance. Entering a step reports
``(step, index, steps, completed=0, total, unit)`` at once, so a display never shows an unknown
total; the step advances in its own unit (optimisation steps, cases, forwards, crops, figures)
through the callable it yields; leaving it reports ``completed == total``. Every report is one
:class:`ProgressEvent` passed to a callback, so the sequence can be tested without a terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from attnprobe.errors import ConfigError

__all__ = ["ProgressEvent", "OnProgress", "Advance", "Steps"]


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report.

    Attributes
    ----------
    step
        Name of the current step (``"fine-tune smit-base"``).
    index, steps
        1-based position of the step in the plan, and the number of steps in the plan.
    completed, total
        Units done in this step, and units it has (``total >= 1``, never unknown).
    unit
        What a unit is: ``"steps"``, ``"cases"``, ``"forwards"``, ``"crops"``, ``"figures"`` ...
    """

    step: str
    index: int
    steps: int
    completed: int
    total: int
    unit: str


OnProgress = Callable[[ProgressEvent], None]
Advance = Callable[..., None]
"""``advance(completed=None, total=None, *, by=1)``: ``by`` units more (no positional arguments),
or set the units done and, when the step learns its true size, the total."""


class Steps:
    """Run the named steps of a plan in order, timing each and reporting progress.

    ``timings`` holds each step's wall time and ``cpu_timings`` the CPU time (user + system,
    every thread of the process) it used: on a shared machine the second is what the step
    costs, the first what it took.

    Parameters
    ----------
    plan
        Every step name, in the order the steps will run.
    log
        Message sink: a line when a step starts and one with its wall time when it ends.
    on_progress
        Receives every :class:`ProgressEvent`.
    """

    def __init__(self, plan: Sequence[str], *, log: Callable[[str], None],
                 on_progress: OnProgress | None = None) -> None:
        if len(set(plan)) != len(plan):
            raise ConfigError("a step plan names each step once", expected="distinct step names",
                              got=", ".join(plan))
        self.plan = list(plan)
        self.log = log
        self.on_progress = on_progress or (lambda _event: None)
        self.timings: dict[str, float] = {}
        self.cpu_timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str, *, total: int = 1, unit: str = "steps") -> Iterator[Advance]:
        """Enter the step ``name`` of the plan; yield its ``advance`` callable."""
        if name not in self.plan:
            raise ConfigError("step not in the plan", expected=", ".join(self.plan), got=repr(name))
        index = self.plan.index(name) + 1
        state = {"completed": 0, "total": max(1, int(total))}

        def emit() -> None:
            self.on_progress(ProgressEvent(name, index, len(self.plan), state["completed"], state["total"], unit))

        def advance(completed: int | None = None, total: int | None = None, *, by: int = 1) -> None:
            if total is not None:
                state["total"] = max(1, int(total))
            if completed is not None:
                state["completed"] = int(completed)
            elif total is None:
                state["completed"] += int(by)
            state["total"] = max(state["total"], state["completed"])
            emit()

        self.log(f"{name} ...")
        emit()
        t0, c0 = time.perf_counter(), time.process_time()
        yield advance
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if state["completed"] != state["total"]:
            state["completed"] = state["total"]
            emit()
        self.timings[name] = self.timings.get(name, 0.0) + seconds
        self.cpu_timings[name] = self.cpu_timings.get(name, 0.0) + cpu
        self.log(f"{name}: {seconds:.1f} s (CPU {cpu:.1f} s)")
