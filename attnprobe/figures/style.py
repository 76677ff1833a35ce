"""One look for every attnprobe figure: seaborn "paper" context, white grid, colour-blind-safe.

:func:`paper_style` is the only theme entry point; every figure function of
:mod:`attnprobe.figures` draws inside it, so a figure looks the same whether it is made by the
CLI, an analysis script or a notebook. The style is applied with ``matplotlib.rc_context`` and
undone on exit: importing or calling the figure functions never changes the user's global
``rcParams`` and never selects a backend.

The module also holds the small helpers the figure modules share (column checks, axes
bookkeeping, palettes). They are not re-exported by :mod:`attnprobe.figures`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, ParamSpec, TypeVar, cast

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from attnprobe.errors import ConfigError, DataError, check_option

__all__ = [
    "Context",
    "paper_style",
    "PALETTE",
    "SEQUENTIAL_CMAP",
    "MARKERS",
    "LINESTYLES",
    "palette",
]

Context = Literal["paper", "notebook", "talk"]
CONTEXTS: tuple[Context, ...] = ("paper", "notebook", "talk")

PALETTE = "colorblind"
"""Seaborn's colour-blind-safe qualitative palette (Okabe–Ito-like), used for categories."""

SEQUENTIAL_CMAP = "viridis"
"""Perceptually uniform, colour-blind-safe colormap for 0–1 heatmaps."""

MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X", "*")
"""Markers cycled with the palette so categories also differ in greyscale print."""

LINESTYLES: tuple[str, ...] = ("-", "--", "-.", ":")
"""Line styles cycled with the palette for the same reason."""


@contextmanager
def paper_style(*, context: Context = "paper", font_scale: float = 1.25) -> Iterator[dict[str, Any]]:
    """Temporarily apply the attnprobe figure theme.

    Seaborn's ``whitegrid`` axes style and the given plotting context, the colour-blind palette
    as the colour cycle, bold-free titles and a 200 dpi ``savefig`` default. Everything is
    restored on exit.

    Parameters
    ----------
    context
        Seaborn plotting context; ``"paper"`` (default) for figures of a manuscript,
        ``"notebook"`` or ``"talk"`` for larger text.
    font_scale
        Multiplier on the context's font sizes; the default keeps "paper" text legible at a
        7-inch figure width.

    Yields
    ------
    dict
        The rc parameters in force inside the block.

    Examples
    --------
    >>> from attnprobe.figures import paper_style
    >>> with paper_style(context="talk"):
    ...     pass  # any matplotlib drawing here uses the theme
    """
    if context not in CONTEXTS:
        raise ConfigError("unknown plotting context", expected=" | ".join(map(repr, CONTEXTS)),
                          got=repr(context), fix="pass context='paper', 'notebook' or 'talk'")
    if not np.isfinite(font_scale) or font_scale <= 0:
        raise ConfigError("font_scale must be a positive number", expected="> 0", got=repr(font_scale),
                          fix="pass e.g. font_scale=1.25")
    rc: dict[Any, Any] = {}  # matplotlib types the keys as a Literal of every rc name
    rc.update(sns.axes_style("whitegrid"))
    rc.update(sns.plotting_context(context, font_scale=font_scale))
    rc.update({
        "axes.prop_cycle": cycler(color=sns.color_palette(PALETTE)),
        "axes.titlepad": 6.0,
        "axes.edgecolor": "0.35",
        "grid.color": "0.9",
        "image.cmap": SEQUENTIAL_CMAP,
        "legend.frameon": False,
        "figure.dpi": 100,
        "savefig.dpi": 200,
        "savefig.facecolor": "white",
        "figure.facecolor": "white",
        "pdf.fonttype": 42,  # editable text in vector output
        "svg.fonttype": "none",
    })
    with mpl.rc_context(rc):
        yield rc


P = ParamSpec("P")
R = TypeVar("R")


