"""``attnprobe inspect``: dry-load a checkpoint and show what it is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from attnprobe.cli.common import CompatOption, console, load_checkpoint_quietly, one_line_errors


@one_line_errors
def inspect_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (.pt/.pth/.safetensors).")],
    arch: Annotated[str | None, typer.Option(help="Architecture; guessed from the keys when omitted.")] = None,
    allow_partial: Annotated[bool, typer.Option(help="Accept missing backbone keys.")] = False,
    show_keys: Annotated[int, typer.Option(help="How many keys of each list to print.")] = 8,
    compat: CompatOption = None,
) -> None:
    """Dry-load CHECKPOINT (no data): inferred architecture, compat mode, parameter count, load report."""
    model, report = load_checkpoint_quietly(checkpoint, arch, allow_partial=allow_partial, compat=compat)
    n_params = sum(p.numel() for p in model.parameters())
    table = Table(title=f"{checkpoint.name}: {report.arch} ({report.format})", show_header=False)
    table.add_row("parameters", f"{n_params:,}")
    table.add_row("compat", f"{report.compat} ({report.compat_reason})")
    for key, value in report.config.items():
        table.add_row(key, str(value))
    table.add_row("sha256", report.sha256[:16] + "…")
    table.add_row("matched", str(len(report.matched)))
    table.add_row("missing", f"{len(report.missing)} ({len(report.missing_backbone)} backbone)")
    table.add_row("unexpected", str(len(report.unexpected)))
    table.add_row("ignored", f"{len(report.ignored)} (known self-supervised heads)")
    console.print(table)
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected), ("ignored", report.ignored)):
        if keys:
            shown = ", ".join(keys[:show_keys]) + (" …" if len(keys) > show_keys else "")
            console.print(f"[bold]{label}:[/] {shown}", highlight=False)
