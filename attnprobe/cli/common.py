"""Shared CLI plumbing: one-line errors, option parsing, model resolution, progress bars."""

from __future__ import annotations

import functools
import inspect
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

import click
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
from rich.text import Text

from attnprobe.errors import AttnprobeError, ConfigError

if TYPE_CHECKING:
    import torch

err_console = Console(stderr=True)
console = Console()


def _wide_help_when_piped() -> None:
    """Lay ``--help`` out 120 columns wide when stdout is not a terminal (a pipe, a file, a test).

    Rich's default of 80 columns there cuts long option names with "…"; a terminal keeps its
    own width, and ``TERMINAL_WIDTH`` or ``COLUMNS`` set by the user win.
    """
    import sys

    from typer import rich_utils

    if rich_utils.MAX_WIDTH is None and not os.environ.get("COLUMNS") and not sys.stdout.isatty():
        rich_utils.MAX_WIDTH = 120


_wide_help_when_piped()

F = TypeVar("F", bound=Callable[..., Any])


def one_line_errors(fn: F) -> F:
    """Turn errors into one red line on stderr: exit 2 for bad input, 1 for a run that failed.

    An :class:`AttnprobeError` (bad input: options, files, data) exits with code 2; any other
    exception (a run that failed: out of memory, a bug) with code 1. Either prints one line;
    details a message carries on further lines (a reader's tracebacks) and the Python
    traceback are printed with ``--verbose``, an option this decorator adds to the command.
    The text is printed as plain text: ``[models.NAME]`` in a message is not a style tag.

    Under torchrun every rank prints its line, rank 0 plainly and the others prefixed with
    ``[rank N]``: torchrun stops the other ranks as soon as one fails, so a line printed by
    rank 0 alone could be lost when another rank fails first.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = bool(kwargs.pop("verbose", False))
        try:
            return fn(*args, **kwargs)
        except AttnprobeError as exc:
            _print_error(exc, verbose=verbose, code=2)
            raise typer.Exit(code=2) from None
        except (typer.Exit, typer.Abort, click.exceptions.ClickException, KeyboardInterrupt):
            raise
        except Exception as exc:  # a run that failed: one line, the traceback with --verbose
            _print_error(exc, verbose=verbose, code=1)
            raise typer.Exit(code=1) from None

    # --verbose on every command that reports errors this way
    # evaluated annotations: typer reads the typer.Option inside each Annotated[...]
    params = list(inspect.signature(fn, eval_str=True).parameters.values())
    params.append(inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False,
                                    annotation=VerboseOption))
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "verbose": VerboseOption}
    return wrapper  # type: ignore[return-value]


VerboseOption = Annotated[bool, typer.Option(
    "--verbose", help="On an error, also print its details and the Python traceback.")]


def error_line(exc: BaseException) -> tuple[str, bool]:
    """One line for an error, and whether details were left out (lines after the first of a part)."""
    if isinstance(exc, AttnprobeError) and getattr(exc, "what", None):
        parts = [exc.what.rstrip(".")]
        parts += [f"{label}{value}" for label, value in (("expected ", exc.expected), ("got ", exc.got),
                                                          ("fix: ", exc.fix)) if value is not None]
    else:
        parts = [f"{type(exc).__name__}: {exc}" if str(exc).strip() else type(exc).__name__]
    parts = [plain_numbers(p) for p in parts]
    cut = [p.strip().splitlines()[0] if p.strip() else p for p in parts]
    return "; ".join(cut), cut != [p.strip() for p in parts]


_NUMPY_SCALAR = re.compile(r"\bnp\.(?:float|int|uint|bool|complex)\w*\(([^()]*)\)")


def plain_numbers(text: str) -> str:
    """``np.float64(48.0)`` -> ``48.0`` in a message (numpy >= 2 writes scalars with their type)."""
    return _NUMPY_SCALAR.sub(r"\1", text)


def _print_error(exc: BaseException, *, verbose: bool, code: int) -> None:
    import traceback

    rank = _rank()
    line, cut = error_line(exc)
    if code != 2:
        line = f"the run failed: {line}"
    if not verbose:
        line += " (details: rerun with --verbose)" if cut or code != 2 else ""
    text = Text(f"[rank {rank}] " if rank else "")
    text.append("error:", style="bold red")
    text.append(f" {line}")
    err_console.print(text, soft_wrap=True, highlight=False)
    if verbose:
        err_console.print("".join(traceback.format_exception(exc)), markup=False, highlight=False,
                          soft_wrap=True)


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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: no such CUDA device", expected=f"cuda:0..cuda:{torch.cuda.device_count() - 1}",
                          got=repr(device), fix="use --device cuda (the first device) or an index that exists")
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
        try:
            model, report = load_checkpoint(path, arch, **options)
        except Exception as exc:
            if arch is None:
                raise
            _check_arch_fits(path, arch, exc)
            raise
    if report.notice and _rank() == 0:
        err_console.print(f"note: {Path(report.path).name}: {report.notice}", highlight=False, markup=False)
    return model, report


def _check_arch_fits(path: Any, arch: str, exc: Exception) -> None:
    """After a load with ``--arch`` failed: say which architecture the keys look like, when another."""
    from attnprobe.errors import AttnprobeError, CheckpointError
    from attnprobe.models.checkpoints import _guess_arch, read_checkpoint
    from attnprobe.models.registry import available_architectures

    if arch not in available_architectures():
        return  # an unknown name: the registry's own error suggests the right one
    try:
        guess = _guess_arch(read_checkpoint(path))
    except AttnprobeError:
        return  # unreadable, or no architecture recognises it: the original error says more
    if guess != arch:
        first = exc.what if isinstance(exc, AttnprobeError) else error_line(exc)[0]
        raise CheckpointError(f"{Path(path).name} does not load as --arch {arch}: its keys look like a {guess} "
                              "checkpoint", expected=f"keys of a {arch} model", got=f"keys of a {guess} model "
                              f"({first})", fix=f"drop --arch (it is guessed from the keys) or pass --arch {guess}") from exc


def load_model_ref(name_or_path: str, *, arch: str | None = None, allow_partial: bool = False,
                   compat: str | None = None, ref: Any = None):
    """Resolve a model name from attnprobe.toml or a checkpoint path, and load it.

    Returns ``(model, report, roi)`` where ``roi`` is the workspace's ROI for that model,
    else the ROI in the checkpoint's config, else None. ``ref``: the already resolved
    :class:`~attnprobe.workspace.ModelRef`. A model with NaN or infinite weights is refused
    (every number computed from it would be NaN).
    """
    from attnprobe.workspace import resolve_model

    ref = ref if ref is not None else resolve_model(name_or_path)
    model, report = load_checkpoint_quietly(ref.checkpoint, arch or ref.arch, allow_partial=allow_partial,
                                            compat=compat)
    check_finite_weights(model, Path(report.path).name)
    roi = ref.roi or model.attnprobe_config.get("roi")
    return model, report, (tuple(roi) if roi else None)


def non_finite_tensors(tensors: Any) -> list[tuple[str, int]]:
    """``(name, count)`` of every floating tensor of a ``{name: tensor}`` mapping holding NaN or inf."""
    import torch

    bad = []
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            n = int((~torch.isfinite(t)).sum())
            if n:
                bad.append((name, n))
    return bad


def check_finite_weights(model: Any, name: str) -> None:
    """Refuse a model whose weights hold NaN or inf, naming the first such tensor."""
    from attnprobe.errors import CheckpointError

    bad = non_finite_tensors(model.state_dict())
    if bad:
        first, n = bad[0]
        raise CheckpointError(f"{name} has non-finite weights: every output would be NaN",
                              expected="finite weights (no NaN or inf)",
                              got=f"{len(bad)} tensor(s) with NaN/inf, first {first} ({n} values)",
                              fix="use an earlier checkpoint of the run; attnprobe inspect lists them all")


def print_json(obj: Any) -> None:
    """Results as JSON on stdout (NaN as null), for ``--json``: one document, nothing else on stdout."""
    import json
    import math

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if hasattr(v, "to_dict"):  # pandas Series / DataFrame
            return plain(v.to_dict())
        if hasattr(v, "tolist") and getattr(v, "ndim", 0) > 0:  # arrays
            return plain(v.tolist())
        if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:
            v = v.item()  # numpy / torch scalars
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, (str, int, float, bool)) or v is None:
            return v
        return str(v)

    console.file.write(json.dumps(plain(obj), indent=1) + "\n")
    console.file.flush()