def styled(func: Callable[P, R]) -> Callable[P, R]:
    """Decorator: run a figure function inside :func:`paper_style` (defaults)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with paper_style():
            return func(*args, **kwargs)

    return wrapper


def palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` colours of the colour-blind palette (cycled when ``n`` exceeds its 10 colours)."""
    base = sns.color_palette(PALETTE)
    return [base[i % len(base)] for i in range(max(int(n), 0))]


# --------------------------------------------------------------------------- shared helpers


def require_frame(frame: Any, columns: Sequence[str], *, what: str, fix: str) -> pd.DataFrame:
    """Check that ``frame`` is a non-empty DataFrame holding ``columns``; return it.

    Raises
    ------
    DataError
        Not a DataFrame, missing columns, or no rows.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"{what} takes a pandas DataFrame", expected="pandas.DataFrame",
                        got=type(frame).__name__, fix=fix)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{what} needs columns the frame lacks", expected=", ".join(columns),
                        got=f"columns {list(map(str, frame.columns))} (missing {missing})", fix=fix)
    if frame.empty:
        raise DataError(f"{what} got an empty frame", expected="at least one row", got="0 rows", fix=fix)
    return frame


def require_unique(frame: pd.DataFrame, keys: Sequence[str], *, what: str, fix: str) -> None:
    """Raise :class:`DataError` when several rows share the same ``keys`` (nothing is averaged)."""
    dup = frame.duplicated(subset=list(keys), keep=False)
    if dup.any():
        example = frame.loc[dup, list(keys)].iloc[0].to_dict()
        raise DataError(f"{what} needs one row per ({', '.join(keys)})", expected="unique rows",
                        got=f"{int(dup.sum())} rows sharing their keys, e.g. {example}", fix=fix)


_S = TypeVar("_S", bound=str)


def choice(value: _S, name: str, options: Iterable[str]) -> _S:
    """Check a ``Literal`` option; raise :class:`ConfigError` naming the allowed values."""
    check_option(name, value, tuple(options))
    return cast(_S, str(value))  # the same text as a plain str


def count(n: int | None, noun: str) -> str:
    """``"1 case"``, ``"3 cases"``: a number with its noun in the right number; ``"? cases"`` for ``None``."""
    return f"{n} {noun}" if n == 1 else f"{'?' if n is None else n} {noun}s"


def unique_in_order(values: Iterable[Any]) -> list[Any]:
    """Distinct values in first-seen order (pandas ``unique`` keeps order; NaN kept once)."""
    return list(pd.unique(pd.Series(list(values), dtype=object)))


def figure_and_axes(ax: Axes | Sequence[Axes] | np.ndarray | None, n: int, *, what: str,
                    figsize: tuple[float, float], sharey: bool = False) -> tuple[Figure, list[Axes]]:
    """Return ``(figure, n axes)``: new constrained-layout axes in one row, or the caller's.

    A caller's axes must number ``n`` and belong to one figure.
    """
    if ax is None:
        import matplotlib.pyplot as plt  # pyplot only here, so importing never picks a backend

        fig, grid = plt.subplots(1, n, figsize=figsize, layout="constrained", sharey=sharey, squeeze=False)
        return fig, list(grid.ravel())
    axes = [ax] if isinstance(ax, Axes) else list(np.asarray(ax, dtype=object).ravel())
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        raise ConfigError(f"{what} needs one Axes per panel", expected=f"{n} matplotlib Axes",
                          got=f"{len(axes)} object(s) of type {sorted({type(a).__name__ for a in axes})}",
                          fix="pass ax=None to create the figure, or one Axes per panel")
    figs = {id(a.figure) for a in axes}
    if len(figs) != 1:
        raise ConfigError(f"{what} draws into one figure", expected="axes of a single figure",
                          got=f"axes from {len(figs)} figures", fix="pass axes of one figure")
    return cast(Figure, axes[0].figure), axes  # the axes' one figure (checked above)
