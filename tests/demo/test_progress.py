"""The step plan's progress events: every step reports a known total from its start, advances in
its own unit and ends complete; the overall count comes from the plan."""

from __future__ import annotations

import pytest

from attnprobe.demo import demo_plan, settings_for
from attnprobe.demo.progress import ProgressEvent, Steps
from attnprobe.errors import ConfigError


def test_steps_report_start_advance_and_end():
    events: list[ProgressEvent] = []
    lines: list[str] = []
    steps = Steps(["a", "b", "c"], log=lines.append, on_progress=events.append)
    with steps.step("a", total=3, unit="cases") as advance:
        advance()
        advance(by=2)
    with steps.step("b", total=1, unit="steps") as advance:
        advance(0, 4)  # the step learns its true size
        advance(2)
    with steps.step("c"):
        pass
    got = [(e.step, e.index, e.steps, e.completed, e.total, e.unit) for e in events]
    assert got == [("a", 1, 3, 0, 3, "cases"), ("a", 1, 3, 1, 3, "cases"), ("a", 1, 3, 3, 3, "cases"),
                   ("b", 2, 3, 0, 1, "steps"), ("b", 2, 3, 0, 4, "steps"), ("b", 2, 3, 2, 4, "steps"),
                   ("b", 2, 3, 4, 4, "steps"),  # leaving a step completes it
                   ("c", 3, 3, 0, 1, "steps"), ("c", 3, 3, 1, 1, "steps")]
    assert set(steps.timings) == set(steps.cpu_timings) == {"a", "b", "c"}
    assert lines[0] == "a ..." and lines[1].startswith("a: ") and "CPU" in lines[1]


def test_steps_refuse_an_unplanned_or_repeated_step():
    with pytest.raises(ConfigError, match="each step once"):
        Steps(["a", "a"], log=print)
    steps = Steps(["a"], log=lambda _m: None)
    with pytest.raises(ConfigError, match="not in the plan"):
        with steps.step("b"):
            pass


def test_the_plan_lists_every_model_step():
    plan = demo_plan(settings_for("quick"))
    assert plan[0] == "phantoms" and plan[-2:] == ["figures", "report"]
    for name in ("fine-tune smit-act", "ADI padding sweep swin_unetr-act", "capture smit-base", "CKA smit",
                 "evaluate swin_unetr-ct", "ablation smit-base"):
        assert name in plan
    assert "pretrain smit" in demo_plan(settings_for("quick"), pretrain=["smit"])
