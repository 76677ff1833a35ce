"""``attnprobe demo``: the whole toolkit on generated phantoms, ending in figures and a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from attnprobe.cli.common import console, err_console, one_line_errors

if TYPE_CHECKING:  # rich and the demo package (torch) are imported when the demo runs
    from rich.progress import TaskID

    from attnprobe.demo.progress import ProgressEvent

Format = Literal["png", "pdf", "svg"]

HELP = """Run everything attnprobe is for on generated pelvic phantoms.

Generates MRI- and CT-like phantoms, loads tiny CT-pretrained Swin UNETR and SMIT checkpoints
(attnprobe/demo/pretrained; trained first when missing), fine-tunes them on MRI with the base and act
presets, captures a store, runs the ADI padding sweep and CKA feature reuse, evaluates detection,
Dice and HD95, measures crop token efficiency, clusters the tumors, then writes figures/ and
report.md / report.html in --out. --quick is sized for five minutes on two idle CPU cores (the
report states the run's measured wall and CPU time and the load); the default uses more cases
and longer fine-tuning.

Example: attnprobe demo --quick --out attnprobe-demo
"""


def register(app: typer.Typer) -> None:
    """Add the ``demo`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("demo", help=HELP)(demo)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the heap instead of returning it to the OS.

    Training a 3D network on the CPU allocates and frees activations of tens of MB every
    step; with glibc's defaults each one is a fresh ``mmap``/``munmap`` and the page faults
    that follow cost about a third of the demo's CPU time (measured: sys 160 s of 480 s CPU
    for ``--quick``). Raising the mmap and trim thresholds to 1 GiB removes most of it.
    A no-op (returning False) where glibc's ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


@one_line_errors
def demo(
    out: Annotated[Path, typer.Option(help="Run folder (data, runs, figures, report).")] = Path("attnprobe-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="Small settings, sized for 5 minutes on 2 idle CPU cores.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", hidden=True,
                                        help="Every step at its smallest (test suite).")] = False,
    pretrained: Annotated[Path | None, typer.Option(
        help="Folder with the CT checkpoints (default: the ones shipped in the package).")] = None,
    format: Annotated[Format, typer.Option("--format", help="Figure format (the HTML report inlines PNG/SVG).")] = "png",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Run the demo (see the command help)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    import torch

    from attnprobe.demo.pipeline import run_demo, settings_for
    from attnprobe.errors import ConfigError

    if quick and smoke:
        raise ConfigError("--quick and --smoke exclude each other", expected="one of them", got="both")
    keep_freed_memory()
    if threads is not None:
        if threads < 1:
            raise ConfigError("bad --threads", expected="a positive number", got=str(threads))
        torch.set_num_threads(threads)
    settings = settings_for("smoke" if smoke else "quick" if quick else "full")
    with DemoDisplay() as display:
        result = run_demo(out, settings=settings, pretrained=pretrained, figure_format=format, log=display.log,
                          on_progress=display.update)
    err_console.print(f"{len(result.figures)} figures in {out / 'figures'}", highlight=False)
    console.print(f"demo ({settings.tier}) finished in {result.seconds:.0f} s: {result.report_md} and "
                  f"{result.report_html}", highlight=False)


class DemoDisplay:
    """One live display on stderr: the whole run (step i of n, elapsed) over the current step's
    own bar (its units done of its total, elapsed, time left).

    Each step gets a fresh bar, so its elapsed time and estimate start with it and a finished
    step never leaves a frozen bar behind; log lines print above the bars.
    """

    def __init__(self) -> None:
        import time

        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        class StepRemaining(TimeRemainingColumn):
            """Time left in the current step only: steps differ too much in cost for an overall estimate."""

            def render(self, task):
                return "" if task.fields.get("overall") else super().render(task)

        self._t0 = time.perf_counter()
        self.bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), StepRemaining(),
                             console=err_console, transient=False)
        self.overall = self.bars.add_task("demo", total=None, unit="steps", overall=True)
        self.current: TaskID | None = None
        self.current_step: str | None = None

    def __enter__(self) -> DemoDisplay:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)  # type: ignore[arg-type]

    def log(self, message: str) -> None:
        """Print a line above the bars, with the seconds since the start."""
        import time

        self.bars.console.print(f"[{time.perf_counter() - self._t0:6.1f} s] {message}", highlight=False, markup=False)

    def update(self, event: ProgressEvent) -> None:
        """Show one :class:`~attnprobe.demo.progress.ProgressEvent`."""
        done_steps = event.index - 1 + (event.completed >= event.total)
        self.bars.update(self.overall, description=f"demo: step {event.index}/{event.steps}",
                         completed=done_steps, total=event.steps)
        if event.step != self.current_step:
            if self.current is not None:
                self.bars.remove_task(self.current)
            self.current = self.bars.add_task(f"  {event.step}", total=event.total, unit=event.unit)
            self.current_step = event.step
        if self.current is not None:  # always set by now: the first event starts a step
            self.bars.update(self.current, completed=event.completed, total=event.total)
