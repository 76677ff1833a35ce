"""``attnprobe inspect``: dry-load a checkpoint and show what it is."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from attnprobe.cli.common import (
    CompatOption,
    console,
    err_console,
    load_checkpoint_quietly,
    non_finite_tensors,
    one_line_errors,
    print_json,
)
from attnprobe.cli.options import JsonOption, checkpoint_facts


def image_kind(path: Path) -> str | None:
    """``"NIfTI"`` / ``"DICOM"`` when ``path`` is a medical image (by name or first bytes), else None."""
    from attnprobe.data.io import is_nifti

    if path.is_dir():
        return None
    if is_nifti(path) or path.suffix.lower() == ".dcm":
        return "DICOM" if path.suffix.lower() == ".dcm" else "NIfTI"
    try:
        with open(path, "rb") as fh:
            head = fh.read(352)
        if head[:2] == b"\x1f\x8b":  # gzip: look inside for a NIfTI header
            with gzip.open(path, "rb") as fh:
                head = fh.read(352)
    except OSError:
        return None
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1", b"n+2"):
        return "NIfTI"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    return None


@one_line_errors
def inspect_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (.pt/.pth/.safetensors).")],
    arch: Annotated[str | None, typer.Option(help="Architecture; guessed from the keys when omitted.")] = None,
    allow_partial: Annotated[bool, typer.Option(help="Accept missing backbone keys.")] = False,
    show_keys: Annotated[int, typer.Option(help="How many keys of each list to print.")] = 8,
    compat: CompatOption = None,
    json_output: JsonOption = False,
) -> None:
    """Dry-load CHECKPOINT (no data): inferred architecture, compat mode, parameter count, load report.

    Shows the ROI and preprocessing the checkpoint records (what other commands use by default)
    and any tensor holding NaN or inf.

    Example: attnprobe inspect runs/mri/last.pt --json
    """
    from attnprobe.errors import CheckpointError

    kind = image_kind(checkpoint) if checkpoint.exists() else None
    if kind is not None:
        raise CheckpointError(f"{checkpoint.name} is a {kind} image, not a checkpoint",
                              expected="a checkpoint file (.pt/.pth/.ckpt/.safetensors)", got=f"a {kind} image",
                              fix="inspect a model checkpoint; images are --data of capture, adi, cka or evaluate")
    model, report = load_checkpoint_quietly(checkpoint, arch, allow_partial=allow_partial, compat=compat)
    facts = checkpoint_facts(checkpoint)
    n_params = sum(p.numel() for p in model.parameters())
    # the checkpoint's own ROI wins over the architecture preset's default in the config
    config: dict[str, Any] = {**report.config, **({"roi": facts.roi} if facts.roi else {})}
    bad = non_finite_tensors(model.state_dict())
    if json_output:
        print_json({"checkpoint": str(checkpoint), "arch": report.arch, "format": report.format,
                    "parameters": n_params, "compat": report.compat, "compat_reason": report.compat_reason,
                    "config": config, "training_preprocessing": facts.stored, "sha256": report.sha256,
                    "matched": len(report.matched), "missing": list(report.missing),
                    "missing_backbone": list(report.missing_backbone), "unexpected": list(report.unexpected),
                    "ignored": list(report.ignored),
                    "non_finite": [{"tensor": name, "values": n} for name, n in bad]})
        return
    table = Table(title=escape(f"{checkpoint.name}: {report.arch} ({report.format})"), show_header=False)
    table.add_row("parameters", f"{n_params:,}")
    table.add_row("compat", escape(f"{report.compat} ({report.compat_reason})"))
    for key, value in config.items():
        if key == "compat":
            continue  # its own row above
        table.add_row(escape(key), escape("x".join(map(str, value)) if key == "roi" else str(value)))
    if facts.stored:
        table.add_row("trained with", escape(", ".join(f"{k}={'x'.join(map(str, v)) if k == 'roi' else v}"
                                                      for k, v in facts.stored.items())))
    table.add_row("sha256", report.sha256[:16] + "…")
    table.add_row("matched", str(len(report.matched)))
    table.add_row("missing", f"{len(report.missing)} ({len(report.missing_backbone)} backbone)")
    table.add_row("unexpected", str(len(report.unexpected)))
    table.add_row("ignored", f"{len(report.ignored)} (known self-supervised heads)")
    table.add_row("non-finite", f"[bold red]{len(bad)} tensor(s) with NaN/inf[/]" if bad else "none")
    console.print(table)
    for label, keys in (("missing", report.missing), ("unexpected", report.unexpected), ("ignored", report.ignored)):
        if keys:
            shown = ", ".join(keys[:show_keys]) + (" …" if len(keys) > show_keys else "")
            console.print(f"[bold]{label}:[/] {escape(shown)}", highlight=False)
    if bad:
        shown = ", ".join(f"{name} ({n})" for name, n in bad[:show_keys]) + (" …" if len(bad) > show_keys else "")
        err_console.print(f"warning: {len(bad)} tensor(s) hold NaN or inf values: {shown}; every output of "
                          "this model would be NaN", highlight=False, markup=False, soft_wrap=True)
