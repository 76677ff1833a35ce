"""Figures a paper needs: the multi-panel main figure, attention on the anatomy from capture
stores (docs/store.md), and the cross-model figures.

- :func:`main_figure`: (a) model ADI against input padding, base vs act, per backbone, with
  case-bootstrap 95% bands; (b) CKA diagonal of each fine-tuned model with its bootstrap
  interval and the random-init baseline band; (c) detection rate with bootstrap intervals.
- :func:`store_attention` reads one sample's attention of one block from a capture store that
  kept its inputs (``keep_inputs``, docs/store.md) and maps it onto the input voxels;
  :func:`attention_padding_pair` draws two of them (padding 0 and the largest padding of the
  same case) side by side: tumor outlined, axes in mm, one colour scale from robust percentiles.
- :func:`adi_vs_dice`: per case, model ADI against Dice at each padding, one colour per model.
- :func:`cka_panels`: every CKA matrix of a run in one figure.
- :func:`prediction_overlays`: prediction against the reference on the MRI, one panel per model.

Every figure states n in its titles and draws intervals where there is uncertainty; the
intervals are case bootstraps (seaborn's ``errorbar=("ci", 95)`` resamples the cases of each
point; CKA and detection use the intervals their runs recorded).

:func:`draw_paper_figures` draws them from a run folder for
:func:`attnprobe.figures.discover.draw_figures`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from attnprobe.errors import AttnprobeError, DataError
from attnprobe.figures.style import count, palette, require_frame, styled

__all__ = ["StoreAttention", "main_figure", "store_attention", "attention_padding_pair", "adi_vs_dice", "cka_panels",
           "prediction_overlays", "draw_paper_figures", "N_BOOT"]

N_BOOT = 1000
"""Bootstrap resamples of the case-bootstrap bands (seeded: figures are reproducible)."""

_CI = ("ci", 95)


# --------------------------------------------------------------------------- main figure


def _panel_adi(ax: Any, adi: pd.DataFrame) -> None:
    require_frame(adi, ("model", "case", "padding", "value"), what="main_figure (ADI)",
                  fix="one row per (model, case, padding): the model's ADI (mean over stages)")
    data = adi.assign(padding=adi["padding"].astype(float))
    hue = "backbone" if "backbone" in data.columns else "model"
    style = "preset" if "preset" in data.columns else None
    sns.lineplot(data=data, x="padding", y="value", hue=hue, style=style, markers=True, dashes=True,
                 errorbar=_CI, n_boot=N_BOOT, seed=0, err_style="band", ax=ax,
                 palette=palette(data[hue].nunique()))
    n = data.groupby("model")["case"].nunique()
    n_text = f"n = {int(n.min())}" if n.min() == n.max() else f"n = {int(n.min())}–{int(n.max())}"
    ax.set_title(f"(a) ADI vs padding ({n_text} cases per model; 95% CI)")
    ax.set_xlabel("input padding (voxels along z)")
    ax.set_ylabel("model ADI (mean over stages)")
    ax.set_ylim(bottom=0.0)
    ax.legend(fontsize="small", loc="upper left")


def _panel_cka(ax: Any, cka: pd.DataFrame) -> None:
    require_frame(cka, ("model", "block", "value"), what="main_figure (CKA)",
                  fix="one row per (model, block): the CKA diagonal (ci_low/ci_high, baseline_* optional)")
    blocks = list(dict.fromkeys(cka["block"]))
    x = np.arange(len(blocks))
    models = list(dict.fromkeys(cka["model"]))
    colours = palette(len(models))
    baseline_drawn = False
    for i, model in enumerate(models):
        sub = cka[cka["model"] == model].set_index("block").reindex(blocks)
        y = sub["value"].to_numpy(float)
        if {"ci_low", "ci_high"} <= set(sub.columns) and np.isfinite(sub["ci_low"].to_numpy(float)).any():
            err = np.vstack([y - sub["ci_low"].to_numpy(float), sub["ci_high"].to_numpy(float) - y])
            ax.errorbar(x + (i - (len(models) - 1) / 2) * 0.08, y, yerr=np.clip(err, 0, None), color=colours[i],
                        marker="o", ms=4, capsize=2, label=str(model))
        else:
            ax.plot(x, y, color=colours[i], marker="o", ms=4, label=f"{model} (no interval)")
        if not baseline_drawn and {"baseline_mean", "baseline_sd"} <= set(sub.columns) \
                and np.isfinite(sub["baseline_mean"].to_numpy(float)).any():
            mean, sd = sub["baseline_mean"].to_numpy(float), sub["baseline_sd"].to_numpy(float)
            seeds = int(cka["baseline_seeds"].max()) if "baseline_seeds" in cka.columns else None
            ax.fill_between(x, mean - sd, mean + sd, color="0.6", alpha=0.35, linewidth=0,
                            label=f"random-init baseline (mean ± sd over {count(seeds, 'init')})")
            ax.plot(x, mean, color="0.45", linewidth=1, linestyle=":")
            baseline_drawn = True
    n = cka["n"].max() if "n" in cka.columns else None
    ax.set_title(f"(b) CKA with the pretrained model (n = {n if n is not None else '?'} inputs; 95% CI)")
    ax.set_xticks(x, blocks, rotation=60, ha="right", fontsize="x-small")
    ax.set_ylabel("linear CKA, same block")
    ax.set_ylim(0.0, 1.05)
    ax.legend(fontsize="x-small", loc="lower left")


def _panel_detection(ax: Any, detection: pd.DataFrame, preset_order: Sequence[str] | None) -> None:
    from attnprobe.figures.interventions import detection_bars

    n = int(detection["n_cases"].max())
    detection_bars(detection, ax=ax, preset_order=preset_order,
                   title=f"(c) tumor detection (n = {n} cases per model; 95% CI)")


@styled
def main_figure(adi: pd.DataFrame, cka: pd.DataFrame | None = None, detection: pd.DataFrame | None = None, *,
                preset_order: Sequence[str] | None = None) -> Figure:
    """The paper's main figure: up to three panels side by side.

    Parameters
    ----------
    adi
        One row per (model, case, padding) with the model's ADI ``value`` (mean over stages, all
        padding tokens) and optionally ``backbone`` (colour) and ``preset`` (line style); the
        band is a 95% case bootstrap of the mean at each padding.
    cka
        One row per (model, block): the diagonal CKA ``value`` of a fine-tuned model with its
        pretrained model, optionally ``ci_low``/``ci_high`` (error bars), ``baseline_mean``/
        ``baseline_sd``/``baseline_seeds`` (the random-init band) and ``n``; ``None``: no panel.
    detection
        The detection summary of :func:`attnprobe.figures.detection_bars`; ``None``: no panel.
    preset_order
        Presets left to right in the detection panel.
    """
    import matplotlib.pyplot as plt

    panels = [p for p, frame in (("adi", adi), ("cka", cka), ("det", detection)) if frame is not None
              and not frame.empty]
    if "adi" not in panels:
        raise DataError("main_figure needs the ADI sweep", expected="a non-empty ADI frame", got="none",
                        fix="run attnprobe adi (or the demo) first")
    widths = {"adi": 1.0, "cka": 1.3, "det": 1.0}
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), layout="constrained",
                             width_ratios=[widths[p] for p in panels], squeeze=False)
    for panel, ax in zip(panels, axes[0]):
        if panel == "adi":
            _panel_adi(ax, adi)
        elif panel == "cka":
            _panel_cka(ax, cka)
        else:
            _panel_detection(ax, detection, preset_order)
    return fig


# --------------------------------------------------------------------------- attention from stores


@dataclass(frozen=True)
class StoreAttention:
    """Attention of one block on one store sample, on the input voxels.

    Attributes
    ----------
    image, attention, mask, label
        ``(x, y, z)``: input, attention received (mean over real queries and heads), real
        voxels, label.
    spacing
        Voxel size (mm).
    case, block, padding, pad_fraction, model
        What it shows (``padding`` None when the store records no amount).
    """

    image: np.ndarray
    attention: np.ndarray
    mask: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    case: str
    block: str
    padding: float | None
    pad_fraction: float
    model: str


def store_attention(store: str | Path, *, sample: int = 0, block: str | None = None) -> StoreAttention:
    """Read one sample's attention of ``block`` (default: the finest captured) from a store that
    kept its inputs, and map it onto the input voxels.

    Raises
    ------
    DataError
        The store keeps no inputs (capture with ``keep_inputs``) or no attention maps.
    """
    import torch
    import zarr

    from attnprobe.metrics.attention_map import received_attention, to_voxels
    from attnprobe.metrics.offline import recorded_padding
    from attnprobe.models.adapter import BlockGeometry
    from attnprobe.models.registry import get_adapter
    from attnprobe.store.inputs import read_input
    from attnprobe.store.reader import block_names, open_store

    tree = open_store(store)
    names = [n for n in block_names(tree) if "attn" in tree[n].dataset]
    if not names:
        raise DataError(f"{Path(store).name} holds no attention maps", expected="a capture with an '.attn' tap",
                        got="block outputs only", fix="capture again with --taps 'stage0.block0.attn'")
    name = block if block is not None else names[0]
    if name not in names:
        raise DataError(f"{Path(store).name} holds no attention of {name}", expected=f"one of {names}", got=name)
    inputs = read_input(store, sample)
    if inputs is None:
        raise DataError(f"{Path(store).name} keeps no input crops", expected="a store captured with its inputs",
                        got="no 'input' array", fix="capture again with this attnprobe (inputs are kept)")
    root = zarr.open_group(str(store), mode="r")
    group = cast(zarr.Group, root[name])  # the layout is ours: one group per block
    attrs: dict[str, Any] = dict(group.attrs)
    geom = BlockGeometry(stage=int(attrs["stage"]), block=int(attrs["block"]), grid=tuple(attrs["grid"]),
                         window=tuple(attrs["window"]), shift=tuple(attrs["shift"]), heads=int(attrs["heads"]),
                         channels=0)
    probs = torch.from_numpy(np.asarray(cast(zarr.Array, group["attn"])[sample], dtype=np.float32))
    kinds = torch.from_numpy(np.asarray(cast(zarr.Array, group["attn_kind"])[sample]).astype(np.int64))
    tokens = received_attention(probs, kinds, geom, get_adapter(str(tree.attrs["arch"])))
    voxels = to_voxels(tokens, tuple(inputs.image.shape)).numpy()
    amount = recorded_padding(tree.attrs)
    return StoreAttention(image=inputs.image, attention=voxels.astype(np.float32), mask=inputs.mask,
                          label=inputs.label, spacing=inputs.spacing, case=inputs.case_id, block=name,
                          padding=None if amount is None else float(amount),
                          pad_fraction=float(1.0 - inputs.mask.mean()),
                          model=str(tree.attrs.get("label") or tree.attrs.get("model") or Path(store).stem))


_VIEW_AXES = {"coronal": (1, 0, 2), "sagittal": (0, 1, 2), "axial": (2, 0, 1)}  # fixed, horizontal, vertical


@styled
def attention_padding_pair(panels: Sequence[StoreAttention], *, view: str = "coronal",
                           percentiles: tuple[float, float] = (2.0, 98.0)) -> Figure:
    """Attention on the anatomy for the same case at several paddings, side by side.

    One slice per panel through the tumor centre (else the centre of the real voxels) in
    ``view`` (``coronal`` and ``sagittal`` show the axial padding), the tumor outlined, padding
    hatched, axes in mm. All panels share one colour scale set by ``percentiles`` of the
    non-zero attention of every panel (padding voxels included), so neither saturates nor fades.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from attnprobe.figures.volume import ATTENTION_CMAP

    if not panels:
        raise DataError("attention_padding_pair needs at least one panel", expected=">= 1", got="0")
    if view not in _VIEW_AXES:
        raise DataError("unknown view", expected=" | ".join(_VIEW_AXES), got=repr(view))
    fixed, hor, ver = _VIEW_AXES[view]
    # padding voxels count too: the attention they receive is the dilution the figure shows
    values = np.concatenate([p.attention.ravel() for p in panels])
    values = values[np.isfinite(values) & (values > 0)]
    lo, hi = (np.percentile(values, percentiles) if values.size else (0.0, 1.0))
    hi = hi if hi > lo else lo + 1e-6
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.0, 4.6), layout="constrained",
                             squeeze=False)
    image_artist = None
    for p, ax in zip(panels, axes[0]):
        target = p.label > 0 if (p.label > 0).any() else p.mask.astype(bool)
        centre = np.round(np.argwhere(target).mean(axis=0)).astype(int)
        index = int(centre[fixed])
        sl = [slice(None)] * 3
        sl[fixed] = index  # type: ignore[call-overload]
        extent = (0.0, p.image.shape[hor] * p.spacing[hor], 0.0, p.image.shape[ver] * p.spacing[ver])

        def cut(a: np.ndarray, sl: list[Any] = sl) -> np.ndarray:
            return np.asarray(a[tuple(sl)]).T  # rows: vertical axis

        ax.imshow(cut(p.image), cmap="gray", origin="lower", extent=extent, interpolation="nearest")
        image_artist = ax.imshow(cut(p.attention), cmap=ATTENTION_CMAP, origin="lower", extent=extent,
                                 vmin=lo, vmax=hi, interpolation="nearest")
        pad = ~cut(p.mask).astype(bool)
        if pad.any():
            ax.contourf(pad.astype(float), levels=[0.5, 1.5], colors="none", hatches=["////"], origin="lower",
                        extent=extent)
        if (cut(p.label) > 0).any():
            ax.contour(cut(p.label) > 0, levels=[0.5], colors="#009e73", linewidths=1.5, origin="lower",
                       extent=extent)
        names = "xyz"
        ax.set_xlabel(f"{names[hor]} (mm)")
        ax.set_ylabel(f"{names[ver]} (mm)")
        amount = "padding as captured" if p.padding is None else f"padding {p.padding:g} voxels"
        ax.set_title(f"{amount} ({100 * p.pad_fraction:.0f}% of input)\n{view} slice {names[fixed]} = "
                     f"{index * p.spacing[fixed]:.0f} mm", fontsize="small")
        ax.grid(False)
    first = panels[0]
    if image_artist is not None:
        fig.colorbar(image_artist, ax=list(axes[0]), shrink=0.8,
                     label=f"attention received (scale: p{percentiles[0]:g}–p{percentiles[1]:g})")
    handles = [Patch(facecolor="none", edgecolor="#009e73", label="tumor"),
               Patch(facecolor="none", hatch="////", edgecolor="0.3", label="padding")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"{first.model}: attention in {first.block}, case {first.case} (n = 1 case)")
    return fig


