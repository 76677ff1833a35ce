"""Shared CLI plumbing: one-line errors, option parsing, model resolution, progress bars."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

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

if TYPE_CHECKING:
    import torch

err_console = Console(stderr=True)
console = Console()

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn an AttnprobeError into one red line on stderr and exit code 2 (no traceback).

    Under torchrun every rank prints its line, rank 0 plainly and the others prefixed with
    ``[rank N]``: torchrun stops the other ranks as soon as one fails, so a line printed by
    rank 0 alone could be lost when another rank fails first.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AttnprobeError as exc:
            rank = _rank()
            prefix = f"\\[rank {rank}] " if rank else ""  # escaped: [..] is rich markup
            err_console.print(f"{prefix}[bold red]error:[/] {exc}", soft_wrap=True, highlight=False, markup=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def _rank() -> int:
    """Rank in the process group; before the group is up, torchrun's ``RANK`` (0 in one process)."""
    from attnprobe import dist

    if dist.is_distributed():
        return dist.rank()
    return int(os.environ.get("RANK", "0"))


def parse_size3(text: str, *, option: str, expected: str) -> tuple[int, int, int]:
    """``"96,96,64"`` (or ``"96x96x64"``, or one size for all axes) -> (96, 96, 64).

    ``option`` and ``expected`` word the error for anything else.
    """
    try:
        parts = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        parts = ()
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or min(parts) <= 0:
        raise ConfigError(f"cannot read {option}", expected=expected, got=repr(text))
    return parts


def parse_roi(text: str | None) -> tuple[int, int, int] | Literal["full"] | None:
    """``"96,96,64"`` -> (96, 96, 64); ``"full"`` stays; None stays."""
    if text is None:
        return None
    if text == "full":
        return "full"
    return parse_size3(text, option="--roi", expected="three positive sizes like 96,96,64 (or one, or 'full')")


def check_device(device: str) -> torch.device:
    """The ``--device`` option as a torch device that exists on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError("cannot read --device", expected="cpu, cuda or cuda:N", got=repr(device)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA device is available", expected="cpu here",
                          got=repr(device), fix="use --device cpu")
    return dev


def init_distributed(device: str) -> str:
    """Join torchrun's process group (nothing in one process); return the device this rank uses.

    Under torchrun every ``cuda`` device (``cuda`` or ``cuda:N``) means ``cuda:LOCAL_RANK``,
    one GPU per rank; otherwise ``device`` comes back as given.
    """
    from attnprobe import dist

    dist.init_from_env(device=device)
    if device.startswith("cuda") and dist.is_distributed():
        return f"cuda:{dist.local_rank()}"
    return device


def check_limit(limit: int | None) -> None:
    """Refuse a ``--limit`` below 1 (None: no limit)."""
    if limit is not None and limit < 1:
        raise ConfigError("bad --limit", expected="a positive number of cases", got=str(limit))


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


Compat = Literal["original", "current"]
CompatOption = Annotated[Compat | None, typer.Option(
    "--compat", help="Semantics to compute the checkpoint in: 'original' (the published training code: "
    "MONAI < 1.5 patch merging, the original SMIT window merge) or 'current'. Default: what the checkpoint "
    "records; 'original' for checkpoints attnprobe did not write.")]


def load_checkpoint_quietly(path: Any, arch: str | None, **options: Any):
    """``load_checkpoint``, with its compat notice printed as one line on rank 0 instead of a warning."""
    import warnings

    from attnprobe.models import CompatNotice, load_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CompatNotice)
        model, report = load_checkpoint(path, arch, **options)
    if report.notice and _rank() == 0:
        err_console.print(f"note: {Path(report.path).name}: {report.notice}", highlight=False, markup=False)
    return model, report


def load_model_ref(name_or_path: str, *, arch: str | None = None, allow_partial: bool = False,
                   compat: str | None = None):
    """Resolve a model name from attnprobe.toml or a checkpoint path, and load it.

    Returns ``(model, report, roi)`` where ``roi`` is the workspace's ROI for that model,
    else the ROI in the checkpoint's config, else None.
    """
    from attnprobe.workspace import resolve_model

    ref = resolve_model(name_or_path)
    model, report = load_checkpoint_quietly(ref.checkpoint, arch or ref.arch, allow_partial=allow_partial,
                                            compat=compat)
    roi = ref.roi or model.attnprobe_config.get("roi")
    return model, report, (tuple(roi) if roi else None)


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
