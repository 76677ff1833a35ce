"""A small, resumable, deterministic segmentation trainer for the presets of docs/conventions.md.

One run
-------
- Cases are prepared once (1 mm, RAS, intensity to [0, 1], cropped to the foreground, whole
  volume kept) and padded to at least the crop on every axis.
- Each step takes ``batch_size`` volumes, ``num_samples`` pos/neg-balanced crops of each
  (``RandCropByPosNegLabeld``, pos = neg = 1), standard augmentation and, for ``ta``/``act``,
  tumor-aware intensity augmentation; DiceCE loss (softmax, one-hot target); AdamW; a per-step
  learning rate with linear warm-up then cosine decay to 0; AMP on CUDA only.
- Every ``val_every`` epochs (and after the last) the validation cases are predicted by
  sliding-window inference (overlap 0.5, Gaussian blending) and the mean foreground Dice is
  logged; ``best.pt`` keeps the best, ``last.pt`` the latest state.

Files in ``out_dir``: ``config.json`` (the :class:`~attnprobe.train.presets.TrainConfig`),
``metrics.csv``, ``last.pt``, ``best.pt``. Checkpoints are ordinary attnprobe checkpoints
(``load_checkpoint`` reads them); their metadata ``train`` holds the config, the data, the epoch,
step and Dice, and, in ``last.pt``, a ``state`` with what resuming needs (optimizer, scheduler and
scaler state, RNG states as tensors, position in the epoch, metric rows written).

``metrics.csv`` has one row per step (``epoch, step, loss, val_dice, lr, time`` with ``val_dice``
empty) and one row per validation, whose ``loss`` is the epoch's mean training loss. ``epoch``
is 1-based (the epoch the row belongs to), ``step`` the global step after it, ``time`` seconds of
training so far (summed over resumed sessions).

Determinism and resuming
------------------------
Randomness never flows from one step to the next through a hidden generator: the volume order
of epoch ``e`` is a permutation drawn from ``(seed, e)``, and the crops and augmentations of
volume ``i`` in epoch ``e`` come from transforms reseeded from ``(seed, e, i)``. A run is
therefore a pure function of its config, and resuming at a saved step boundary replays exactly
the same batches (also with DataLoader workers, in any order). The model starts from
``set_determinism(seed)`` (random weights and any layer the checkpoint lacks). The run uses
PyTorch's deterministic algorithms (``deterministic=True``): without them the CPU backward of
Swin's relative-position-bias lookup accumulates over threads in a varying order and two
identical steps differ in the last bits. On the CPU a resumed run then ends with weights
bitwise equal to an uninterrupted one (the tests check this); on CUDA some kernels have no
deterministic version (PyTorch only warns), so equality there is only approximate.

Under torchrun
--------------
``torchrun --nproc_per_node K -m attnprobe train ...`` (or :func:`train` inside a started
process group) trains with DistributedDataParallel. ``batch_size`` stays the global batch:
every step takes the same ``batch_size`` volumes of the same epoch order as one process, and
rank ``r`` handles positions ``r, r + K, ...`` of that batch (:func:`rank_batches`), with the
same per-volume seeds. The loss is a mean over equally sized crops, so each rank scales its
loss by its share of the batch and DDP's gradient average is the single-process gradient; a
rank left without a volume (a short last batch) runs a zero-weighted copy so the all-reduce
still happens. Logged losses are the global batch's. Validation cases are split over ranks
and their Dice gathered in case order. Rank 0 alone writes ``config.json``, ``metrics.csv`` and
the checkpoints; the other ranks keep the same bookkeeping, so any rank can resume from
``last.pt``, also with another number of ranks. The run therefore follows the single-process
one up to floating-point summation order (gradients summed per rank, then across ranks).

Code map
--------
This module holds :class:`Trainer` (one run: set-up, :meth:`~Trainer.step`,
:meth:`~Trainer.validate`, checkpoints, :meth:`~Trainer.run`) and :func:`train`, which builds
one and runs it. The pieces live next to it: :mod:`~attnprobe.train.batches` (volume order,
rank shares, seeded crops), :mod:`~attnprobe.train.recipe` (loss, learning-rate schedule),
:mod:`~attnprobe.train.state` (counters, resumable state, reports),
:mod:`~attnprobe.train.checkpointing` (saving and restoring that state),
:mod:`~attnprobe.train.run_dir` (the run folder and ``metrics.csv``) and
:mod:`~attnprobe.train.weights` (the initial model).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from attnprobe import dist
from attnprobe.data.io import CaseRef
from attnprobe.data.preprocess import PreparedCase, prepare_case
from attnprobe.environment import versions
from attnprobe.errors import CheckpointError, ConfigError, DataError
from attnprobe.models.checkpoints import LoadReport, load_checkpoint, save_checkpoint
from attnprobe.train import checkpointing
from attnprobe.train.batches import CropDataset, collate_crops, epoch_order, pad_to_roi, rank_batches
from attnprobe.train.checkpointing import read_train_metadata
from attnprobe.train.inference import InferenceConfig, predict_case
from attnprobe.train.presets import TrainConfig
from attnprobe.train.recipe import lr_factor, make_loss, make_scheduler, paper_lr_factor
from attnprobe.train.run_dir import (
    RUN_FILES,
    MetricsLog,
    check_run_dir,
    check_same_run,
    start_run_dir,
    truncate_metrics,
)
from attnprobe.train.state import EpochInfo, ResumeState, StepInfo, TrainResult, TrainState
from attnprobe.train.weights import initial_model
from attnprobe.workspace import list_data

__all__ = [
    "RUN_FILES",
    "StepInfo",
    "EpochInfo",
    "TrainResult",
    "Trainer",
    "train",
    "initial_model",
    "lr_factor",
    "paper_lr_factor",
    "make_loss",
    "dice_score",
    "read_train_metadata",
    "rank_batches",
]


def dice_score(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Foreground Dice of two label maps (nonzero = foreground); 1 when both are empty."""
    p, r = pred != 0, ref != 0
    denom = int(p.sum()) + int(r.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom


class Trainer:
    """One training run: the constructor prepares it, :meth:`run` trains.

    The constructor checks the options and the run folder, reads the data, builds (or, with
    ``resume``, reloads) the model, optimizer, scheduler and scaler and restores the saved
    state; only then does it clear an earlier run's files. :meth:`run` trains epoch by epoch
    (:meth:`step`, :meth:`validate`, :meth:`save_last` / :meth:`save_best`) until the last
    epoch or ``stop_after_steps``. The parameters are those of :func:`train`, which is the
    way to use this class; ``device`` is read as there, and :meth:`run` switches PyTorch's
    deterministic algorithms on as ``train(deterministic=True)`` asks.

    Attributes
    ----------
    state
        The run's counters (:class:`~attnprobe.train.state.TrainState`), current after every step.
    model, optimizer, scheduler, scaler
        The objects being trained (``scaler`` None without AMP).
    """

    def __init__(
        self,
        config: TrainConfig,
        data: str | os.PathLike[str],
        out_dir: str | os.PathLike[str],
        *,
        split: str = "training",
        val_data: str | os.PathLike[str] | None = None,
        val_split: str | None = "validation",
        device: str | torch.device = "cpu",
        overwrite: bool = False,
        resume: bool = False,
        allow_random_init: bool = False,
        checkpoint_every: int | None = None,
        stop_after_steps: int | None = None,
        num_workers: int | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        on_epoch: Callable[[EpochInfo], None] | None = None,
        log: Callable[[str], None] | None = None,
        deterministic: bool = True,
    ) -> None:
        self.config = config
        self.deterministic = deterministic
        self.main = dist.is_main()
        self.log = log if log is not None and self.main else (lambda _msg: None)
        self.on_step, self.on_epoch = on_step, on_epoch
        self.out = Path(out_dir)
        dev = _device(device)
        if dev.type == "cuda" and dev.index is None and dist.is_distributed():
            dev = torch.device("cuda", dist.local_rank())
        self.device = dev
        self.checkpoint_every = _positive_or_none("checkpoint_every", checkpoint_every)
        self.stop_after_steps = _positive_or_none("stop_after_steps", stop_after_steps)
        check_run_dir(self.out, overwrite=overwrite, resume=resume)
        self.world = dist.world_size()
        _check_world(config.batch_size, self.world)
        self.data_info = {"data": str(_abs(data)), "split": split,
                          "val_data": str(_abs(val_data if val_data is not None else data)),
                          "val_split": val_split}
        train_refs, self.val_refs = self._list_cases(data, split, val_data, val_split)
        saved: ResumeState | None = None
        self.load_report: LoadReport | None = None
        if resume:
            self.model, saved = self._reload()
        else:
            self.model, self.load_report = initial_model(config, allow_random_init=allow_random_init, log=self.log)
        # Every rank has checked the folder and read last.pt before rank 0 changes anything in it.
        dist.barrier()
        if not resume and self.main:
            # Only now, with data and weights known to be usable, may an earlier run's files go.
            start_run_dir(self.out)
        self.model.to(dev)

        # Any rank may draw any training volume in a later epoch; validation cases are split.
        self.volumes, self.val_cases = self._prepare_cases(train_refs)
        self.dataset = CropDataset(self.volumes, config)
        self.net = dist.data_parallel(self.model, device=dev)
        self.n_batches = math.ceil(len(self.volumes) / config.batch_size)
        self.total_steps = self.n_batches * config.epochs
        self.optimizer, self.scheduler, self.scaler = _optimisation(self.model, config, n_batches=self.n_batches,
                                                                    device=dev)
        self.use_amp = self.scaler is not None
        self.loss_fn = make_loss(config.loss)
        self.infer = InferenceConfig(roi=config.roi, overlap=config.overlap, sw_batch_size=config.sw_batch_size,
                                     amp=config.amp)
        self.workers = num_workers if num_workers is not None else (2 if dev.type == "cuda" else 0)

        self.state = TrainState()
        self.metrics = MetricsLog(self.out / "metrics.csv", write=self.main)
        if saved is not None:
            self.resume_from(saved)
        elif self.main:
            (self.out / "config.json").write_text(json.dumps({**config.as_dict(), **self.data_info}, indent=1))
            truncate_metrics(self.metrics.path, 0)

    # --- set-up ---------------------------------------------------------------------------------

    def _list_cases(self, data: str | os.PathLike[str], split: str, val_data: str | os.PathLike[str] | None,
                    val_split: str | None) -> tuple[list[CaseRef], list[CaseRef]]:
        train_refs = list_data(data, split=split)  # type: ignore[arg-type]
        val_refs: list[CaseRef] = []
        if val_split is not None:
            try:
                val_source = val_data if val_data is not None else data
                val_refs = list_data(val_source, split=val_split)  # type: ignore[arg-type]
            except DataError:
                if val_data is not None or val_split != "validation":
                    raise
                self.log("no 'validation' split: training without validation (no best.pt)")
        return train_refs, val_refs

    def _reload(self) -> tuple[nn.Module, ResumeState]:
        """The model and resumable state of ``last.pt``, after checking it is this run's."""
        last = self.out / "last.pt"
        stored = read_train_metadata(last)
        if not stored or "state" not in stored:
            raise CheckpointError(f"{last} holds no resumable state", expected="a last.pt written by train",
                                  got="no train state", fix="start a new run with --overwrite")
        check_same_run(stored, self.config, self.data_info)
        saved = ResumeState.from_metadata(stored["state"], path=last)
        model, _ = load_checkpoint(last, self.config.arch, preset=self.config.model_preset)
        model.train()
        self.log(f"resuming {self.out} at epoch {saved.counters.epoch + 1}, step {saved.counters.global_step}")
        return model, saved

    def _prepare_cases(self, train_refs: list[CaseRef]) -> tuple[list[dict[str, torch.Tensor]],
                                                                  dict[int, PreparedCase]]:
        pre = self.config.preprocess_config("full")
        volumes = [pad_to_roi(prepare_case(ref, pre), self.config) for ref in train_refs]
        val_cases = {i: prepare_case(self.val_refs[i], pre) for i in dist.shard(self.val_refs)}
        for case in val_cases.values():
            if case.label is None:
                raise DataError(f"validation case {case.case_id!r} has no label",
                                expected="labels for validation", got="label missing")
        return volumes, val_cases

    # --- checkpoints ----------------------------------------------------------------------------

    def resume_from(self, saved: ResumeState) -> None:
        """Continue from a saved state: optimizer, scheduler, scaler, RNGs and counters.

        ``metrics.csv`` is cut back to the rows of that state (rows written after the last
        checkpoint by a killed run belong to steps that will run again).
        """
        self.state = checkpointing.restore(saved, self.optimizer, self.scheduler, self.scaler)
        if self.main:
            truncate_metrics(self.metrics.path, int(self.state.metrics_rows))

    def checkpoint_metadata(self, *, with_state: bool, val_dice: float | None = None) -> dict[str, Any]:
        """The ``train`` metadata of a checkpoint now (with the resumable state for ``last.pt``)."""
        s = self.state
        info: dict[str, Any] = {**self.config.as_dict(), **self.data_info, "epoch": s.epoch,
                                "step": s.global_step, "val_dice": val_dice, "best_dice": s.best_dice,
                                "best_epoch": s.best_epoch, "n_train": len(self.volumes), "n_val": len(self.val_refs),
                                "world_size": self.world, "versions": versions()}
        if with_state:
            info["state"] = checkpointing.capture(s, self.optimizer, self.scheduler, self.scaler).to_metadata()
        return {"train": info}

    def save_last(self) -> None:
        """Write ``last.pt`` (weights and resumable state; rank 0 only)."""
        if self.main:
            save_checkpoint(self.model, self.out / "last.pt", extra=self.checkpoint_metadata(with_state=True))

    def save_best(self, val_dice: float) -> None:
        """Write ``best.pt`` (weights and metadata, no resumable state; rank 0 only)."""
        if self.main:
            save_checkpoint(self.model, self.out / "best.pt",
                            extra=self.checkpoint_metadata(with_state=False, val_dice=val_dice))

    # --- training -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train from the current state to the last epoch, or until ``stop_after_steps`` steps are done."""
        self._t0 = time.perf_counter() - float(self.state.elapsed)
        finished = True
        with _deterministic_algorithms(self.deterministic, warn_only=self.device.type == "cuda"), self.metrics:
            while finished and self.state.epoch < self.config.epochs:
                finished = self.run_epoch()
        dist.barrier()  # on every rank, returning means rank 0's files are written
        return self.result(finished=finished)

    def run_epoch(self) -> bool:
        """The rest of the current epoch, then its validation and checkpoints; False when stopped early."""
        epoch = int(self.state.epoch)
        for batch, n_mine, n_batch in self._batches(epoch):
            info = self.step(batch, n_mine=n_mine, n_batch=n_batch)
            stop = self.stop_after_steps is not None and info.step >= self.stop_after_steps
            if stop or (self.checkpoint_every is not None and info.step % self.checkpoint_every == 0):
                self.save_last()
            if self.on_step is not None:
                self.on_step(info)
            if stop:
                return False
        self._end_epoch(epoch)
        return True

    def _batches(self, epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], int, int]]:
        """This rank's batches of the steps of ``epoch`` not done yet, with ``n_mine`` and ``n_batch``."""
        self.dataset.set_epoch(epoch)
        order = epoch_order(self.config.seed, epoch, len(self.volumes))
        steps = rank_batches(order, self.config.batch_size, rank=dist.rank(),
                             world_size=self.world)[int(self.state.batch):]
        loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=[mine for mine, _, _ in steps],
                                             collate_fn=collate_crops, num_workers=self.workers)
        return ((batch, n_mine, n_batch) for batch, (_, n_mine, n_batch) in zip(loader, steps))

    def step(self, batch: dict[str, torch.Tensor], *, n_mine: int, n_batch: int) -> StepInfo:
        """One optimisation step on this rank's ``n_mine`` of the ``n_batch`` volumes of a step.

        Updates the counters and writes the step's row; returns what ``on_step`` gets.
        """
        self.net.train()
        x = batch["image"].to(self.device)
        y = batch["label"].to(self.device)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
            loss = self.loss_fn(self.net(x), y)
        # DDP averages gradients over ranks: weigh this rank's mean by its share of the batch.
        weight = n_mine * self.world / n_batch
        scaled = loss if weight == 1.0 else loss * weight
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            scaled.backward()
            self.optimizer.step()
        self.scheduler.step()
        value = _batch_loss(loss, n_mine, n_batch)
        s = self.state
        s.global_step += 1
        s.batch += 1
        s.epoch_loss_sum += value
        self._row(s.epoch + 1, value, None, lr)
        return StepInfo(s.epoch + 1, s.global_step, self.total_steps, int(s.batch), self.n_batches, value, lr,
                        s.elapsed)

    def validate(self) -> float:
        """Mean foreground Dice of the validation cases, predicted by sliding-window inference.

        Each rank predicts its share of the cases; the mean is taken in case order, as in one process.
        """
        mine = []
        for i, case in self.val_cases.items():
            pred = predict_case(self.model, case, config=self.infer, device=self.device).label
            mine.append((i, dice_score(pred, cast(torch.Tensor, case.label)[0])))  # checked at set-up
        dices = [d for _, d in sorted(p for part in dist.gather_objects(mine) for p in part)]
        return float(np.mean(dices))

    def _end_epoch(self, epoch: int) -> None:
        s = self.state
        # s.batch counts this epoch's steps, i.e. the losses summed so far.
        mean_loss = s.epoch_loss_sum / max(1, s.batch)
        val_dice = None
        if self.val_refs and ((epoch + 1) % self.config.val_every == 0 or epoch + 1 == self.config.epochs):
            val_dice = self.validate()
            self._row(epoch + 1, mean_loss, val_dice, self.optimizer.param_groups[0]["lr"])
        s.epoch, s.batch, s.epoch_loss_sum = epoch + 1, 0, 0.0
        if val_dice is not None and (s.best_dice is None or val_dice > s.best_dice):
            s.best_dice, s.best_epoch = val_dice, epoch + 1
            self.save_best(val_dice)
        self.save_last()
        if self.on_epoch is not None:
            self.on_epoch(EpochInfo(epoch + 1, s.global_step, mean_loss, val_dice, s.best_dice, s.elapsed))

    def _row(self, epoch: int, loss: float, val_dice: float | None, lr: float) -> None:
        # Only rank 0 writes rows; the others count them so that their state matches its state.
        self.state.elapsed = time.perf_counter() - self._t0
        self.metrics.row(epoch, self.state.global_step, loss, val_dice, lr, self.state.elapsed)
        self.state.metrics_rows += 1

    def result(self, *, finished: bool) -> TrainResult:
        """The run's outcome from its folder and counters."""
        best = self.out / "best.pt"
        return TrainResult(out_dir=self.out, last=self.out / "last.pt", best=best if best.is_file() else None,
                           metrics=self.metrics.path, finished=finished, epochs_done=int(self.state.epoch),
                           steps_done=int(self.state.global_step), best_dice=self.state.best_dice,
                           best_epoch=self.state.best_epoch, load_report=self.load_report, config=self.config)