# --------------------------------------------------------------------------- cross-model figures


@styled
def adi_vs_dice(table: pd.DataFrame) -> Figure:
    """Per case, the model ADI against Dice at each padding, one colour per model.

    ``table``: columns ``model, case, padding, adi, dice`` (the plain forwards of the causal
    test). Small points: cases; large points with error bars: the mean of each (model,
    padding) with 95% case-bootstrap intervals on both axes.
    """
    require_frame(table, ("model", "case", "padding", "adi", "dice"), what="adi_vs_dice",
                  fix="one row per (model, case, padding)")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.8), layout="constrained")
    models = list(dict.fromkeys(table["model"]))
    colours = palette(len(models))
    rng = np.random.default_rng(0)
    for i, model in enumerate(models):
        sub = table[table["model"] == model]
        ax.scatter(sub["adi"], sub["dice"], s=12, alpha=0.35, color=colours[i])
        for padding, cell in sub.groupby("padding"):
            x, y = cell["adi"].to_numpy(float), cell["dice"].to_numpy(float)
            (xl, xh), (yl, yh) = _boot(x, rng), _boot(y, rng)
            ax.errorbar([np.nanmean(x)], [np.nanmean(y)], xerr=[[np.nanmean(x) - xl], [xh - np.nanmean(x)]],
                        yerr=[[np.nanmean(y) - yl], [yh - np.nanmean(y)]], color=colours[i], marker="o", ms=7,
                        capsize=3, label=f"{model}, padding {float(padding):g}")
    n = table.groupby("model")["case"].nunique()
    ax.set_xlabel("model ADI (mean over stages)")
    ax.set_ylabel("Dice (whole volume)")
    ax.set_title(f"ADI against Dice (n = {int(n.min())} cases per model; means with 95% CI)")
    ax.legend(fontsize="x-small", loc="best")
    return fig


