"""The ``attnprobe`` command line: one module per command, each a thin call into the library.

Start-up stays light: the command modules import torch, MONAI, zarr and matplotlib only inside
the commands, so ``attnprobe --help``, ``attnprobe CMD --help`` and ``--version`` never load them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from attnprobe.cli import capture as _capture
from attnprobe.cli import inspect as _inspect
from attnprobe.environment import installed_versions

app = typer.Typer(
    name="attnprobe",
    help="Probe CT-pretrained 3D shifted-window transformers fine-tuned on MRI: capture attention, "
    "measure attention dilution (ADI) and feature reuse (CKA), train with the interventions, draw figures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



def _print_version(value: bool) -> None:
    if value:
        typer.echo(" ".join(f"{k} {v}" for k, v in installed_versions().items()))
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the attnprobe, torch and MONAI versions and exit.")] = False,
) -> None:
    """Probe CT-pretrained 3D shifted-window transformers fine-tuned on MRI."""


app.command("capture")(_capture.capture)
app.command("inspect")(_inspect.inspect_checkpoint)


def _register_optional() -> None:
    """Commands added by later modules register themselves here when present."""
    import importlib

    for name in ("adi", "cka", "train", "evaluate", "ablate", "data", "figures", "demo", "verify"):
        try:
            module = importlib.import_module(f"attnprobe.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"attnprobe.cli.{name}":
                raise
            continue
        module.register(app)


_register_optional()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
