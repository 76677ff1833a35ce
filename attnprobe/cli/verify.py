"""``attnprobe verify``: check every chunk of a capture store; ``--repair`` un-marks bad samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from attnprobe.cli.common import console, err_console, one_line_errors


def register(app: typer.Typer) -> None:
    """Add the ``verify`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("verify")(verify)


@one_line_errors
def verify(
    store: Annotated[Path, typer.Argument(help="Capture store (.zarr) to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    repair: Annotated[bool, typer.Option(help="Mark bad samples as not done, so that rerunning the same "
                                              "capture recaptures just those.")] = False,
) -> None:
    """Check every chunk of STORE (presence, CRC32C checksum, decoding, finite values).

    Exit 0 when every done sample is intact (or, with --repair, once the bad ones are marked
    not done), 1 when bad samples remain, 2 when the store cannot be read at all.
    """
    from rich.markup import escape
    from rich.table import Table

    from attnprobe.store.verify import repair_store, verify_store

    report = verify_store(store)
    if repair:
        report = repair_store(report)
    if as_json:
        console.print_json(json.dumps(report.as_dict()))
    else:
        if report.bad:
            table = Table("sample", "case", "block", "array", "chunk", "problem", title=f"bad samples of {store}")
            for bad in report.bad:
                for p in bad.problems:
                    table.add_row(str(bad.sample), escape(bad.case), p.block, p.array, escape(p.chunk),
                                  escape(p.problem))
            console.print(table)
        console.print(f"{store}: schema {report.schema}, {report.done} of {report.samples} samples done, "
                      f"{report.chunks} chunks checked, {len(report.bad)} bad sample(s)", highlight=False,
                      markup=False)
        if report.repaired:
            err_console.print(f"marked {len(report.bad)} sample(s) as not done; rerun the same capture to "
                              "recapture them", highlight=False, markup=False)
        elif report.bad:
            err_console.print(f"fix: attnprobe verify {store} --repair, then rerun the same capture",
                              highlight=False, markup=False)
    if report.bad and not report.repaired:
        raise typer.Exit(code=1)
