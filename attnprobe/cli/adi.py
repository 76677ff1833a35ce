"""``attnprobe adi``: attention dilution index, online over a padding sweep or offline from a store."""

from __future__ import annotations

import math
from itertools import islice
from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import (
    CompatOption,
    check_device,
    check_limit,
    console,
    ensure_dir,
    err_console,
    init_distributed,
    load_model_ref,
    one_line_errors,
    parse_int_list,
    parse_roi,
    progress_bar,
)

Axis = Literal["x", "y", "z"]
PadMode = Literal["end", "symmetric"]
SweepModeOpt = Literal["fixed-roi", "grow"]
Heads = Literal["mean", "per-head"]
PadQueriesOpt = Literal["all-windows", "real-windows"]
Intensity = Literal["percentile", "fixed"]
Split = Literal["all", "training", "validation", "test"]

OUTPUT_FILES = ("adi.csv", "adi.parquet", "adi.nc", "summary.csv")


def register(app: typer.Typer) -> None:
    """Add the ``adi`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("adi")(adi)


def _write_outputs(frame, out: Path, attrs: dict):
    """Write adi.csv / adi.parquet (tidy blocks), adi.nc (xarray) and summary.csv (stage level
    over cases); return the :class:`~attnprobe.metrics.sweep.SweepTables`."""
    from attnprobe.metrics.aggregate import to_xarray
    from attnprobe.metrics.sweep import sweep_tables

    tables = sweep_tables(frame)
    frame.to_csv(out / "adi.csv", index=False)
    frame.to_parquet(out / "adi.parquet", index=False)
    tables.summary.to_csv(out / "summary.csv", index=False)
    ds = to_xarray(frame)
    # netCDF attributes must be plain scalars or strings.
    ds.attrs.update({k: (v if isinstance(v, (int, float)) else str(v)) for k, v in attrs.items() if v is not None})
    for name in ("case", "kind"):
        if name in ds.coords:
            ds = ds.assign_coords({name: ds[name].astype(str)})
    ds.to_netcdf(out / "adi.nc", engine=_netcdf_engine())
    return tables


def _netcdf_engine() -> Literal["h5netcdf", "scipy"]:
    """h5netcdf (netCDF4) when its h5py writer is installed, else scipy's netCDF3 writer."""
    import importlib.util

    if importlib.util.find_spec("h5py") is not None:
        return "h5netcdf"
    # h5netcdf >= 1.8 reads without h5py but cannot write; netCDF3 holds these tables too.
    err_console.print("note: h5py is not installed, adi.nc is written as netCDF3 (scipy)", highlight=False)
    return "scipy"


def _print_table(stages) -> None:
    """Stage ADI (kind all), mean ± std over cases, one row per padding level."""
    from rich import box
    from rich.table import Table

    sel = stages[(stages["metric"] == "adi") & (stages["kind"] == "all")]
    if "head" in sel.columns:  # per-head runs: show the mean over heads
        sel = sel.groupby(["case", "padding", "pad_fraction", "stage"], sort=False, dropna=False)["value"].mean()
        sel = sel.reset_index()
    n_stages = sorted(sel["stage"].unique())
    n_cases = sel["case"].nunique()
    # A light box keeps four stages of "mean±std" inside an 80-column terminal.
    table = Table(title=f"ADI by stage, padding kind 'all' (mean±std over {n_cases} case(s))",
                  box=box.SIMPLE_HEAD)
    table.add_column("padding", justify="right", no_wrap=True)
    table.add_column("pad frac", justify="right", no_wrap=True)
    for s in n_stages:
        table.add_column(f"stage{s}", justify="right", no_wrap=True)
    for p, rows in sel.groupby("padding", sort=True):
        frac = rows["pad_fraction"].mean()
        cells = []
        for s in n_stages:
            vals = rows.loc[rows["stage"] == s, "value"]
            std = vals.std(ddof=1)
            cells.append(f"{vals.mean():.3f}" + ("" if math.isnan(std) else f"±{std:.3f}"))
        table.add_row(f"{p:g}", "n/a" if math.isnan(frac) else f"{frac:.3f}", *cells)
    console.print(table)