def train(
    config: TrainConfig,
    data: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    split: str = "training",
    val_data: str | os.PathLike[str] | None = None,
    val_split: str | None = "validation",
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    resume: bool = False,
    allow_random_init: bool = False,
    checkpoint_every: int | None = None,
    stop_after_steps: int | None = None,
    num_workers: int | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_epoch: Callable[[EpochInfo], None] | None = None,
    log: Callable[[str], None] | None = None,
    deterministic: bool = True,
) -> TrainResult:
    """Train (or resume) one run; see the module docstring for what happens.

    Parameters
    ----------
    config
        From :func:`~attnprobe.train.presets.resolve_train_config`.
    data
        Datalist JSON, folder or dataset name (``attnprobe.toml``).
    out_dir
        Run folder.
    split
        Training split of ``data``.
    val_data, val_split
        Validation source (default ``data``) and split; ``val_split=None`` or an absent default
        ``"validation"`` split disables validation.
    device
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (under torchrun ``"cuda"`` means ``cuda:LOCAL_RANK``).
    overwrite
        Replace the run files of an existing run folder.
    resume
        Continue the run in ``out_dir`` from ``last.pt``; ``config`` and the data must match.
    allow_random_init
        Let a pretrained preset start from random weights when ``config.init`` is None.
    checkpoint_every
        Also write ``last.pt`` every this many steps (default: at the end of each epoch only).
    stop_after_steps
        Stop (writing ``last.pt``) once this many steps are done in total; resume later.
    num_workers
        DataLoader workers (default 0 on CPU, 2 on CUDA); results do not depend on it.
    on_step, on_epoch, log
        Progress callbacks and a message sink. Under torchrun the callbacks run on every rank
        (with the global loss and Dice) and ``log`` on rank 0 only.
    deterministic
        Use PyTorch's deterministic algorithms during the run (restored afterwards). Needed
        for bitwise reproducibility on the CPU: the default backward of Swin's relative
        position bias lookup accumulates with several threads in a varying order. On CUDA it
        only warns about ops without a deterministic version.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        Existing run folder without ``overwrite``/``resume``, settings that differ on resume,
        a bad device or option.
    DataError, CheckpointError
        Unusable data or initial checkpoint.
    """
    trainer = Trainer(config, data, out_dir, split=split, val_data=val_data, val_split=val_split, device=device,
                      overwrite=overwrite, resume=resume, allow_random_init=allow_random_init,
                      checkpoint_every=checkpoint_every, stop_after_steps=stop_after_steps,
                      num_workers=num_workers, on_step=on_step, on_epoch=on_epoch, log=log,
                      deterministic=deterministic)
    return trainer.run()