def _boot(values: np.ndarray, rng: np.random.Generator, *, n_boot: int = N_BOOT) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if v.size < 2:
        m = float(v.mean()) if v.size else math.nan
        return m, m
    means = rng.choice(v, size=(n_boot, v.size), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


@styled
def cka_panels(matrices: Sequence[tuple[str, Any]]) -> Figure:
    """Every CKA matrix ``(title, DataArray ref x tgt)`` in one figure, one colour scale (0–1)."""
    import matplotlib.pyplot as plt

    if not matrices:
        raise DataError("cka_panels needs at least one matrix", expected=">= 1", got="0")
    cols = min(len(matrices), 4)
    rows = math.ceil(len(matrices) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols + 1, 3.6 * rows + 0.6), layout="constrained",
                             squeeze=False)
    artist = None
    for (title, da), ax in zip(matrices, axes.ravel()):
        m = da.transpose("ref", "tgt")
        artist = ax.imshow(m.values, vmin=0.0, vmax=1.0, cmap="viridis", origin="upper", aspect="auto")
        refs, tgts = [str(v) for v in m["ref"].values], [str(v) for v in m["tgt"].values]
        ax.set_yticks(range(len(refs)), refs, fontsize=5)
        ax.set_xticks(range(len(tgts)), tgts, fontsize=5, rotation=90)
        ax.set_title(f"{title} (n = {da.attrs.get('n', '?')})", fontsize="small")
        ax.grid(False)
    for ax in axes.ravel()[len(matrices):]:
        ax.set_visible(False)
    if artist is not None:
        fig.colorbar(artist, ax=list(axes.ravel()), shrink=0.7, label="linear CKA")
    return fig


