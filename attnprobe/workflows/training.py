"""Training runs: one trainer call and the run record next to its files.

The trainer (:func:`attnprobe.train.trainer.train`) writes and resumes ``config.json``,
``metrics.csv``, ``last.pt`` and ``best.pt``; :func:`run_training` adds ``record.json`` and
``manifest.json`` (:class:`~attnprobe.results.TrainRun`, docs/results.md) on the main rank.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from attnprobe import dist
from attnprobe.results import Manifest, TrainRun

if TYPE_CHECKING:
    from attnprobe.train.presets import TrainConfig
    from attnprobe.train.trainer import EpochInfo, StepInfo, TrainResult

__all__ = ["init_arch", "record_training", "run_training"]


def init_arch(init: str, arch: str | None = None) -> tuple[str | None, Any]:
    """Architecture and declared ROI of an initial model (a name in attnprobe.toml or a checkpoint path).

    The architecture is ``arch`` when given, else the workspace entry's, else the one an
    attnprobe checkpoint stores (None: the loader guesses it).
    """
    from attnprobe.models.checkpoints import read_metadata
    from attnprobe.workspace import resolve_model

    ref = resolve_model(init)
    arch = arch or ref.arch
    if arch is None and not Path(ref.checkpoint).is_dir():
        arch = read_metadata(ref.checkpoint).get("arch")
    return arch, ref.roi


def record_training(result: TrainResult, manifest: Manifest, *, config: TrainConfig,
                    data: str | os.PathLike[str], val_data: str | os.PathLike[str] | None = None) -> TrainRun:
    """Write ``record.json`` and ``manifest.json`` next to the trainer's files (docs/results.md).

    The manifest gets the initial checkpoint and the data (with their hashes) as inputs.
    """
    if config.init:
        from attnprobe.workspace import resolve_model

        manifest.add_input(resolve_model(config.init).checkpoint, "init-checkpoint")
    manifest.add_data(data)
    if val_data is not None:
        manifest.add_data(val_data, role="val-data")
    compat = getattr(config, "init_compat", None)
    manifest.compat = {"init": str(compat)} if compat else {}
    record = TrainRun(finished=bool(result.finished), manifest=manifest, label=config.preset)
    record.save(result.out_dir)
    return record


def run_training(
    config: TrainConfig,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    manifest: Manifest | None = None,
    val_data: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochInfo], None] | None = None,
    log: Callable[[str], None] | None = None,
    **options: Any,
) -> TrainResult:
    """Train (or resume) one run and, with a ``manifest``, record it on the main rank.

    Parameters
    ----------
    config
        From :func:`~attnprobe.train.presets.resolve_train_config`.
    data, out_dir
        Training data (datalist, folder or dataset name) and run folder.
    manifest
        The run's manifest (started before the options were read); None: no record is written.
    val_data
        Validation data (default: ``data``).
    on_step, on_epoch, log
        Progress callbacks and message sink of the trainer.
    **options
        Other keywords of :func:`attnprobe.train.trainer.train` (split, val_split, device,
        overwrite, resume, allow_random_init, checkpoint_every, stop_after_steps ...).
    """
    from attnprobe.train.trainer import train

    result = train(config, data, out_dir, val_data=val_data, on_step=on_step, on_epoch=on_epoch, log=log, **options)
    if manifest is not None and dist.is_main():
        record_training(result, manifest, config=config, data=data, val_data=val_data)
    return result
