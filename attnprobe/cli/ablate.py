"""``attnprobe ablate``: segmentation under causal interventions on padding, over a padding sweep.

Writes to ``--out`` (an ablation run, ``docs/ablation.md``):

- ``ablation.csv``: tidy ``case, padding, pad_fraction, intervention, metric, value`` (metrics
  ``detected, iou, dice, hd95, surface_dice, adi, moved``);
- ``adi.csv``: block-level attention flow of the same (edited) forwards, with ``intervention``;
- ``summary.csv`` and ``summary.json``: per intervention and padding, the evaluation summary
  with bootstrap intervals and the paired change against ``none``; the JSON also holds the
  run's options and what every intervention edits;
- ``ablation.png``: change in Dice and detection vs padding, one line per intervention.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from attnprobe.cli.common import (
    CompatOption,
    check_device,
    check_limit,
    console,
    err_console,
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
KeyKind = Literal["input", "window", "all"]
Split = Literal["all", "training", "validation", "test"]
Scope = Literal["matched", "volume"]
Detection = Literal["lits", "pairwise"]
Surface = Literal["surfel", "voxel"]


def register(app: typer.Typer) -> None:
    """Add the ``ablate`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("ablate")(ablate)


def _print_table(summary) -> None:
    """Change against ``none`` per intervention and padding, narrow enough for 80 columns."""
    from rich import box
    from rich.table import Table

    table = Table(title="change against 'none': mean over cases [95% bootstrap interval]", box=box.SIMPLE_HEAD)
    for col in ("intervention", "p", "Δ Dice", "Δ detect", "ADI", "moved"):
        table.add_column(col, justify="left" if col == "intervention" else "right", no_wrap=True)

    def f(v: Any, d: int = 3) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{d}f}"

    for row in summary.to_dict("records"):
        table.add_row(str(row["intervention"]), f"{row['padding']:g}",
                      f"{f(row['delta_dice'])} [{f(row['delta_dice_ci_low'], 2)}, {f(row['delta_dice_ci_high'], 2)}]",
                      f(row["delta_detection"], 2), f(row["adi_mean"]), f(row["moved_mean"]))
    console.print(table)


@one_line_errors
def ablate(
    out: Annotated[Path, typer.Option(help="Output folder of the ablation run.")],
    model: Annotated[str, typer.Option(help="Model name from attnprobe.toml or a checkpoint path.")],
    data: Annotated[str, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name (with labels).")],
    padding_sweep: Annotated[str, typer.Option(help="Padding amounts in voxels, e.g. 0,16,32.")] = "0,16,32",
    interventions: Annotated[str | None, typer.Option(
        help="Comma-separated: none, mask-stage{s}, mask-all, mean-ablate, zero-ablate "
             "(default: none, every mask-stage, mask-all, mean-ablate).")] = None,
    key_kind: Annotated[KeyKind, typer.Option(help="Padding keys the masks hide: input, window or all.")] = "all",
    axis: Annotated[Axis, typer.Option(help="Axis the sweep pads along.")] = "z",
    pad_mode: PadModeOption = None,
    sweep_mode: Annotated[SweepModeOpt, typer.Option(help="fixed-roi: content shrinks inside the ROI; "
                                                     "grow: input grows by p.")] = "fixed-roi",
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
    scope: Annotated[Scope, typer.Option(help="Dice/HD95 on matched lesions (the paper) or the whole volume.")]
    = "matched",
    detection: Annotated[Detection, typer.Option(help="Lesion detection rule.")] = "lits",
    surface: Annotated[Surface, typer.Option(help="Surface distances from surfels or surface voxels.")] = "surfel",
    n_resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    figure: Annotated[bool, typer.Option(help="Draw ablation.png.")] = True,
    compat: CompatOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier attnprobe result in --out (never other "
                                            "files).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Segmentation (detection, Dice, HD95) and ADI of MODEL on DATA under interventions on padding.

    Example: attnprobe ablate --model runs/mri/last.pt --data cases.json --padding-sweep 0,16,32 --out runs/ablate
    (preprocessing defaults to the checkpoint's training).
    """
    from attnprobe.results import Manifest, check_out

    manifest = Manifest.start("ablate", locals())
    from attnprobe.capture.geometry import check_input_shape
    from attnprobe.data.preprocess import prepare_case
    from attnprobe.errors import ConfigError, DataError
    from attnprobe.metrics.sweep import SweepSpec
    from attnprobe.models import adapter_for
    from attnprobe.workflows.ablation import ablation_run, describe, intervention_plan, run_interventions
    from attnprobe.workspace import list_data, resolve_model

    # every option is read before the model loads: bad input fails fast
    if pad_mode == "inplane-symmetric":
        raise ConfigError("--pad-mode inplane-symmetric does not apply to a padding sweep",
                          expected="end or symmetric", got=f"--pad-mode {pad_mode}")
    pre = Preprocessing(roi=roi, spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max,
                        pad_mode=pad_mode, allow_mismatch=allow_roi_mismatch)
    spec = SweepSpec(paddings=tuple(parse_int_list(padding_sweep, option="--padding-sweep")), axis=axis,
                     pad_mode=pad_mode or "end", mode=sweep_mode)
    names = [n.strip() for n in interventions.split(",") if n.strip()] if interventions is not None else None
    if names is not None and (not names or len(set(names)) != len(names)):
        raise ConfigError("bad --interventions", expected="distinct comma-separated names, e.g. none,mask-all",
                          got=repr(interventions))
    if n_resamples < 0:
        raise ConfigError("bad --n-resamples", expected="0 or more", got=str(n_resamples))
    given_roi = pre.check()
    if given_roi == "full":
        raise ConfigError("--roi must be a window size", expected="three sizes like 64,64,32", got="'full'")
    if given_roi is not None:
        spec.check_shape(given_roi)
    check_limit(limit)
    dev = check_device(device)
    target = check_out(out, overwrite=overwrite, kinds=("ablation",))
    refs = list_data(data, split=split, limit=limit)
    unlabeled = [r.case_id for r in refs if r.label is None]
    if unlabeled:
        raise DataError(f"{len(unlabeled)} case(s) have no label", expected="a label for every case",
                        got=", ".join(unlabeled[:5]), fix="use a datalist whose entries have a label")
    model_ref = resolve_model(model)
    facts = checkpoint_facts(model_ref.checkpoint)
    config = pre.resolve(facts.stored, model_roi=model_ref.roi or facts.roi, what=Path(model_ref.checkpoint).name)
    spec = replace(spec, pad_mode=config.pad_mode if config.pad_mode in ("end", "symmetric") else "end")
    if config.roi == "full":  # a sweep needs one window size (pre.check refused --roi full above)
        raise ConfigError("--roi must be a window size", expected="three sizes like 64,64,32", got="'full'")
    grown = [int(v) for v in config.roi]
    if spec.mode == "grow":
        grown[spec.axis_index] += max(spec.paddings)
    check_memory(tuple(grown), feature_size=facts.feature_size, device=str(dev), option="--roi/--padding-sweep")
    net, report, model_roi = load_model_ref(model, arch=arch, compat=compat, ref=model_ref)
    err_console.print(f"loaded {report.summary()}", highlight=False)
    plan = intervention_plan(net, names, key_kind=key_kind)
    names = [iv.name for iv in plan]
    if given_roi is None and not facts.stored.get("roi") and not model_ref.roi and not facts.roi and model_roi:
        config = replace(config, roi=tuple(model_roi))
    use_roi = tuple(int(v) for v in config.roi)  # a window size (checked above)
    spec.check_shape(use_roi)
    check_input_shape(adapter_for(net), use_roi)  # type: ignore[arg-type]
    pad_mode = config.pad_mode
    metric_options = {"scope": scope, "detection": detection, "surface": surface}

    with progress_bar() as bar:
        task = bar.add_task("ablate", total=len(refs) * len(spec.paddings) * len(plan), status="")

        def prepared():
            for ref in refs:
                bar.update(task, status=f"{ref.case_id} preprocessing")
                yield prepare_case(ref, config)

        def advance(case_id: str, p: int, name: str) -> None:
            bar.update(task, advance=1, status=f"{case_id} p={p} {name}")

        outcome = run_interventions(net, prepared(), plan, spec, device=dev, metric_options=metric_options,
                                    n_resamples=n_resamples, seed=seed, on_step=advance)
    summary = outcome.summary
    info = {"model": str(report.path), "arch": report.arch, "compat": report.compat, "data": str(data),
            "roi": list(use_roi), "padding_sweep": list(spec.paddings), "axis": axis, "pad_mode": pad_mode,
            "sweep_mode": sweep_mode, "key_kind": key_kind, "n_resamples": n_resamples, "seed": seed,
            **metric_options, "interventions": {iv.name: describe(iv) for iv in plan}}
    manifest.add_input(report.path, "checkpoint")
    manifest.add_data(data)
    manifest.compat = {"model": str(report.compat)}
    record = ablation_run(outcome, info=info, manifest=manifest, label=Path(model).stem if Path(model).exists() else model)
    extra = []
    if figure:
        if len(plan) > 1 and "none" in names:
            import matplotlib

            matplotlib.use("Agg")  # files only: never open a window
            import matplotlib.pyplot as plt

            from attnprobe.figures.ablation import ablation_deltas
            from attnprobe.figures.style import paper_style
            from attnprobe.results import atomic_path

            fig = ablation_deltas(summary)
            with paper_style(), atomic_path(out / "ablation.png") as tmp:  # the theme's dpi and background
                fig.savefig(tmp, format="png", bbox_inches="tight")
            plt.close(fig)
            extra.append("ablation.png")
        else:
            err_console.print("note: no figure: it needs 'none' and at least one other intervention", highlight=False)
    written = record.save(out, replace=target.replace, extra_files=extra) + [out / n for n in extra]
    if json_output:
        print_json({"summary": summary.to_dict("records"), "files": [str(p) for p in written]})
        return
    _print_table(summary)
    console.print(f"wrote {', '.join(map(str, written))}", highlight=False, soft_wrap=True)
