"""``attnprobe data``: make phantom datasets and measure axial extents / crop token efficiency."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import (
    Compat,
    check_limit,
    console,
    err_console,
    one_line_errors,
    parse_roi,
    progress_bar,
)
from attnprobe.cli.options import AMaxOption, AMinOption, Intensity, PadMode, Preprocessing

Split = Literal["all", "training", "validation", "test"]
Rule = Literal["coverage", "efficiency"]

data_app = typer.Typer(help="Data utilities: synthetic phantoms, axial extents and crop recommendation.",
                       no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the app (called by :mod:`attnprobe.cli.app`)."""
    app.add_typer(data_app, name="data")


def parse_candidates(text: str) -> list[tuple[int, int, int]]:
    """``"96x96x96,96x96x64"`` -> ``[(96, 96, 96), (96, 96, 64)]`` (each checked as a ROI)."""
    from attnprobe.data.preprocess import validate_roi
    from attnprobe.errors import ConfigError

    crops = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.count("x") != 2:
            raise ConfigError("cannot read --candidates", expected="crops like 96x96x96,96x96x64", got=repr(text))
        crops.append(validate_roi(parse_roi(part), what="candidate crop"))
    if not crops:
        raise ConfigError("no crop in --candidates", expected="crops like 96x96x96,96x96x64", got=repr(text))
    return crops  # type: ignore[return-value]


@data_app.command("phantoms")
@one_line_errors
def phantoms(
    out: Annotated[Path, typer.Option(help="Output folder (NIfTI files + one datalist JSON per modality).")],
    n: Annotated[int, typer.Option(help="Number of cases.")] = 24,
    seed: Annotated[int, typer.Option(help="Dataset seed (same seed, same data).")] = 0,
    modality: Annotated[list[str] | None, typer.Option(
        "--modality", help="Rendering(s) to write: mri or ct, repeatable (default: both).")] = None,
    shape: Annotated[str | None, typer.Option(
        help="Exact array shape x,y,z for small, fast phantoms (e.g. 48,48,24); default: 1.5x1.5x2.5 mm voxels.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier phantom dataset in --out (never other "
                                            "files).")] = False,
) -> None:
    """Write synthetic pelvic phantoms (MRI- and CT-like renderings of one anatomy) with datalists.

    Example: attnprobe data phantoms --out phantoms --n 8 --shape 48,48,24
    """
    from attnprobe.data.phantoms import MODALITIES
    from attnprobe.errors import ConfigError
    from attnprobe.results import Manifest, check_out
    from attnprobe.workflows.phantoms import write_phantoms

    manifest = Manifest.start("data phantoms", locals())

    mods = tuple(modality or MODALITIES)
    if any(m not in MODALITIES for m in mods):
        raise ConfigError("unknown --modality", expected=" or ".join(MODALITIES), got=", ".join(mods))
    size = None
    if shape is not None:
        try:
            size = tuple(int(v) for v in shape.replace("x", ",").split(","))
        except ValueError:
            size = ()
        if len(size) != 3 or min(size) < 8:
            raise ConfigError("cannot read --shape", expected="three sizes >= 8 like 48,48,24", got=repr(shape))
    target = check_out(out, overwrite=overwrite, kinds=("phantoms",))
    paths = write_phantoms(out, n=n, seed=seed, modalities=mods, shape=size, replace=target.replace,
                           manifest=manifest)
    for mod, path in paths.items():
        console.print(f"{mod}: {path}", highlight=False)


