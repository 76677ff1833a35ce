"""``attnprobe evaluate``: detection, Dice, HD95 and surface Dice of a model or of existing segmentations.

Two modes:

- ``--model M --data D``: predict every case by sliding-window inference (optional flip TTA)
  with the preprocessing stored in the checkpoint's training metadata, map the prediction back
  to the input's native grid and score it there against the label file.
- ``--pred PRED_DIR --labels LABEL_DIR``: score existing segmentations, matched by file name
  (case id = name without ``.nii``/``.nii.gz``; a label named ``<id>_label`` or ``<id>_seg``
  matches ``<id>``). Every label needs a prediction; predictions without a label are skipped.

Both write ``cases.csv`` (case, detected, iou, dice, hd95, surface_dice) and ``summary.json``
(:func:`attnprobe.train.evaluate.summarize` with bootstrap 95 % intervals, NaN written as null,
plus the definitions used: scope, detection rule, surface method, thresholds).

A third mode compares two evaluation runs:

- ``--compare RUN_A RUN_B``: pair the cases of two output folders of this command by case id
  and write ``compare.csv`` (:func:`attnprobe.train.stats.compare_cases`: exact McNemar on
  detection, Wilcoxon signed-rank on Dice and HD95, effect sizes with bootstrap intervals).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from attnprobe.cli.common import (
    CompatOption,
    check_device,
    check_finite_weights,
    check_limit,
    console,
    err_console,
    load_checkpoint_quietly,
    one_line_errors,
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

Scope = Literal["matched", "volume"]
Detection = Literal["lits", "pairwise"]
Surface = Literal["surfel", "voxel"]


def register(app: typer.Typer) -> None:
    """Add the ``evaluate`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("evaluate")(evaluate)


def _score_folders(pred_dir: Path, label_dir: Path, metric_options: dict[str, Any]) -> list:
    from attnprobe.workflows.evaluation import pair_folders, score_pairs

    pairs = pair_folders(pred_dir, label_dir)
    extra = pairs.unlabelled
    if extra:
        err_console.print(f"skipping {len(extra)} prediction(s) without a label: {', '.join(extra[:5])}",
                          highlight=False)
    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=len(pairs.pairs), status="")
        return score_pairs(pairs, metric_options, on_case=lambda case: bar.update(task, advance=1, status=case))


def _check_preprocessing(stored: dict[str, Any] | None, requested: dict[str, Any], *, allow: bool) -> dict[str, Any]:
    """Preprocessing to use: the stored one, with requested values refused when they differ."""
    from attnprobe.cli.options import check_against_training

    if not stored:
        return requested
    values = check_against_training(stored, requested, allow=allow, doing="evaluating")
    # evaluation falls back on its own defaults (below), not on the shared ones
    return {k: (v if requested[k] is not None or stored.get(k) is not None else None) for k, v in values.items()}


def _predict_and_score(model: str, data: str, *, arch: str | None, split: str | None, pre: Preprocessing,
                       tta: bool, device: str, limit: int | None,
                       write: bool, out: Path, metric_options: dict[str, Any],
                       compat: str | None = None) -> tuple[list, dict[str, Any]]:
    from attnprobe.data.preprocess import PreprocessConfig
    from attnprobe.errors import ConfigError, DataError
    from attnprobe.train.inference import InferenceConfig
    from attnprobe.workflows.evaluation import predict_and_score
    from attnprobe.workspace import list_data, resolve_data, resolve_model

    # everything that can be checked without the model first: options, data, labels
    crop = pre.check()
    if crop == "full":
        raise ConfigError("--roi must be a window size", expected="three sizes like 96,96,64", got="'full'")
    dev = check_device(device)
    source = resolve_data(data)
    if split is None:
        split = "test" if Path(source).suffix.lower() == ".json" and source.split == "all" else source.split
    refs = list_data(source, split=split)  # type: ignore[arg-type]
    check_limit(limit)  # after listing, as before: a bad data source is reported first
    refs = refs[:limit] if limit is not None else refs
    unlabeled = [r.case_id for r in refs if r.label is None]
    if len(unlabeled) == len(refs) and not write:
        raise DataError(f"no case of {data} (split {split}) has a label: there is nothing to score",
                        expected="cases with a label", got=f"{len(refs)} case(s) without one",
                        fix="use a datalist with labels, or add --write-predictions to only predict "
                            f"(they go to {out / 'predictions'})")
    if unlabeled and not write:
        err_console.print(f"note: {len(unlabeled)} case(s) without a label are skipped "
                          f"({', '.join(unlabeled[:5])}{' ...' if len(unlabeled) > 5 else ''}); "
                          "--write-predictions predicts them too", highlight=False, markup=False)
        refs = [r for r in refs if r.label is not None]

    ref = resolve_model(model)
    facts = checkpoint_facts(ref.checkpoint)
    requested = {"roi": list(crop) if crop else (list(ref.roi) if ref.roi else None), "intensity": pre.intensity,
                 "a_min": pre.a_min, "a_max": pre.a_max, "spacing": pre.spacing, "pad_mode": pre.pad_mode}
    stored = {k: (list(v) if isinstance(v, tuple) else v) for k, v in facts.stored.items()}
    used = _check_preprocessing(stored, requested, allow=pre.allow_mismatch)
    if used["roi"] is not None:
        check_memory(tuple(used["roi"]), feature_size=facts.feature_size, device=str(dev))
    net, report = load_checkpoint_quietly(ref.checkpoint, arch or ref.arch, compat=compat)
    check_finite_weights(net, Path(report.path).name)
    err_console.print(f"loaded {report.summary()}", highlight=False)
    window = used["roi"] or net.attnprobe_config.get("roi")
    if window is None:
        raise ConfigError("no ROI for the sliding window", expected="--roi or a checkpoint with a ROI", got="none")
    config = PreprocessConfig(roi="full", spacing=used["spacing"] if used["spacing"] is not None else 1.0,
                              intensity=used["intensity"] or "percentile",
                              a_min=used["a_min"] if used["intensity"] == "fixed" else None,
                              a_max=used["a_max"] if used["intensity"] == "fixed" else None,
                              pad_mode=used["pad_mode"] or "end")
    infer = InferenceConfig(roi=tuple(window), tta=tta)

    with progress_bar() as bar:
        task = bar.add_task("evaluate", total=len(refs), status="")
        scores = predict_and_score(net, refs, preprocess=config, inference=infer, device=dev,
                                   metric_options=metric_options, write_to=out if write else None,
                                   on_case=lambda case: bar.update(task, advance=1, status=case))
    results, predicted_only = scores.results, scores.predicted_only
    if predicted_only:
        err_console.print(f"{len(predicted_only)} case(s) without a label were predicted but not scored; "
                          f"their predictions are in {out / 'predictions'}", highlight=False, markup=False)
    info = {"model": str(ref.checkpoint), "compat": report.compat, "data": str(source.path), "split": split,
            "roi": list(window), "tta": tta, "preprocessing": {k: v for k, v in used.items() if k != "roi"}}
    return results, info


@one_line_errors
def evaluate(
    out: Annotated[Path, typer.Option(help="Output folder for cases.csv and summary.json.")],
    model: Annotated[str | None, typer.Option(help="Model name from attnprobe.toml or a checkpoint path.")] = None,
    data: Annotated[str | None, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name.")] = None,
    pred: Annotated[Path | None, typer.Option(help="Folder of predicted segmentations (with --labels).")] = None,
    labels: Annotated[Path | None, typer.Option(help="Folder of reference labels (with --pred).")] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture (guessed from the checkpoint when omitted).")] = None,
    split: Annotated[str | None, typer.Option(
        help="Datalist split (default: test for a datalist, all for a folder).")] = None,
    roi: RoiOption = None,
    allow_roi_mismatch: AllowMismatchOption = False,
    intensity: IntensityOption = None,
    a_min: AMinOption = None,
    a_max: AMaxOption = None,
    spacing: SpacingOption = None,
    pad_mode: PadModeOption = None,
    tta: Annotated[bool, typer.Option(help="Flip test-time augmentation (identity + one flip per axis).")] = False,
    write_predictions: Annotated[bool, typer.Option(
        help="Write predictions/ and probabilities/ as NIfTI in the input's native space.")] = False,
    device: DeviceOption = "cpu",
    limit: Annotated[int | None, typer.Option(help="Evaluate at most N cases.")] = None,
    scope: Annotated[Scope, typer.Option(
        help="Dice/HD95 on matched lesions only (the paper) or over the whole volume.")] = "matched",
    detection: Annotated[Detection, typer.Option(
        help="lits: drop small reference components, merge fragments before IoU (the paper); "
             "pairwise: one predicted component at a time.")] = "lits",
    surface: Annotated[Surface, typer.Option(
        help="Surface distances from area-weighted surface elements (surfel, the paper) or surface voxels.")] = "surfel",
    min_component_voxels: Annotated[int, typer.Option(help="Drop predicted components this small or smaller.")] = 10,
    iou_threshold: Annotated[float, typer.Option(help="IoU above which a lesion counts as detected.")] = 0.1,
    tolerance_mm: Annotated[float, typer.Option(help="Surface Dice tolerance in mm.")] = 2.0,
    compat: CompatOption = None,
    compare: Annotated[tuple[Path, Path] | None, typer.Option(
        help="Compare two evaluation output folders RUN_A RUN_B (paired by case); writes compare.csv.")] = None,
    n_resamples: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier attnprobe result in --out (never other "
                                            "files).")] = False,
    json_output: JsonOption = False,
) -> None:
    """Score a model on data (--model/--data) or existing segmentations (--pred/--labels), or compare two runs.

    Example: attnprobe evaluate --model runs/mri/last.pt --data cases.json --out runs/eval
    (or --pred PRED_DIR --labels LABEL_DIR; preprocessing defaults to the checkpoint's training).
    """
    from attnprobe.errors import ConfigError
    from attnprobe.results import Manifest, check_out
    from attnprobe.workflows.evaluation import evaluation_run

    manifest = Manifest.start("evaluate", locals())

    model_mode = model is not None or data is not None
    folder_mode = pred is not None or labels is not None
    if compare:  # click gives None or () when the option is absent
        if model_mode or folder_mode:
            raise ConfigError("--compare takes no model or segmentations", expected="--compare RUN_A RUN_B --out OUT",
                              got="also " + ", ".join(f"--{k}" for k, v in (("model", model), ("data", data),
                                                      ("pred", pred), ("labels", labels)) if v is not None))
        _compare_runs(compare[0], compare[1], out, n_resamples=n_resamples, seed=seed, overwrite=overwrite,
                      manifest=manifest)
        return
    if model_mode == folder_mode or (model_mode and (model is None or data is None)) or (
            folder_mode and (pred is None or labels is None)):
        raise ConfigError("choose one evaluation mode", expected="--model and --data, or --pred and --labels",
                          got=", ".join(f"--{k}" for k, v in (("model", model), ("data", data), ("pred", pred),
                                                               ("labels", labels)) if v is not None) or "none")
    metric_options = {"scope": scope, "detection": detection, "surface": surface,
                      "min_component_voxels": min_component_voxels, "iou_threshold": iou_threshold,
                      "tolerance_mm": tolerance_mm}
    target = check_out(out, overwrite=overwrite, kinds=("evaluation",))
    if folder_mode:
        results = _score_folders(pred, labels, metric_options)  # type: ignore[arg-type]
        info: dict[str, Any] = {"pred": str(pred), "labels": str(labels)}
        manifest.add_input(pred, "predictions")  # type: ignore[arg-type]
        manifest.add_input(labels, "labels")  # type: ignore[arg-type]
    else:
        pre = Preprocessing(roi=roi, spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max,
                            pad_mode=pad_mode, allow_mismatch=allow_roi_mismatch)
        results, info = _predict_and_score(
            model, data, arch=arch, split=split, pre=pre, tta=tta, device=device,  # type: ignore[arg-type]
            limit=limit, write=write_predictions, out=out, metric_options=metric_options, compat=compat)
        manifest.add_input(info["model"], "checkpoint")
        manifest.add_data(data)  # type: ignore[arg-type]
        manifest.compat = {"model": str(info["compat"])}
    record = evaluation_run(results, info=info, metric_options=metric_options, n_resamples=n_resamples, seed=seed,
                            manifest=manifest)
    record.save(out, replace=target.replace, extra_files=("predictions", "probabilities"))
    summary = record.summary  # the bootstrap summary, then info, then the definitions
    if json_output:
        print_json({**summary, "files": [str(out / "cases.csv"), str(out / "summary.json")]})
    elif results:
        console.print(f"{summary['n_detected']}/{summary['n_with_reference']} detected"
                      f" ({_pct(summary['detection_rate'])} {_interval(summary, 'detection_rate', pct=True)}), "
                      f"Dice {_num(summary['dice_mean'], 4)} {_interval(summary, 'dice')}, "
                      f"HD95 {_num(summary['hd95_mean'], 2)} {_interval(summary, 'hd95')} mm"
                      f" (scope {scope}, detection {detection}, surface {surface}; "
                      f"95% bootstrap intervals over cases); wrote {out / 'cases.csv'}",
                      highlight=False, markup=False, soft_wrap=True)
    else:
        console.print(f"no labelled case to score; wrote {out / 'cases.csv'}", highlight=False)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _interval(summary: dict[str, Any], name: str, *, pct: bool = False) -> str:
    low, high = summary.get(f"{name}_ci_low"), summary.get(f"{name}_ci_high")
    if low is None or high is None:
        return "[CI n/a]"
    return f"[{_pct(low)}, {_pct(high)}]" if pct else f"[{low:.4g}, {high:.4g}]"


def _compare_runs(run_a: Path, run_b: Path, out: Path, *, n_resamples: int, seed: int, overwrite: bool = False,
                  manifest=None) -> None:
    from attnprobe.workflows.evaluation import compare_runs

    table = compare_runs(run_a, run_b, out, n_resamples=n_resamples, seed=seed, overwrite=overwrite,
                         manifest=manifest).table
    console.print(f"B = {run_b} vs A = {run_a} (paired by case; 95% bootstrap intervals):", highlight=False,
                  markup=False, soft_wrap=True)
    for row in table.to_dict("records"):  # one line per metric, unwrapped, for logs
        console.print(_compare_line(row), highlight=False, markup=False, soft_wrap=True)
    console.print(f"wrote {out / 'compare.csv'}", highlight=False)


def _compare_line(row: dict[str, Any]) -> str:
    import pandas as pd

    def f(v: Any) -> str:
        return "n/a" if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    ci = f"[{f(row['difference_ci_low'])}, {f(row['difference_ci_high'])}]"
    if row["metric"] == "detection":
        text = (f"detection (n={row['n_pairs']}): rate A {f(row['a'])}, B {f(row['b'])}, B-A {f(row['difference'])} "
                f"{ci}; exact McNemar p = {f(row['p_value'])} (A only {row['a_only']}, B only {row['b_only']})")
    else:
        text = (f"{row['metric']} (n={row['n_pairs']}): median A {f(row['a'])}, B {f(row['b'])}, median B-A "
                f"{f(row['difference'])} {ci}; Wilcoxon W = {f(row['statistic'])}, p = {f(row['p_value'])}, "
                f"rank-biserial r = {f(row['effect_size'])}")
    return text + (f" -- {row['note']}" if isinstance(row["note"], str) and row["note"] else "")