@styled
def prediction_overlays(panels: Sequence[tuple[str, Any]], *, view: str = "coronal") -> Figure:
    """Prediction against reference on the image, one panel per model (same case).

    ``panels``: ``(title, arrays)`` with ``image``, ``label``, ``prediction`` ``(x, y, z)``,
    ``spacing`` (mm) and ``case``. Each panel shows the slice through the reference tumor's
    centre (the same slice for every panel), reference outlined in green, prediction in
    orange, axes in mm.
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    if not panels:
        raise DataError("prediction_overlays needs at least one panel", expected=">= 1", got="0")
    if view not in _VIEW_AXES:
        raise DataError("unknown view", expected=" | ".join(_VIEW_AXES), got=repr(view))
    fixed, hor, ver = _VIEW_AXES[view]
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.8 * rows + 0.5), layout="constrained", squeeze=False)
    names = "xyz"
    for (title, a), ax in zip(panels, axes.ravel()):
        image, label, pred = (np.asarray(a[k]) for k in ("image", "label", "prediction"))
        spacing = tuple(float(v) for v in np.ravel(a["spacing"])[:3])
        target = label > 0 if (label > 0).any() else np.ones(label.shape, bool)
        index = int(np.round(np.argwhere(target).mean(axis=0))[fixed])
        sl: list[Any] = [slice(None)] * 3
        sl[fixed] = index
        extent = (0.0, image.shape[hor] * spacing[hor], 0.0, image.shape[ver] * spacing[ver])
        lo, hi = np.percentile(image, (1, 99))
        ax.imshow(image[tuple(sl)].T, cmap="gray", origin="lower", extent=extent, vmin=lo, vmax=hi)
        for mask, colour in ((label, "#009e73"), (pred, "#e69f00")):
            cut = (mask[tuple(sl)] > 0).T
            if cut.any():
                ax.contour(cut, levels=[0.5], colors=colour, linewidths=1.4, origin="lower", extent=extent)
        ax.set_title(f"{title}\ncase {a['case']}", fontsize="small")
        ax.set_xlabel(f"{names[hor]} (mm)")
        ax.set_ylabel(f"{names[ver]} (mm)")
        ax.grid(False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.legend(handles=[Line2D([], [], color="#009e73", label="reference"),
                        Line2D([], [], color="#e69f00", label="prediction")],
               loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(f"Prediction vs reference on MRI, {view} slice through the tumor (n = 1 case per model)")
    return fig


# --------------------------------------------------------------------------- from a run folder


def _adi_models(found: Any) -> pd.DataFrame:
    from attnprobe.figures.discover import _adi_run, _json
    from attnprobe.metrics.aggregate import stage_means
    from attnprobe.models import ARCH_LABELS

    frames = []
    for folder in found.adi:
        try:
            frame, label = _adi_run(folder)
            stages = stage_means(frame)
        except (OSError, ValueError, KeyError, AttnprobeError):
            continue
        sel = stages[(stages["metric"] == "adi") & (stages["kind"] == "all")]
        if sel.empty:
            continue
        model = sel.groupby(["case", "padding"], as_index=False)["value"].mean()
        meta = _json(folder / "adi.json")
        arch = meta.get("arch")
        extra = {"backbone": ARCH_LABELS.get(str(arch), str(arch))} if arch else {}
        if meta.get("preset"):
            extra["preset"] = str(meta["preset"])
        frames.append(model.assign(model=label, **extra))
    if not frames:
        return pd.DataFrame()
    data = pd.concat(frames, ignore_index=True)
    for col in ("backbone", "preset"):  # a column half missing would mislabel: keep it only when complete
        if col in data.columns and data[col].isna().any():
            data = data.drop(columns=col)
    return data


def _cka_diagonals(found: Any) -> tuple[pd.DataFrame, list[tuple[str, Any]]]:
    from attnprobe.figures.discover import _cka_array

    rows, matrices = [], []
    for folder in found.cka:
        try:
            da = _cka_array(folder)
        except (OSError, ValueError, KeyError):
            continue
        tgt = str(da.attrs.get("tgt", folder.name))
        matrices.append((f"{da.attrs.get('ref', 'ref')} vs {tgt}", da))
        m = da.transpose("ref", "tgt")
        refs, tgts = [str(v) for v in m["ref"].values], [str(v) for v in m["tgt"].values]
        for b in (b for b in refs if b in tgts):
            cell = m.sel(ref=b, tgt=b)
            row = {"model": tgt, "block": b, "value": float(cell), "n": da.attrs.get("n")}
            for coord in ("ci_low", "ci_high", "baseline_mean", "baseline_sd"):
                if coord in cell.coords:
                    row[coord] = float(cell.coords[coord])
            if "baseline_seeds" in da.attrs:
                row["baseline_seeds"] = int(da.attrs["baseline_seeds"])
            rows.append(row)
    return pd.DataFrame(rows), matrices


def _ablation_table(found: Any) -> pd.DataFrame:
    from attnprobe.figures.discover import _json

    frames = []
    for folder in found.ablation:
        path = folder / "ablation.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        table = table[(table["intervention"] == "none") & table["metric"].isin(["adi", "dice"])]
        if table.empty:
            continue
        wide = table.pivot_table(index=["case", "padding"], columns="metric", values="value").reset_index()
        info = _json(folder / "summary.json")
        frames.append(wide.assign(model=str(info.get("label") or folder.name)))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _attention_groups(found: Any) -> list[list[Path]]:
    """Stores that keep inputs and attention, grouped by model and case, ordered by padding."""
    import zarr

    from attnprobe.metrics.offline import recorded_padding
    from attnprobe.store.inputs import has_inputs

    groups: dict[tuple[str, str], list[tuple[float, Path]]] = {}
    for store in found.stores:
        try:
            root = zarr.open_group(str(store), mode="r")
            if not has_inputs(root) or not any("attn" in cast(zarr.Group, root[g]) for g in root.group_keys()):
                continue
            attrs = dict(root.attrs)
            case = str(np.asarray(cast(zarr.Array, root["case"])[0]))
        except Exception:  # noqa: BLE001 - a folder that only looks like a store is skipped
            continue
        amount = recorded_padding(attrs)
        key = (str(attrs.get("checkpoint_sha256") or attrs.get("checkpoint") or store.parent), case)
        groups.setdefault(key, []).append((math.inf if amount is None else float(amount), store))
    return [[p for _, p in sorted(items, key=lambda t: t[0])] for items in groups.values()]


def draw_paper_figures(found: Any, w: Any) -> None:
    """Draw the figures of this module that the files of a run folder allow (``w``: the
    figure writer of :func:`attnprobe.figures.discover.draw_figures`)."""
    from attnprobe.figures.discover import _evaluations, _preset_order, _rel
    from attnprobe.results import EvaluationRun

    adi = _adi_models(found)
    cka, matrices = _cka_diagonals(found)
    detection, _cases, eval_sources = _evaluations(found) if found.evaluations else (pd.DataFrame(), None, [])
    if not adi.empty:
        order = _preset_order(detection["preset"]) if not detection.empty else None
        n = adi.groupby("model")["case"].nunique()
        w.draw("main_figure", "main",
               lambda: main_figure(adi, cka if not cka.empty else None, detection if not detection.empty else None,
                                   preset_order=order),
               f"(a) Model ADI (mean over stages, all padding tokens) against input padding for "
               f"{count(adi['model'].nunique(), 'model')}, bands: 95% case-bootstrap intervals over "
               f"{int(n.min())}–{int(n.max())} cases; (b) CKA of every block with the same block of the pretrained "
               f"model, error bars: case-bootstrap 95% intervals where recorded, grey band: random-init baseline; "
               f"(c) detection rate per preset and backbone with bootstrap 95% intervals.",
               [_rel(f, found.root) for f in found.adi] + [_rel(f, found.root) for f in found.cka] + eval_sources)
    if len(matrices) > 1:
        w.draw("cka_panels", "cka_panels", lambda: cka_panels(matrices),
               f"Linear CKA between every block of each reference model (rows) and of each compared model "
               f"(columns), {count(len(matrices), 'comparison')} on one colour scale.",
               [_rel(f, found.root) for f in found.cka])
    ablation = _ablation_table(found)
    if not ablation.empty:
        w.draw("adi_vs_dice", "adi_dice", lambda: adi_vs_dice(ablation),
               f"Model ADI against Dice of the plain forward per case and padding "
               f"({count(ablation['model'].nunique(), 'model')}, {ablation['case'].nunique()} cases); large markers: "
               f"means with 95% case-bootstrap intervals.", [_rel(f, found.root) for f in found.ablation])
    overlays = []
    for folder in found.evaluations:
        path = folder / "overlay.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
            arrays["case"] = str(arrays["case"])
            run = EvaluationRun.load_any(folder)  # labelled as _evaluations labels it
            preset, backbone = str(run.preset or folder.name), str(run.backbone or "model")
            overlays.append((f"{backbone} ({preset})", arrays, _rel(path, found.root)))
    cases = {a["case"] for _, a, _ in overlays}
    for case in sorted(cases):
        chosen = [(t, a) for t, a, _ in overlays if a["case"] == case]
        w.draw(f"predictions_{case}", "predictions", lambda chosen=chosen: prediction_overlays(chosen),
               f"Prediction (orange) against the reference tumor (green) on the MRI of case {case}, a coronal slice "
               f"through the tumor centre, one panel per model ({count(len(chosen), 'model')}; n = 1 case, an "
               f"illustration: the detection and Dice numbers are over all test cases).",
               [s for _, a, s in overlays if a["case"] == case])
    for stores in _attention_groups(found):
        picked = stores if len(stores) <= 2 else [stores[0], stores[-1]]
        try:
            panels = [store_attention(s) for s in picked]
        except (AttnprobeError, OSError, KeyError, ValueError) as exc:
            w.skipped.append((f"attention {picked[0].name}", str(exc)))
            continue
        name = picked[-1].name.removesuffix(".zarr")
        amounts = ", ".join("as captured" if p.padding is None else f"{p.padding:g}" for p in panels)
        w.draw(f"attention_store_{name}", "attention", lambda panels=panels: attention_padding_pair(panels),
               f"Attention each token of {panels[0].block} receives (mean over the real queries of its window and "
               f"heads), on a coronal slice through the tumor (outlined) of case {panels[0].case} at padding "
               f"{amounts} voxels (hatched: padding), one colour scale (2nd–98th percentile of both maps), axes "
               f"in mm; drawn from the capture store(s) {', '.join(s.name for s in picked)}; {panels[0].model}.",
               [_rel(s, found.root) for s in picked])