def _batch_loss(loss: torch.Tensor, n_mine: int, n_batch: int) -> float:
    """The whole batch's mean loss: this rank's mean in one process, else the volume-weighted mean."""
    if not dist.is_distributed():
        return float(loss.detach())
    total = torch.tensor([float(loss.detach()) * n_mine], dtype=torch.float64, device=loss.device)
    return float(dist.all_reduce_sum_(total)) / n_batch


def _check_world(batch_size: int, world: int) -> None:
    """Each of the ``world`` ranks must get a volume of a full batch."""
    if batch_size < world:
        raise ConfigError(
            "the batch is smaller than the number of ranks",
            expected=f"batch_size >= {world} (batch_size is the global batch, split over ranks)",
            got=f"batch_size={batch_size}", fix=f"pass --batch-size {world} or more, or start fewer processes")


def _optimisation(model: nn.Module, config: TrainConfig, *, n_batches: int, device: torch.device) -> tuple[
        torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler | None]:
    """AdamW, its learning-rate schedule, and a gradient scaler when AMP runs (CUDA only)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, n_batches=n_batches)
    scaler = torch.amp.GradScaler("cuda") if config.amp and device.type == "cuda" else None
    return optimizer, scheduler, scaler


def _positive_or_none(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"bad {name}", expected="a positive integer or None", got=repr(value))
    return value


def _abs(path: str | os.PathLike[str]) -> str:
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else os.fspath(path)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("cannot read device", expected="cpu, cuda or cuda:N", got=repr(device)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda asked for but no CUDA device is available", expected="cpu here",
                          got=repr(str(device)), fix="use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError("unsupported device", expected="cpu or cuda", got=repr(str(device)))
    return dev


@contextmanager
def _deterministic_algorithms(enabled: bool, *, warn_only: bool) -> Iterator[None]:
    """Switch PyTorch's deterministic algorithms on (when ``enabled``); restore the setting after."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
