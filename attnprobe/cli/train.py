"""``attnprobe train``: fine-tune (or train from scratch) with a preset of docs/conventions.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from attnprobe.cli.common import (
    Compat,
    check_device,
    console,
    err_console,
    init_distributed,
    one_line_errors,
    parse_roi,
    progress_bar,
)

Preset = Literal["base", "ta", "act", "scratch", "paper-base", "paper-ta", "paper-act", "paper-scratch"]
PadMode = Literal["end", "symmetric", "inplane-symmetric"]
Intensity = Literal["percentile", "fixed"]

HELP = """Train a segmentation model with a preset.

Presets: base (pretrained ROI, standard augmentation), ta (+ tumor-aware intensity augmentation),
act (anisotropic crop + tumor-aware; swin_unetr 96x96x64, smit 128x128x64, tiny presets 64x64x32),
scratch (random weights, pretrained ROI, twice --epochs). paper-base, paper-ta, paper-act and
paper-scratch add the paper's recipe (batch 2, DiceCE with squared predictions, warm-up from lr 0
per epoch then cosine, MRI clipped to 0-800, in-plane symmetric padding, its augmentation with
tumor-aware before the intensity transforms); run them with --epochs 500 as the paper did.

--init names a model in attnprobe.toml or a checkpoint path (its load report is printed);
--init none trains from random weights with any preset. --model-preset picks the
architecture preset (e.g. tiny: feature size 12, cube 64^3). --resume continues an interrupted
run: repeat the original command and add --resume.

Under torchrun (torchrun --nproc_per_node K -m attnprobe train ...) the ranks train one model
with DistributedDataParallel: --batch-size stays the volumes per step over all ranks, each rank
taking its share, so the run follows the single-process one; rank 0 writes the run folder.

