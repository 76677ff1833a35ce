"""``attnprobe figures``: draw every figure the outputs in a run folder allow."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import console, err_console, one_line_errors, plain_numbers

Format = Literal["png", "pdf", "svg"]


def register(app: typer.Typer) -> None:
    """Add the ``figures`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("figures")(figures)


@one_line_errors
def figures(
    run_dir: Annotated[Path, typer.Argument(help="Folder holding outputs of attnprobe adi, cka, evaluate, data "
                                                 "extent, demo (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Folder for the figures and their one-line captions (.txt).")],
    format: Annotated[Format, typer.Option("--format", help="Image format.")] = "png",
    stores: Annotated[bool, typer.Option(help="Also reduce capture stores (*.zarr) to attention-flow "
                                              "figures (reads every stored map).")] = True,
) -> None:
    """Find what RUN_DIR holds and draw every figure it can, each with a caption file.

    Example: attnprobe figures runs/ --out figures/ --format pdf
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window
    from attnprobe.figures.discover import draw_figures

    def written(record) -> None:
        err_console.print(f"{record.path.name}: {record.caption}", highlight=False, soft_wrap=True, markup=False)

    result = draw_figures(run_dir, out, fmt=format, stores=stores, on_figure=written)
    for name, reason in result.skipped:
        err_console.print(f"skipped {name}: {plain_numbers(reason)}", highlight=False, soft_wrap=True,
                          markup=False)
    console.print(f"wrote {len(result.figures)} figure(s) to {out}", highlight=False)