@one_line_errors
def adi(
    out: Annotated[Path, typer.Option(help="Output folder for adi.csv, adi.parquet, adi.nc, summary.csv.")],
    model: Annotated[str | None, typer.Option(help="Model name from attnprobe.toml, a checkpoint, or a "
                                              "capture store.")] = None,
    data: Annotated[str | None, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name.")] = None,
    padding_sweep: Annotated[str | None, typer.Option(help="Padding amounts in voxels, e.g. 0,16,32,48 "
                                                      "(default: the cases as prepared).")] = None,
    axis: Annotated[Axis, typer.Option(help="Axis the sweep pads along.")] = "z",
    pad_mode: Annotated[PadMode, typer.Option(help="Padding at the end or split on both sides.")] = "end",
    sweep_mode: Annotated[SweepModeOpt, typer.Option(help="fixed-roi: content shrinks inside the ROI; "
                                                     "grow: input grows by p.")] = "fixed-roi",
    heads: Annotated[Heads, typer.Option(help="Average heads first, or keep one value per head.")] = "mean",
    pad_queries: Annotated[PadQueriesOpt, typer.Option(
        help="Padding queries behind A_pr and A_pp: those of every window (the paper's), or only of "
             "windows holding a real token (see docs/conventions.md).")] = "all-windows",
    store: Annotated[Path | None, typer.Option(help="Compute offline from this capture store "
                                               "(no model needed).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    limit: Annotated[int | None, typer.Option(help="Use at most N cases.")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture (guessed from the checkpoint).")] = None,
    roi: Annotated[str | None, typer.Option(help="Model ROI x,y,z (default: the model's).")] = None,
    split: Annotated[Split | None, typer.Option(help="Datalist split (default: the dataset's, else all).")] = None,
    spacing: Annotated[float | None, typer.Option(help="Resample to this isotropic spacing in mm.")] = 1.0,
    intensity: Annotated[Intensity, typer.Option(help="Intensity scaling.")] = "percentile",
    a_min: Annotated[float | None, typer.Option(help="Fixed window lower bound (--intensity fixed).")] = None,
    a_max: Annotated[float | None, typer.Option(help="Fixed window upper bound (--intensity fixed).")] = None,
    compat: CompatOption = None,
) -> None:
    """Attention dilution index (ADI) and attention flow of MODEL on DATA, per block, stage and padding."""
    from attnprobe import dist
    from attnprobe.errors import ConfigError

    dev = check_device(init_distributed(device))
    store_path = store
    if store_path is None and model is not None:
        from attnprobe.store import is_store
        from attnprobe.workspace import resolve_model

        ref = resolve_model(model)
        if is_store(ref.checkpoint):
            store_path = ref.checkpoint
    if store_path is not None:
        if padding_sweep is not None:
            raise ConfigError("--padding-sweep needs a model, a store holds one capture",
                              expected="--store without --padding-sweep", got=f"--padding-sweep {padding_sweep}",
                              fix="drop --padding-sweep, or pass --model and --data to run the sweep")
        if data is not None:
            err_console.print("note: --data is not used with a store (its cases were captured)", highlight=False)
        if compat is not None:
            raise ConfigError("--compat applies to a model, a store was captured in one mode already",
                              expected="--store without --compat", got=f"--compat {compat}",
                              fix="drop --compat; the store's attrs say which mode it was captured in")
        frame, attrs = _offline(store_path, heads=heads, pad_queries=pad_queries, device=dev, limit=limit)
    else:
        if model is None or data is None:
            raise ConfigError("a model and data are needed", expected="--model and --data (or --store STORE.zarr)",
                              got=f"--model {model!r} --data {data!r}")
        frame, attrs = _online(model=model, data=data, padding_sweep=padding_sweep, axis=axis, pad_mode=pad_mode,
                               sweep_mode=sweep_mode, heads=heads, pad_queries=pad_queries, device=dev, limit=limit,
                               arch=arch, roi=roi,
                               split=split, spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max,
                               compat=compat)
    if not dist.is_main():
        return
    ensure_dir(out)
    tables = _write_outputs(frame, out, attrs)
    _print_table(tables.stages)
    console.print(f"wrote {', '.join(str(out / f) for f in OUTPUT_FILES)}", highlight=False)


def _offline(store_path: Path, *, heads: str, pad_queries: str, device, limit: int | None):
    """ADI of a capture store, chunk by chunk."""
    from attnprobe.metrics.offline import OfflineStats
    from attnprobe.store import open_store

    check_limit(limit)
    tree = open_store(store_path, chunks={})
    done = int(tree.dataset["done"].values.sum())
    stats = OfflineStats()
    with progress_bar() as bar:
        task = bar.add_task("adi (store)", total=min(done, limit or done), status="")

        def advance(case_id: str) -> None:
            bar.update(task, advance=1, status=case_id)

        frame = _limited_store_flow(tree, heads=heads, pad_queries=pad_queries, device=device, stats=stats,
                                    on_sample=advance, limit=limit)
    if stats.skipped_samples:
        err_console.print(f"left out {len(stats.skipped_samples)} unfinished sample(s) of the store", highlight=False)
    err_console.print(f"read {stats.attn_bytes / 1e9:.3f} GB of attention in {stats.seconds:.1f} s "
                      f"({stats.gb_per_s:.3f} GB/s)", highlight=False)
    attrs = {"source": "store", "store": str(store_path), "heads": heads, "pad_queries": pad_queries,
             "arch": tree.attrs.get("arch"),
             "compat": tree.attrs.get("compat", "current"),
             "roi": tree.attrs.get("roi")}
    return frame, attrs


def _limited_store_flow(tree, *, heads, pad_queries, device, stats, on_sample, limit):
    from attnprobe.metrics.offline import store_flow_records
    from attnprobe.metrics.reducers import flows_to_frame

    records = store_flow_records(tree, heads=heads, pad_queries=pad_queries, device=device, stats=stats,
                                 on_sample=on_sample)
    return flows_to_frame(list(islice(records, limit)))


def _gather_in_case_order(frame, case_ids: list[str]):
    """Every rank's rows on rank 0, in the order one process would have produced them."""
    import pandas as pd

    from attnprobe import dist

    frames = dist.gather_objects(frame)
    if len(frames) == 1:
        return frame
    order = {case: i for i, case in enumerate(case_ids)}
    merged = pd.concat(frames, ignore_index=True)
    rank_of_row = merged["case"].map(order)
    return merged.iloc[rank_of_row.argsort(kind="stable").to_numpy()].reset_index(drop=True)


def _online(*, model: str, data: str, padding_sweep: str | None, axis: str, pad_mode: str, sweep_mode: str,
            heads: str, pad_queries: str, device, limit: int | None, arch: str | None, roi: str | None,
            split: str | None,
            spacing: float | None, intensity: str, a_min: float | None, a_max: float | None,
            compat: str | None = None):
    """Prepare the cases and run them (swept or as prepared) with online reduction."""
    from attnprobe.data.preprocess import PreprocessConfig, prepare_case
    from attnprobe.metrics.sweep import SweepSpec, prepared_flow
    from attnprobe.metrics.sweep import padding_sweep as run_sweep

    spec = None
    if padding_sweep is not None:
        # plain strings from the CLI; SweepSpec checks each option
        spec = SweepSpec(paddings=tuple(parse_int_list(padding_sweep, option="--padding-sweep")), axis=axis,  # type: ignore[arg-type]
                         pad_mode=pad_mode, mode=sweep_mode)  # type: ignore[arg-type]

    def preprocess_config(use_roi) -> PreprocessConfig:
        config = PreprocessConfig(roi=use_roi, pad_mode=pad_mode, spacing=spacing,  # type: ignore[arg-type]
                                  intensity=intensity, a_min=a_min, a_max=a_max)  # type: ignore[arg-type]
        if spec is not None and config.roi != "full":
            spec.check_shape(config.roi)
        return config

    # With --roi every option is checked before the model is loaded: bad input fails fast.
    given_roi = parse_roi(roi)
    config = preprocess_config(given_roi) if given_roi is not None else None
    from attnprobe import dist
    from attnprobe.workspace import list_data

    check_limit(limit)
    all_refs = list_data(data, split=split, limit=limit)  # type: ignore[arg-type]
    refs = [all_refs[i] for i in dist.shard(all_refs)]  # under torchrun: this rank's share
    net, report, model_roi = load_model_ref(model, arch=arch, compat=compat)
    if dist.is_main():
        err_console.print(f"loaded {report.summary()}", highlight=False)
    if config is None:
        config = preprocess_config(model_roi or (96, 96, 96))
    levels = spec.paddings if spec is not None else (0,)

    with progress_bar(disable=not dist.is_main()) as bar:
        task = bar.add_task("adi", total=len(refs) * len(levels), status="")

        def prepared():
            for ref in refs:
                bar.update(task, status=f"{ref.case_id} preprocessing")
                yield prepare_case(ref, config)

        def advance(case_id: str, p: int) -> None:
            bar.update(task, advance=1, status=f"{case_id} p={p}")

        if spec is None:
            frame = prepared_flow(net, prepared(), heads=heads, pad_queries=pad_queries,  # type: ignore[arg-type]
                                  device=device, on_step=advance)
        else:
            frame = run_sweep(net, prepared(), spec, heads=heads, pad_queries=pad_queries,  # type: ignore[arg-type]
                              device=device, on_step=advance)
    frame = _gather_in_case_order(frame, [r.case_id for r in all_refs])
    attrs = {"source": "model", "model": model, "checkpoint": report.path, "arch": report.arch,
             "compat": report.compat,
             "roi": str(config.roi), "heads": heads, "pad_queries": pad_queries,
             "padding_sweep": ",".join(map(str, levels)),
             "axis": axis, "pad_mode": pad_mode, "sweep_mode": sweep_mode if spec is not None else "none"}
    return frame, attrs
