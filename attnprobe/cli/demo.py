"""``attnprobe demo``: the whole toolkit on generated phantoms, ending in figures and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import console, err_console, one_line_errors, progress_bar

Format = Literal["png", "pdf", "svg"]

HELP = """Run everything attnprobe is for on generated pelvic phantoms.

Generates MRI- and CT-like phantoms, loads tiny CT-pretrained Swin UNETR and SMIT checkpoints
(attnprobe/demo/pretrained; trained first when missing), fine-tunes them on MRI with the base and act
presets, captures a store, runs the ADI padding sweep and CKA feature reuse, evaluates detection,
Dice and HD95, measures crop token efficiency, clusters the tumors, then writes figures/ and
report.md / report.html in --out. --quick finishes in under five minutes on two CPU cores; the
default uses more cases and longer fine-tuning.

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
    quick: Annotated[bool, typer.Option("--quick", help="Small settings: under 5 minutes on 2 CPU cores.")] = False,
    smoke: Annotated[bool, typer.Option("--smoke", hidden=True,
                                        help="Every step at its smallest (test suite).")] = False,
    pretrained: Annotated[Path | None, typer.Option(
        help="Folder with the CT checkpoints (default: the ones shipped in the package).")] = None,
    format: Annotated[Format, typer.Option("--format", help="Figure format (the HTML report inlines PNG/SVG).")] = "png",
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
) -> None:
    """Run the demo (see the command help)."""
    import time

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
    t0 = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task("demo", total=None, status="")

        def log(message: str) -> None:
            bar.console.print(f"[{time.perf_counter() - t0:6.1f} s] {message}", highlight=False, markup=False)

        def progress(name: str, done: int, total: int) -> None:
            bar.update(task, description=name, completed=done, total=total, status="")

        result = run_demo(out, settings=settings, pretrained=pretrained, figure_format=format, log=log,
                          progress=progress)
    err_console.print(f"{len(result.figures)} figures in {out / 'figures'}", highlight=False)
    console.print(f"demo ({settings.tier}) finished in {result.seconds:.0f} s: {result.report_md} and "
                  f"{result.report_html}", highlight=False)
