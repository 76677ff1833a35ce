"""``attnprobe demo``: the whole toolkit on generated data, in one call.

The demo generates pelvic phantoms (MRI-like and CT-like renderings of one anatomy), loads tiny
CT-"pretrained" Swin UNETR and SMIT checkpoints (shipped in ``attnprobe/demo/pretrained``, or
regenerated), fine-tunes them on the MRI rendering with the ``base`` and ``act`` presets,
captures a store, runs the ADI padding sweep and CKA feature reuse, evaluates detection, Dice
and HD95, measures the token efficiency of the anisotropic crop and clusters the tumors, then
draws every figure and writes ``report.md`` and ``report.html``.

- :mod:`attnprobe.demo.pipeline` -- the steps, each a small library function, and
  :func:`~attnprobe.demo.pipeline.run_demo` that chains them.
- :mod:`attnprobe.demo.report` -- the results-section report built from a run folder.
- :mod:`attnprobe.demo.progress` -- the step plan and the progress events of a run.

Example
-------
>>> from attnprobe.demo import run_demo, settings_for
>>> result = run_demo("runs/demo", settings=settings_for("quick"))  # doctest: +SKIP
>>> result.report_md  # doctest: +SKIP
PosixPath('runs/demo/report.md')
"""

from __future__ import annotations

from attnprobe.demo.pipeline import (
    TIERS,
    DemoResult,
    DemoSettings,
    PretrainSpec,
    Tier,
    demo_plan,
    run_demo,
    settings_for,
)
from attnprobe.demo.progress import ProgressEvent

__all__ = ["TIERS", "Tier", "DemoSettings", "DemoResult", "PretrainSpec", "ProgressEvent", "demo_plan", "run_demo",
           "settings_for"]
