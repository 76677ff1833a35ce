"""The ``attnprobe`` command line: one module per command, each a thin call into the library."""

from __future__ import annotations

import sys

import typer

from attnprobe.cli import capture as _capture
from attnprobe.cli import inspect as _inspect

app = typer.Typer(
    name="attnprobe",
    help="Probe CT-pretrained 3D shifted-window transformers fine-tuned on MRI: capture attention, "
    "measure attention dilution (ADI) and feature reuse (CKA), train with the interventions, draw figures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

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
