"""``attnprobe cka``: CKA between every block pair of two models, stores or input sets (docs/cka.md)."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import (
    Compat,
    CompatOption,
    check_device,
    check_limit,
    console,
    err_console,
    init_distributed,
    load_model_ref,
    one_line_errors,
    parse_size3,
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

KernelOpt = Literal["linear", "rbf"]
EstimatorOpt = Literal["biased", "unbiased", "minibatch"]
UnitOpt = Literal["pooled", "tokens"]
BaselineOpt = Literal["random-init", "none"]
MedianOpt = Literal["pairs", "kornblith"]
PoolingOpt = Literal["correct", "paper-swin-axes"]
SmallGridOpt = Literal["keep", "stretch"]
Split = Literal["all", "training", "validation", "test"]


def register(app: typer.Typer) -> None:
    """Add the ``cka`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("cka")(cka_command)


def _is_store_path(path: Path) -> bool:
    """A capture store: a path ending in .zarr, or a folder holding zarr.json."""
    from attnprobe.store import is_store

    return path.suffix == ".zarr" or is_store(path)


def _source(text: str) -> tuple[str, Path | None]:
    """``("store", path)`` for a capture store, else ``("model", None)`` (resolved on load)."""
    from attnprobe.workspace import resolve_model

    path = Path(text).expanduser()
    if path.suffix == ".zarr":
        return "store", path  # open_store reports a missing store clearly
    if path.exists():
        return ("store", path) if _is_store_path(path) else ("model", None)
    ref = resolve_model(text)  # workspace name (or an unknown name: a clear error)
    return ("store", ref.checkpoint) if _is_store_path(ref.checkpoint) else ("model", None)


def _parse_crop_size(text: str | None) -> tuple[int, int, int] | None:
    """``"32,64,32"`` (or ``"32x64x32"``, or one size for all axes) -> (32, 64, 32)."""
    if text is None:
        return None
    return parse_size3(text, option="--crop-size", expected="three positive sizes like 64,64,32 (or one)")


def _device(device: str) -> str:
    """Check ``--device``, then join torchrun's process group (see :func:`init_distributed`)."""
    return init_distributed(str(check_device(device)))


def _size(roi) -> str:
    return roi if isinstance(roi, str) else "x".join(map(str, roi))


def _print_diagonal(da) -> None:
    from rich import box
    from rich.table import Table

    from attnprobe.metrics.reuse import summarize

    s = summarize(da)
    a = da.attrs
    n = f"n={a.get('n')}" if a.get("unit") != "tokens" else \
        f"{a.get('n_inputs')} inputs, {a.get('n_tokens_min')}-{a.get('n_tokens_max')} tokens per block pair"
    console.print(f"CKA {a.get('ref')} (rows) vs {a.get('tgt')} (columns): {a.get('unit')}, {a.get('kernel')} "
                  f"kernel, {a.get('estimator')} estimator, {n}", highlight=False)
    table = Table(title="diagonal (same block)", box=box.SIMPLE_HEAD)
    table.add_column("block", no_wrap=True)
    table.add_column("CKA", justify="right", no_wrap=True)
    for block, value in s["diagonal"].items():
        table.add_row(block, f"{value:.3f}")
    console.print(table)
    console.print(f"diagonal mean {s['diagonal_mean']:.3f}, band mean {s['band_mean']:.3f}, "
                  f"mean row max {s['mean_row_max']:.3f}, mean best-match shift {s['mean_best_match_shift']:.2f}",
                  highlight=False)


@one_line_errors
def cka_command(
    ref: Annotated[str, typer.Option(help="Reference model: name from attnprobe.toml, checkpoint, or capture "
                                     "store (.zarr).")],
    out: Annotated[Path, typer.Option(help="Output folder for cka.nc, cka.csv and summary.json.")],
    tgt: Annotated[str | None, typer.Option(help="Target model/checkpoint/store (default: --ref, with "
                                            "--tgt-data).")] = None,
    data: Annotated[str | None, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name "
                                             "(models only).")] = None,
    tgt_data: Annotated[str | None, typer.Option(help="Inputs of the target, paired with --data by case id "
                                                 "(e.g. CT vs MRI of the same cases).")] = None,
    kernel: Annotated[KernelOpt, typer.Option(help="CKA kernel (tokens: linear only).")] = "linear",
    estimator: Annotated[EstimatorOpt, typer.Option(help="HSIC estimator.")] = "unbiased",
    unit: Annotated[UnitOpt, typer.Option(help="Examples: a pooled vector per input, or every token.")] = "pooled",
    pool: Annotated[int, typer.Option(help="Adaptive average pooling grid per spatial axis (pooled).")] = 8,
    batch_size: Annotated[int, typer.Option(help="Examples per minibatch (--estimator minibatch).")] = 32,
    crops: Annotated[int, typer.Option(help="Seeded random crops per case, the same for both sides "
                                       "(1 = the whole ROI).")] = 1,
    crop_size: Annotated[str | None, typer.Option(help="Crop size x,y,z (default: the ROI less 32 per "
                                                  "axis).")] = None,
    seed: Annotated[int, typer.Option(help="Crop seed.")] = 0,
    threshold: Annotated[float, typer.Option(help="RBF bandwidth factor (x median distance).")] = 1.0,
    median: Annotated[MedianOpt, typer.Option(
        help="RBF median: over distinct pairs, or Kornblith et al.'s (all n² squared distances, zero "
             "diagonal included); see docs/conventions.md.")] = "pairs",
    pooling: Annotated[PoolingOpt, typer.Option(
        help="Pool x, y, z (correct), or reproduce the paper's wrong-axis pooling of channel-last "
             "outputs (paper-swin-axes).")] = "correct",
    small_grid: Annotated[SmallGridOpt, typer.Option(
        help="An axis shorter than --pool keeps its size, or is stretched to it as the paper did.")] = "keep",
    device: DeviceOption = "cpu",
    limit: Annotated[int | None, typer.Option(help="Use at most N cases.")] = None,
    roi: RoiOption = None,
    split: Annotated[Split, typer.Option(help="Datalist split.")] = "all",
    pad_mode: PadModeOption = None,
    spacing: SpacingOption = None,
    intensity: IntensityOption = None,
    a_min: AMinOption = None,
    a_max: AMaxOption = None,
    allow_roi_mismatch: AllowMismatchOption = False,
    baseline: Annotated[BaselineOpt, typer.Option(
        help="Also compare with randomly initialised models of the target's architecture (models only): "
             "the CKA that unrelated weights reach on these inputs.")] = "random-init",
    baseline_seeds: Annotated[int, typer.Option(help="Random initialisations for --baseline.")] = 3,
    bootstrap: Annotated[int, typer.Option(help="Case-bootstrap resamples for 95% intervals (0: none; pooled, "
                                               "biased/unbiased).")] = 1000,
    permutations: Annotated[int, typer.Option(help="Pairing permutations for p-values (0: none).")] = 1000,
    compat: CompatOption = None,
    tgt_compat: Annotated[Compat | None, typer.Option(
        "--tgt-compat", help="--compat of the target model (default: --compat).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier attnprobe result in --out (never other "
                                            "files).")] = False,
    json_output: JsonOption = False,
) -> None:
    """CKA of every block pair of REF and TGT (feature reuse = the diagonal), written to OUT.

    Example: attnprobe cka --ref ct.pt --tgt mri.pt --data cases.json --out runs/cka
    (inputs are preprocessed as REF was trained, from its checkpoint, unless options say otherwise).
    """
    from attnprobe import dist
    from attnprobe.errors import ConfigError
    from attnprobe.metrics.reuse import CKAConfig
    from attnprobe.results import Manifest, check_out
    from attnprobe.workflows.cka import save_cka

    manifest = Manifest.start("cka", locals())

    # options first: bad input fails before anything is loaded
    config = CKAConfig(unit=unit, kernel=kernel, estimator=estimator, pool=pool, batch_size=batch_size,
                       threshold=threshold, median=median, pooling=pooling, small_grid=small_grid,
                       bootstrap=bootstrap, permutations=permutations)
    if baseline_seeds < 1:
        raise ConfigError("bad --baseline-seeds", expected="an integer >= 1", got=str(baseline_seeds),
                          fix="use --baseline none to skip the baseline")
    if crops < 1:
        raise ConfigError("bad --crops", expected="an integer >= 1", got=str(crops))
    check_limit(limit)
    box = _parse_crop_size(crop_size)
    pre = Preprocessing(roi=roi, spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max,
                        pad_mode=pad_mode, allow_mismatch=allow_roi_mismatch)
    pre.check()
    dev = _device(device)

    tgt_text = tgt if tgt is not None else ref
    ref_kind, ref_store = _source(ref)
    tgt_kind, tgt_store = _source(tgt_text)
    if ref_kind != tgt_kind:
        raise ConfigError("--ref and --tgt must both be models or both be capture stores",
                          expected="two checkpoints/model names, or two .zarr stores",
                          got=f"--ref is a {ref_kind}, --tgt is a {tgt_kind}",
                          fix="capture the model too (attnprobe capture --taps '*.out') or pass its checkpoint")
    names = (ref, tgt_text)
    main = dist.is_main()
    if ref_kind == "store":
        for flag, value in (("--data", data), ("--tgt-data", tgt_data), ("--roi", roi), ("--crop-size", crop_size),
                            ("--compat", compat), ("--tgt-compat", tgt_compat), ("--spacing", spacing),
                            ("--intensity", intensity), ("--a-min", a_min), ("--a-max", a_max),
                            ("--pad-mode", pad_mode)):
            if value is not None:
                raise ConfigError(f"{flag} does not apply to capture stores",
                                  expected="stores hold the outputs of their captured inputs",
                                  got=f"{flag} {value}", fix=f"drop {flag}, or pass checkpoints instead")
        if crops != 1:
            raise ConfigError("--crops does not apply to capture stores", expected="--crops 1",
                              got=f"--crops {crops}", fix="pass checkpoints to compare on crops")
        if tgt is None:
            raise ConfigError("--tgt is needed with a store", expected="--tgt OTHER.zarr", got="no --tgt")
        if main and baseline != "none":
            err_console.print("note: no random-init baseline for capture stores (it needs the models); "
                              "compare checkpoints to get one", highlight=False)
        target = check_out(out, overwrite=overwrite, kinds=("cka",)) if main else None
        with _warnings_as_lines(main):
            da = _stores(ref_store, tgt_store, config=config, limit=limit, device=dev, names=names, main=main)
    else:
        if data is None:
            raise ConfigError("models need inputs", expected="--data (datalist, folder or dataset name)",
                              got="no --data", fix="pass --data, or compare two capture stores")
        if tgt is None and tgt_data is None and (tgt_compat or compat) == compat:
            raise ConfigError("nothing to compare", expected="--tgt MODEL, or --tgt-data for a second input set",
                              got="only --ref", fix="pass --tgt (e.g. the fine-tuned model) or --tgt-data")
        target = check_out(out, overwrite=overwrite, kinds=("cka",)) if main else None
        with _warnings_as_lines(main):
            da = _models(ref, tgt, data=data, tgt_data=tgt_data, config=config, crops=crops, crop_size=box,
                         seed=seed, device=dev, limit=limit, pre=pre, split=split, names=names, main=main,
                         compat=(compat, tgt_compat or compat), baseline=baseline, baseline_seeds=baseline_seeds)
    if da is not None and target is not None:  # rank 0 only
        if ref_kind == "store":
            manifest.add_input(ref_store, "ref-store")  # type: ignore[arg-type]
            manifest.add_input(tgt_store, "tgt-store")  # type: ignore[arg-type]
        else:
            manifest.add_input(da.attrs["ref_path"], "ref-checkpoint")
            if da.attrs["tgt_path"] != da.attrs["ref_path"]:
                manifest.add_input(da.attrs["tgt_path"], "tgt-checkpoint")
            manifest.add_data(data)  # type: ignore[arg-type]
            if tgt_data is not None:
                manifest.add_data(tgt_data, role="tgt-data")
        manifest.compat = {side: str(da.attrs[f"{side}_compat"]) for side in ("ref", "tgt")
                           if f"{side}_compat" in da.attrs}
        paths = save_cka(da, out, manifest=manifest, replace=target.replace)
        if json_output:
            from attnprobe.metrics.reuse import summarize

            print_json({"attrs": dict(da.attrs), "summary": summarize(da), "files": [str(p) for p in paths]})
        else:
            _print_diagonal(da)
            console.print(f"wrote {', '.join(map(str, paths))}", highlight=False)
    # every rank leaves together once the outputs exist (a rank exiting early can take gloo's
    # threads down mid-collective); if rank 0 failed instead, torchrun stops the others
    dist.barrier()


@contextlib.contextmanager
def _warnings_as_lines(main: bool):
    """The library's UserWarnings as one ``warning:`` line each (once per text), on rank 0."""
    seen: set[str] = set()

    def show(message, category, *args, **kwargs) -> None:
        text = str(message)
        if main and text not in seen and issubclass(category, UserWarning):
            seen.add(text)
            err_console.print(f"warning: {text}", highlight=False, markup=False)

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        yield


def _stores(ref_store, tgt_store, *, config, limit, device, names, main):
    """Two capture stores (:class:`attnprobe.workflows.cka.StoreComparison`)."""
    from attnprobe.workflows.cka import StoreComparison

    comparison = StoreComparison.open(ref_store, tgt_store, config=config, limit=limit)  # before the progress bar
    with progress_bar(disable=not main) as bar:
        task = bar.add_task("cka (stores)", total=comparison.total, status="")
        return comparison.run(device=device, names=names, on_case=lambda c: bar.update(task, advance=1, status=c))


def _models(ref, tgt, *, data, tgt_data, config, crops, crop_size, seed, device, limit, pre, split,
            names, main, compat=(None, None), baseline="none", baseline_seeds=3):
    """Resolve the preprocessing, load both models and compare them
    (:class:`attnprobe.workflows.cka.ModelComparison`)."""
    from attnprobe.workflows.cka import ModelComparison, model_pair_attrs
    from attnprobe.workspace import resolve_model

    config_roi = pre.check()
    # the inputs are prepared as the reference model was trained (its checkpoint's metadata)
    ref_ref = resolve_model(ref)
    facts = checkpoint_facts(ref_ref.checkpoint)
    prep = pre.resolve(facts.stored, model_roi=ref_ref.roi or facts.roi, what=Path(ref_ref.checkpoint).name)
    if prep.roi != "full":
        check_memory(prep.roi, feature_size=facts.feature_size, device=str(device))
    ref_net, ref_report, ref_roi = load_model_ref(ref, compat=compat[0], ref=ref_ref)
    same_model = tgt is None and compat[1] == compat[0]  # else: the same checkpoint in two compat modes
    if same_model:
        tgt_net, tgt_report, tgt_roi = ref_net, ref_report, ref_roi
    else:
        tgt_net, tgt_report, tgt_roi = load_model_ref(tgt or ref, compat=compat[1])
    if main:
        err_console.print(f"ref: {ref_report.summary()}", highlight=False)
        if not same_model:
            err_console.print(f"tgt: {tgt_report.summary()}", highlight=False)
    if config_roi is None and not facts.stored.get("roi") and not ref_ref.roi and not facts.roi:
        prep = replace(prep, roi=tuple(ref_roi or tgt_roi or (96, 96, 96)))
    use_roi = prep.roi
    if main and config_roi is None and ref_roi and tgt_roi and tuple(ref_roi) != tuple(tgt_roi):
        err_console.print(f"note: the models' ROIs differ ({tuple(ref_roi)} vs {tuple(tgt_roi)}); both see "
                          f"{_size(use_roi)} (set --roi to choose)", highlight=False)
    comparison = ModelComparison.prepare(
        ref_net, None if same_model else tgt_net, data=data, tgt_data=tgt_data, preprocessing=prep, split=split,
        limit=limit, config=config, crops=crops, crop_size=crop_size, seed=seed, names=names,
        attrs=model_pair_attrs(ref_report, tgt_report, data=data, tgt_data=tgt_data, roi=use_roi),
        baseline=baseline, baseline_seeds=baseline_seeds)
    # one tick per crop (cases x crops per pass, the baseline's passes included): --crops 8 advances 8 times a case
    with progress_bar(disable=not main) as bar:
        task = bar.add_task("cka crops", total=comparison.total, status="")
        return comparison.run(device=device, on_example=lambda c, k: bar.update(
            task, advance=1, status=f"{c} crop {k + 1}/{crops}"))