Example: attnprobe train --data cases.json --out runs/mri-act --preset act --init ct --epochs 100
"""


def register(app: typer.Typer) -> None:
    """Add the ``train`` command to the app (called by :mod:`attnprobe.cli.app`)."""
    app.command("train", help=HELP)(train)


@one_line_errors
def train(
    data: Annotated[str, typer.Option(help="Datalist JSON, folder of NIfTI files, or dataset name.")],
    out: Annotated[Path, typer.Option(help="Run folder (metrics.csv, last.pt, best.pt, config.json).")],
    preset: Annotated[Preset, typer.Option(help="Trainer preset.")] = "base",
    arch: Annotated[str | None, typer.Option(
        help="Architecture (default: the --init model's, else swin_unetr).")] = None,
    model_preset: Annotated[str | None, typer.Option(help="Architecture preset, e.g. tiny.")] = None,
    init: Annotated[str | None, typer.Option(
        help="Initial weights: model name from attnprobe.toml, checkpoint path, or 'none'.")] = None,
    init_compat: Annotated[Compat | None, typer.Option(
        "--compat", help="Semantics of the --init checkpoint: 'original' (its published training code) or "
        "'current'. Default: what it records; 'original' for checkpoints attnprobe did not write.")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs (scratch trains twice as many).")] = 100,
    roi: Annotated[str | None, typer.Option(help="Crop x,y,z overriding the preset's (e.g. 96,96,64).")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N (AMP on cuda).")] = "cpu",
    val_every: Annotated[int, typer.Option(help="Validate every K epochs.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for weights, data order and augmentation.")] = 0,
    batch_size: Annotated[int | None, typer.Option(
        help="Volumes per step, over all ranks under torchrun (each gives --num-samples crops); "
             "default 1 (paper presets 2).")] = None,
    num_samples: Annotated[int, typer.Option(help="Pos/neg-balanced crops per volume.")] = 4,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 3e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-5,
    split: Annotated[str, typer.Option(help="Training split of the datalist.")] = "training",
    val_split: Annotated[str, typer.Option(help="Validation split ('none' to skip validation).")] = "validation",
    val_data: Annotated[str | None, typer.Option(help="Validation data (default: --data).")] = None,
    spacing: Annotated[float, typer.Option(help="Isotropic spacing in mm.")] = 1.0,
    intensity: Annotated[Intensity | None, typer.Option(
        help="Intensity scaling (default percentile; paper presets: fixed 0-800).")] = None,
    a_min: Annotated[float | None, typer.Option(help="Fixed window lower bound (--intensity fixed).")] = None,
    a_max: Annotated[float | None, typer.Option(help="Fixed window upper bound (--intensity fixed).")] = None,
    pad_mode: Annotated[PadMode | None, typer.Option(
        help="Where padding goes (default end; paper presets: inplane-symmetric).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        help="Also write last.pt every N steps (default: end of each epoch).")] = None,
    max_steps: Annotated[int | None, typer.Option(
        help="Stop after N steps in total (resumable with --resume).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from last.pt.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the run files in an existing --out.")] = False,
) -> None:
    """Train a segmentation model with a preset (see the command help)."""
    import warnings

    from attnprobe import dist
    from attnprobe.errors import ConfigError
    from attnprobe.models import CompatNotice
    from attnprobe.results import Manifest
    from attnprobe.train.presets import get_preset, resolve_train_config
    from attnprobe.workflows.training import init_arch, run_training

    manifest = Manifest.start("train", locals())
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other", expected="one of them",
                          got="both")
    crop = parse_roi(roi)  # options first: bad input fails before anything is loaded
    if crop == "full":
        raise ConfigError("--roi must be a crop size", expected="three sizes like 96,96,64", got="'full'")
    device = str(check_device(init_distributed(device)))
    main = dist.is_main()
    random_init = init is not None and init.lower() == "none"
    init_ref = None if random_init else init
    declared_roi = None
    if init_ref is not None and get_preset(preset).pretrained:
        arch, declared_roi = init_arch(init_ref, arch)
    if not get_preset(preset).pretrained and init_ref is not None and main:
        err_console.print(f"preset {preset} starts from random weights: --init {init_ref} is ignored", highlight=False)
    config = resolve_train_config(
        preset, arch=arch or "swin_unetr", model_preset=model_preset, epochs=epochs, roi=crop,
        init=init_ref, init_compat=init_compat, declared_roi=declared_roi, val_every=val_every, seed=seed,
        num_samples=num_samples, lr=lr, weight_decay=weight_decay, spacing=spacing,
        # options left unset take the preset's recipe (attnprobe's or the paper's)
        **{k: v for k, v in (("batch_size", batch_size), ("intensity", intensity), ("a_min", a_min),
                             ("a_max", a_max), ("pad_mode", pad_mode)) if v is not None})
    if main:
        ranks = f", {dist.world_size()} ranks" if dist.is_distributed() else ""
        err_console.print(f"preset {config.preset}: {config.arch}{f' ({model_preset})' if model_preset else ''}, "
                          f"crop {'x'.join(map(str, config.roi))}, {config.epochs} epochs, "
                          f"{'tumor-aware' if config.tumor_aware else 'standard'} augmentation, "
                          f"init {config.init or 'random'}{ranks}", highlight=False)

    with progress_bar(disable=not main) as bar:
        task = bar.add_task("train", total=None, status="")
        last_dice: list[float | None] = [None]

        def on_step(info) -> None:
            dice = f" dice {last_dice[0]:.3f}" if last_dice[0] is not None else ""
            bar.update(task, total=info.total_steps, completed=info.step,
                       status=f"epoch {info.epoch} loss {info.loss:.4f}{dice}")

        def on_epoch(info) -> None:
            if info.val_dice is not None:
                last_dice[0] = info.val_dice
            bar.update(task, status=f"epoch {info.epoch} loss {info.mean_loss:.4f}"
                                    + (f" dice {last_dice[0]:.3f}" if last_dice[0] is not None else ""))

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CompatNotice)  # the trainer logs the notice as one line
            result = run_training(
                config, data, out, split=split, val_data=val_data,
                val_split=None if val_split.lower() == "none" else val_split, device=device, overwrite=overwrite,
                resume=resume, allow_random_init=random_init, checkpoint_every=checkpoint_every,
                stop_after_steps=max_steps, on_step=on_step, on_epoch=on_epoch,
                log=lambda msg: err_console.print(msg, highlight=False, markup=False), manifest=manifest)
    if not main:
        return
    state = "finished" if result.finished else f"stopped after step {result.steps_done} (resume with --resume)"
    best = f", best val Dice {result.best_dice:.4f} (epoch {result.best_epoch})" if result.best_dice is not None else ""
    console.print(f"{state}: {result.epochs_done} epochs, {result.steps_done} steps{best}; run in {result.out_dir}",
                  highlight=False)
