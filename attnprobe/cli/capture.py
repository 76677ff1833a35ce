"""``attnprobe capture``: hooks -> Zarr store."""

from __future__ import annotations

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
    progress_bar,
)
from attnprobe.cli.options import (
    AllowMismatchOption,
    AMaxOption,
    AMinOption,
    DeviceOption,
    IntensityOption,
    PadModeOption,
    Preprocessing,
    RoiOption,
    SpacingOption,
    check_memory,
    checkpoint_facts,
)

DType = Literal["float16", "float32"]


@one_line_errors
def capture(
    model: Annotated[str, typer.Option(help="Model name from attnprobe.toml or a checkpoint path.")],
    data: Annotated[str, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name.")],
    out: Annotated[Path, typer.Option(help="Output store (.zarr); an existing one of the same capture resumes.")],
    arch: Annotated[str | None, typer.Option(help="Architecture (guessed from the checkpoint when omitted).")] = None,
    taps: Annotated[list[str] | None, typer.Option("--taps", help="Glob over tap names, repeatable.")] = None,
    roi: RoiOption = None,
    pad_mode: PadModeOption = None,
    dtype: Annotated[DType, typer.Option(help="Storage dtype of maps and outputs.")] = "float16",
    device: DeviceOption = "cpu",
    limit: Annotated[int | None, typer.Option(help="Capture at most N cases.")] = None,
    split: Annotated[str, typer.Option(help="Datalist split: all, training, validation, test.")] = "all",
    spacing: SpacingOption = None,
    intensity: IntensityOption = None,
    a_min: AMinOption = None,
    a_max: AMaxOption = None,
    allow_roi_mismatch: AllowMismatchOption = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store instead of resuming.")] = False,
    compat: CompatOption = None,
) -> None:
    """Capture attention maps and block outputs of MODEL on DATA into a Zarr store.

    Example: attnprobe capture --model ct.pt --data cases.json --out ct.zarr --taps 'stage0.*'
    (ROI, spacing and intensity default to what the checkpoint was trained with).
    """
    from attnprobe import dist
    from attnprobe.errors import ConfigError
    from attnprobe.workflows.capture import capture_cases
    from attnprobe.workflows.cases import lazy_cases
    from attnprobe.workspace import resolve_model

    # every option is checked before the model loads: bad input fails fast
    pre = Preprocessing(roi=roi, spacing=spacing, intensity=intensity, a_min=a_min, a_max=a_max,
                        pad_mode=pad_mode, allow_mismatch=allow_roi_mismatch)
    if pre.check() == "full":
        raise ConfigError("a capture store needs one input size for all cases", expected="a fixed --roi like 96,96,64",
                          got="--roi full")
    check_limit(limit)
    device = init_distributed(str(check_device(device)))
    if dist.is_main():
        from attnprobe.results import check_out

        # --overwrite replaces only a store (or an empty folder), never other files (docs/results.md)
        check_out(out, overwrite=overwrite, kinds=(), store=True)
    ref = resolve_model(model)
    facts = checkpoint_facts(ref.checkpoint)
    config = pre.resolve(facts.stored, model_roi=ref.roi or facts.roi, what=Path(ref.checkpoint).name)
    if config.roi == "full":  # recorded in the checkpoint or the workspace (--roi full was refused above)
        raise ConfigError("a capture store needs one input size for all cases", expected="a fixed --roi like 96,96,64",
                          got="roi 'full' recorded for the model", fix="pass a fixed --roi")
    check_memory(config.roi, feature_size=facts.feature_size, device=device)
    net, report, _ = load_model_ref(model, arch=arch, compat=compat, ref=ref)
    if dist.is_main():
        err_console.print(f"loaded {report.summary()}", highlight=False)
    cases = lazy_cases(data, config, split=split, limit=limit)
    with progress_bar(disable=not dist.is_main()) as bar:
        task = bar.add_task("capture", total=len(dist.shard(cases)), status="")

        def advance(case_id: str, skipped: bool) -> None:
            bar.update(task, advance=1, status=f"{case_id}{' (done before)' if skipped else ''}")

        path = capture_cases(net, cases, out, config=config, data=data, taps=taps, dtype=dtype,
                             device=device, overwrite=overwrite, on_case=advance)
    if dist.is_main():
        console.print(f"wrote {path}")
