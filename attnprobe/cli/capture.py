"""``attnprobe capture``: hooks -> Zarr store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import (
    console,
    err_console,
    load_model_ref,
    one_line_errors,
    parse_roi,
    progress_bar,
)

PadMode = Literal["end", "symmetric"]
DType = Literal["float16", "float32"]
Intensity = Literal["percentile", "fixed"]


def prepare_all(data: str, *, roi, pad_mode: str, spacing: float | None, intensity: str,
                a_min: float | None, a_max: float | None, split: str, limit: int | None):
    """List and preprocess cases (with their real-voxel masks)."""
    from attnprobe.data.io import list_cases
    from attnprobe.data.preprocess import PreprocessConfig, prepare_case
    from attnprobe.workspace import resolve_data

    source = resolve_data(data)
    refs = list_cases(source, split=split if split != "all" else getattr(source, "split", None) or "all")  # type: ignore[arg-type]
    if limit is not None:
        refs = refs[:limit]
    config = PreprocessConfig(roi=roi, pad_mode=pad_mode, spacing=spacing, intensity=intensity,  # type: ignore[arg-type]
                              a_min=a_min, a_max=a_max)
    cases = []
    with progress_bar() as bar:
        task = bar.add_task("preprocess", total=len(refs), status="")
        for ref in refs:
            cases.append(prepare_case(ref, config))
            bar.update(task, advance=1, status=ref.case_id)
    return cases, config


@one_line_errors
def capture(
    model: Annotated[str, typer.Option(help="Model name from attnprobe.toml or a checkpoint path.")],
    data: Annotated[str, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name.")],
    out: Annotated[Path, typer.Option(help="Output store (.zarr); an existing one of the same capture resumes.")],
    arch: Annotated[str | None, typer.Option(help="Architecture (guessed from the checkpoint when omitted).")] = None,
    taps: Annotated[list[str] | None, typer.Option("--taps", help="Glob over tap names, repeatable.")] = None,
    roi: Annotated[str | None, typer.Option(help="Model ROI x,y,z (default: the model's).")] = None,
    pad_mode: Annotated[PadMode, typer.Option(help="Where input padding goes.")] = "end",
    dtype: Annotated[DType, typer.Option(help="Storage dtype of maps and outputs.")] = "float16",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    limit: Annotated[int | None, typer.Option(help="Capture at most N cases.")] = None,
    split: Annotated[str, typer.Option(help="Datalist split: all, training, validation, test.")] = "all",
    spacing: Annotated[float | None, typer.Option(help="Resample to this isotropic spacing in mm.")] = 1.0,
    intensity: Annotated[Intensity, typer.Option(help="Intensity scaling.")] = "percentile",
    a_min: Annotated[float | None, typer.Option(help="Fixed window lower bound (--intensity fixed).")] = None,
    a_max: Annotated[float | None, typer.Option(help="Fixed window upper bound (--intensity fixed).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store instead of resuming.")] = False,
) -> None:
    """Capture attention maps and block outputs of MODEL on DATA into a Zarr store."""
    from attnprobe.store import capture_to_store

    net, report, model_roi = load_model_ref(model, arch=arch)
    err_console.print(f"loaded {report.summary()}", highlight=False)
    use_roi = parse_roi(roi) or model_roi
    if use_roi is None or use_roi == "full":
        use_roi = use_roi or (96, 96, 96)
    cases, config = prepare_all(data, roi=use_roi, pad_mode=pad_mode, spacing=spacing, intensity=intensity,
                                a_min=a_min, a_max=a_max, split=split, limit=limit)
    with progress_bar() as bar:
        task = bar.add_task("capture", total=len(cases), status="")

        def advance(case_id: str, skipped: bool) -> None:
            bar.update(task, advance=1, status=f"{case_id}{' (done before)' if skipped else ''}")

        path = capture_to_store(net, cases, out, taps=taps or ["*"], dtype=dtype, device=device,
                                overwrite=overwrite, on_sample=advance,
                                attrs={"preprocessing": config_dict(config), "padding": {"mode": pad_mode}})
    console.print(f"wrote {path}")


def config_dict(config) -> dict:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
