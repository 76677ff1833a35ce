"""Shared CLI plumbing: one-line errors, option parsing, model resolution, progress bars."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from attnprobe.errors import AttnprobeError, ConfigError

err_console = Console(stderr=True)
console = Console()

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn an AttnprobeError into one red line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AttnprobeError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False, markup=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_roi(text: str | None) -> tuple[int, int, int] | str | None:
    """``"96,96,64"`` -> (96, 96, 64); ``"full"`` stays; None stays."""
    if text is None or text == "full":
        return text
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or min(parts) <= 0:
        raise ConfigError("cannot read --roi", expected="three positive sizes like 96,96,64 (or one, or 'full')",
                          got=repr(text))
    return parts  # type: ignore[return-value]


def parse_int_list(text: str, *, option: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"cannot read {option}", expected="comma-separated integers like 0,16,32",
                          got=repr(text)) from None


def progress_bar(*, disable: bool = False) -> Progress:
    """A rich progress bar on stderr; tasks need a ``status`` field."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, transient=False, disable=disable)


def load_model_ref(name_or_path: str, *, arch: str | None = None, allow_partial: bool = False):
    """Resolve a model name from attnprobe.toml or a checkpoint path, and load it.

    Returns ``(model, report, roi)`` where ``roi`` is the workspace's ROI for that model,
    else the ROI in the checkpoint's config, else None.
    """
    from attnprobe.models import load_checkpoint
    from attnprobe.workspace import resolve_model

    ref = resolve_model(name_or_path)
    model, report = load_checkpoint(ref.checkpoint, arch or ref.arch, allow_partial=allow_partial)
    roi = ref.roi or model.attnprobe_config.get("roi")
    return model, report, (tuple(roi) if roi else None)


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