@data_app.command("extent")
@one_line_errors
def extent(
    data: Annotated[str, typer.Argument(help="Datalist JSON, folder of NIfTI files, or dataset name.")],
    arch: Annotated[str, typer.Option(help="Architecture whose token geometry is measured.")] = "swin_unetr",
    model_preset: Annotated[str | None, typer.Option(
        help="Architecture preset, e.g. tiny (default: the architecture's own).")] = None,
    candidates: Annotated[str | None, typer.Option(
        help="Crops to compare, e.g. 96x96x96,96x96x64 (default: the pretrained cube and every shallower "
             "multiple of 32).")] = None,
    split: Annotated[Split, typer.Option(help="Datalist split.")] = "all",
    spacing: Annotated[float, typer.Option(help="Isotropic spacing in mm for preprocessing.")] = 1.0,
    pad_mode: Annotated[PadMode, typer.Option(help="Where padding goes when a case is smaller than a crop.")] = "end",
    intensity: Annotated[Intensity, typer.Option(help="Intensity scaling (decides the foreground crop).")] = "percentile",
    a_min: AMinOption = None,
    a_max: AMaxOption = None,
    coverage: Annotated[float, typer.Option(help="Quantile of axial extents the crop must cover.")] = 0.9,
    rule: Annotated[Rule, typer.Option(
        help="coverage: smallest multiple of 32 covering the quantile; efficiency: best stage-0 token "
             "efficiency among the covering candidates.")] = "coverage",
    limit: Annotated[int | None, typer.Option(help="Use at most N cases.")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for extent.csv and efficiency.csv (default: current).")] = None,
    compat: Annotated[Compat, typer.Option(
        help="Token geometry of 'current' MONAI/SMIT or of the 'original' code of published checkpoints "
             "(crops that code cannot run are left out).")] = "current",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier attnprobe result in --out (never other "
                                            "files).")] = False,
) -> None:
    """Axial-extent distribution, token efficiency of candidate crops, and a crop recommendation.

    Example: attnprobe data extent cases.json --arch swin_unetr --candidates 96x96x96,96x96x64
    """
    from rich.table import Table

    from attnprobe.results import Manifest

    manifest = Manifest.start("data extent", locals())

    from attnprobe.data.preprocess import PreprocessConfig, prepare_case
    from attnprobe.models.registry import resolve_config
    from attnprobe.workflows.extent import default_candidates, study_crops, summarize_extents
    from attnprobe.workspace import list_data

    resolve_config(arch, model_preset)  # unknown arch/preset fail before any loading
    Preprocessing(spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max, pad_mode=pad_mode).check()
    crops = parse_candidates(candidates) if candidates else default_candidates(arch, model_preset)
    check_limit(limit)
    target = _extent_out(out, overwrite=overwrite) if out is not None else None
    # "all" (the default) defers to the split a workspace dataset declares.
    refs = list_data(data, split=None if split == "all" else split, limit=limit)
    config = PreprocessConfig(roi="full", pad_mode=pad_mode, spacing=spacing, intensity=intensity,
                              a_min=a_min, a_max=a_max)
    with progress_bar() as bar:
        task = bar.add_task("extent", total=len(refs), status="")
        study = study_crops((prepare_case(ref, config) for ref in refs), crops, arch=arch, model_preset=model_preset,
                            pad_mode=pad_mode, compat=compat, coverage=coverage, rule=rule, spacing_z=spacing,
                            on_case=lambda c: bar.update(task, advance=1, status=c.case_id))
    extents, eff, rec = study.extents, study.efficiency, study.recommendation
    ext_summary = summarize_extents(extents)

    manifest.add_data(data)
    manifest.compat = {"geometry": compat}
    record = study.record(manifest=manifest)
    if target is not None:
        folder = target.path
        record.save(folder, replace=target.replace)
    else:
        folder = _write_in_cwd(record, overwrite=overwrite)

    table = Table(title=f"extent (mm, {spacing:g} mm voxels, {len(extents)} cases)")
    for col in ext_summary.columns:
        table.add_column(col, justify="left" if col == "axis" else "right")
    for r in ext_summary.itertuples(index=False):
        table.add_row(r.axis, str(r.n), *(f"{getattr(r, c):.1f}" for c in ext_summary.columns[2:]))
    console.print(table)

    table = Table(title=f"token efficiency, {arch}{f' ({model_preset})' if model_preset else ''}: "
                        "real / all tokens (window padding included), mean over cases")
    table.add_column("crop")
    stages = sorted(eff["stage"].unique())
    for s in stages:
        table.add_column(f"stage {s}", justify="right")
    table.add_column("empty windows s0", justify="right")
    table.add_column("fits axially", justify="right")
    for name, grp in eff.groupby("candidate", sort=False):
        by_stage = grp.set_index("stage")
        table.add_row(name, *(f"{by_stage.loc[s, 'efficiency_mean']:.3f}" for s in stages),
                      f"{by_stage.loc[stages[0], 'empty_window_fraction_mean']:.3f}",
                      f"{by_stage.loc[stages[0], 'axial_coverage']:.0%}")
    console.print(table)
    console.print(f"recommended crop: [bold]{'x'.join(map(str, rec.roi))}[/] ({rec.reason})", highlight=False)
    err_console.print(f"wrote {folder / 'extent.csv'} and {folder / 'efficiency.csv'}", highlight=False)


def _extent_out(out: Path, *, overwrite: bool):
    from attnprobe.results import check_out

    return check_out(out, overwrite=overwrite, kinds=("extent",))


def _write_in_cwd(record, *, overwrite: bool) -> Path:
    """Without --out: only the two tables, atomically, into the working directory (as before run
    records); an earlier extent.csv/efficiency.csv there needs --overwrite."""
    from attnprobe.errors import ConfigError
    from attnprobe.results import atomic_path

    folder = Path.cwd()
    there = [n for n in ("extent.csv", "efficiency.csv") if (folder / n).exists()]
    if there and not overwrite:
        raise ConfigError(f"{', '.join(there)} already in {folder}", expected="no earlier extent tables",
                          got=", ".join(there), fix="pass --out FOLDER, or --overwrite to replace them")
    for name, frame in (("extent.csv", record.extents), ("efficiency.csv", record.efficiency)):
        with atomic_path(folder / name) as tmp:
            frame.to_csv(tmp, index=False)
    return folder
