"""``attnprobe adi``: attention dilution index, online over a padding sweep or offline from a store."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import (
    CompatOption,
    check_device,
    check_limit,
    console,
    err_console,
    init_distributed,
    load_model_ref,
    one_line_errors,
    parse_int_list,
    print_json,
    progress_bar,
)
from attnprobe.cli.options import (
    AllowMismatchOption,
    AMaxOption,
    AMinOption,
    DeviceOption,
    IntensityOption,
    JsonOption,
    PadModeOption,
    Preprocessing,
    RoiOption,
    SpacingOption,
    check_memory,
    checkpoint_facts,
)

Axis = Literal["x", "y", "z"]
SweepModeOpt = Literal["fixed-roi", "grow"]
Heads = Literal["mean", "per-head"]
PadQueriesOpt = Literal["all-windows", "real-windows"]
Split = Literal["all", "training", "validation", "test"]

OUTPUT_FILES = ("adi.csv", "adi.parquet", "adi.nc", "summary.csv")


def register(app: typer.Typer) -> None:
    """Add the ``adi`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("adi")(adi)


def _write_outputs(frame, out: Path, attrs: dict, *, label: str | None = None, manifest=None,
                   replace=frozenset()):
    """Save the run as an :class:`~attnprobe.results.AdiRun` (:func:`attnprobe.workflows.sweep.save_adi`);
    return the :class:`~attnprobe.metrics.sweep.SweepTables`."""
    from attnprobe.metrics.sweep import sweep_tables
    from attnprobe.workflows.sweep import save_adi

    save_adi(frame, out, attrs, label=label, manifest=manifest, replace=replace, engine=_netcdf_engine())
    return sweep_tables(frame)


def _netcdf_engine() -> str:
    """h5netcdf (netCDF4) when its h5py writer is installed, else scipy's netCDF3 writer (with a note)."""
    from attnprobe.results.files import netcdf_engine

    engine = netcdf_engine()
    if engine == "scipy":
        err_console.print("note: h5py is not installed, adi.nc is written as netCDF3 (scipy)", highlight=False)
    return engine


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
    pad_mode: PadModeOption = None,
    sweep_mode: Annotated[SweepModeOpt, typer.Option(help="fixed-roi: content shrinks inside the ROI; "
                                                     "grow: input grows by p.")] = "fixed-roi",
    heads: Annotated[Heads, typer.Option(help="Average heads first, or keep one value per head.")] = "mean",
    pad_queries: Annotated[PadQueriesOpt, typer.Option(
        help="Padding queries behind A_pr and A_pp: those of every window (the paper's), or only of "
             "windows holding a real token (see docs/conventions.md).")] = "all-windows",
    store: Annotated[Path | None, typer.Option(help="Compute offline from this capture store "
                                               "(no model needed).")] = None,
    device: DeviceOption = "cpu",
    limit: Annotated[int | None, typer.Option(help="Use at most N cases.")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture (guessed from the checkpoint).")] = None,
    roi: RoiOption = None,
    split: Annotated[Split | None, typer.Option(help="Datalist split (default: the dataset's, else all).")] = None,
    spacing: SpacingOption = None,
    intensity: IntensityOption = None,
    a_min: AMinOption = None,
    a_max: AMaxOption = None,
    allow_roi_mismatch: AllowMismatchOption = False,
    compat: CompatOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier attnprobe result in --out (never other "
                                            "files).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Attention dilution index (ADI) and attention flow of MODEL on DATA, per block, stage and padding.

    Example: attnprobe adi --model ct.pt --data cases.json --padding-sweep 0,16,32 --out runs/adi
    (or --store ct.zarr for a capture store; ROI, spacing and intensity default to the checkpoint's).
    """
    from attnprobe import dist
    from attnprobe.errors import ConfigError
    from attnprobe.results import Manifest, check_out
    from attnprobe.workflows.sweep import model_label

    manifest = Manifest.start("adi", locals())

    if pad_mode == "inplane-symmetric" and padding_sweep is not None:
        raise ConfigError("--pad-mode inplane-symmetric does not apply to a padding sweep",
                          expected="end or symmetric with --padding-sweep", got=f"--pad-mode {pad_mode}")
    check_limit(limit)
    dev = check_device(init_distributed(device))
    store_path = store
    if store_path is not None and model is not None:
        raise ConfigError("--store and --model exclude each other", expected="one source: a capture store or a model",
                          got=f"--store {store_path} --model {model}",
                          fix="drop --model to read the store, or drop --store to run the model")
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
        given = [f"{flag} {value}" for flag, value in (
            ("--data", data), ("--roi", roi), ("--spacing", spacing), ("--intensity", intensity),
            ("--a-min", a_min), ("--a-max", a_max), ("--pad-mode", pad_mode), ("--arch", arch),
            ("--compat", compat)) if value is not None]
        if given:
            raise ConfigError("options of a model run do not apply to a capture store",
                              expected="--store without model or preprocessing options",
                              got=", ".join(given),
                              fix="drop them (the store's attrs record how it was captured), or pass --model "
                                  "and --data instead of --store")
        target = check_out(out, overwrite=overwrite, kinds=("adi",)) if dist.is_main() else None
        frame, attrs = _offline(store_path, heads=heads, pad_queries=pad_queries, device=dev, limit=limit)
    else:
        if model is None or data is None:
            raise ConfigError("a model and data are needed", expected="--model and --data (or --store STORE.zarr)",
                              got=f"--model {model!r} --data {data!r}")
        pre = Preprocessing(roi=roi, spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max,
                            pad_mode=pad_mode, allow_mismatch=allow_roi_mismatch)
        target = check_out(out, overwrite=overwrite, kinds=("adi",)) if dist.is_main() else None
        frame, attrs = _online(model=model, data=data, padding_sweep=padding_sweep, axis=axis,
                               sweep_mode=sweep_mode, heads=heads, pad_queries=pad_queries, device=dev, limit=limit,
                               arch=arch, pre=pre, split=split, compat=compat)
    if not dist.is_main() or target is None:
        return
    if store_path is not None:
        manifest.add_input(store_path, "store")
        label = Path(store_path).name.removesuffix(".zarr")
    elif model is not None and data is not None:  # a model run (both were checked above)
        manifest.add_input(attrs["checkpoint"], "checkpoint")
        manifest.add_data(data)
        label = model_label(model, attrs.get("checkpoint"))
    manifest.compat = {"model": str(attrs.get("compat"))}
    tables = _write_outputs(frame, out, attrs, label=label, manifest=manifest, replace=target.replace)
    if json_output:
        print_json({"summary": tables.summary.to_dict("records"),
                    "files": [str(out / f) for f in OUTPUT_FILES]})
        return
    _print_table(tables.stages)
    console.print(f"wrote {', '.join(str(out / f) for f in OUTPUT_FILES)}", highlight=False)


def _offline(store_path: Path, *, heads: str, pad_queries: str, device, limit: int | None):
    """ADI of a capture store, chunk by chunk (:class:`attnprobe.workflows.sweep.StoreSweep`)."""
    from attnprobe.workflows.sweep import StoreSweep

    sweep = StoreSweep.open(store_path, limit=limit)
    with progress_bar() as bar:
        task = bar.add_task("adi (store)", total=sweep.total, status="")
        frame = sweep.run(heads=heads, pad_queries=pad_queries, device=device,
                          on_case=lambda case_id: bar.update(task, advance=1, status=case_id))
    stats = sweep.stats
    if stats.skipped_samples:
        err_console.print(f"left out {len(stats.skipped_samples)} unfinished sample(s) of the store", highlight=False)
    err_console.print(f"read {stats.attn_bytes / 1e9:.3f} GB of attention in {stats.seconds:.1f} s "
                      f"({stats.gb_per_s:.3f} GB/s)", highlight=False)
    return frame, sweep.attrs(heads=heads, pad_queries=pad_queries)


def _online(*, model: str, data: str, padding_sweep: str | None, axis: Axis, sweep_mode: SweepModeOpt,
            heads: str, pad_queries: str, device, limit: int | None, arch: str | None, pre: Preprocessing,
            split: str | None, compat: str | None = None):
    """Resolve the preprocessing, load the model and run the cases (swept or as prepared,
    :func:`attnprobe.workflows.sweep.online_sweep`)."""
    from attnprobe import dist
    from attnprobe.workflows.cases import prepared
    from attnprobe.workflows.sweep import online_attrs, online_sweep, sweep_spec
    from attnprobe.workspace import list_data, resolve_model

    # every option is checked before the model is loaded: bad input fails fast
    pre.check()
    spec = None
    if padding_sweep is not None:
        spec = sweep_spec(parse_int_list(padding_sweep, option="--padding-sweep"), axis=axis,
                          pad_mode=pre.pad_mode or "end", mode=sweep_mode)
    ref = resolve_model(model)
    facts = checkpoint_facts(ref.checkpoint)
    config = pre.resolve(facts.stored, model_roi=ref.roi or facts.roi, what=Path(ref.checkpoint).name)
    if spec is not None:  # the sweep pads as the preprocessing does (in-plane modes pad z at the end)
        spec = replace(spec, pad_mode=config.pad_mode if config.pad_mode in ("end", "symmetric") else "end")
    if spec is not None and config.roi != "full":
        spec.check_shape(config.roi)
        grown = list(config.roi)
        if spec.mode == "grow":
            grown[spec.axis_index] += max(spec.paddings)
        check_memory(tuple(grown), feature_size=facts.feature_size, device=str(device),
                     option="--roi/--padding-sweep")
    elif config.roi != "full":
        check_memory(config.roi, feature_size=facts.feature_size, device=str(device))
    all_refs = list_data(data, split=split, limit=limit)  # type: ignore[arg-type]
    refs = [all_refs[i] for i in dist.shard(all_refs)]  # under torchrun: this rank's share
    net, report, _ = load_model_ref(model, arch=arch, compat=compat, ref=ref)
    if dist.is_main():
        err_console.print(f"loaded {report.summary()}", highlight=False)
    levels = spec.paddings if spec is not None else (0,)

    with progress_bar(disable=not dist.is_main()) as bar:
        task = bar.add_task("adi", total=len(refs) * len(levels), status="")
        cases = prepared(refs, config, on_case=lambda case_id: bar.update(task, status=f"{case_id} preprocessing"))
        frame = online_sweep(net, cases, spec, heads=heads, pad_queries=pad_queries, device=device,
                             on_step=lambda case_id, p: bar.update(task, advance=1, status=f"{case_id} p={p}"),
                             case_order=[r.case_id for r in all_refs])
    attrs = online_attrs(model=model, report=report, config=config, spec=spec, heads=heads,
                         pad_queries=pad_queries, axis=axis, sweep_mode=sweep_mode)
    return frame, attrs
