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
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
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
from attnprobe.models.checkpoints import LoadReport, load_checkpoint, read_metadata, save_checkpoint
from attnprobe.models.registry import adapter_for, build_model, model_config
from attnprobe.train.inference import InferenceConfig, predict_case
from attnprobe.train.presets import TrainConfig, get_preset
from attnprobe.workspace import list_data

__all__ = [
    "RUN_FILES",
    "StepInfo",
    "EpochInfo",
    "TrainResult",
    "train",
    "initial_model",
    "lr_factor",
    "dice_score",
    "read_train_metadata",
    "rank_batches",
]

#: files a run writes (the ones ``overwrite=True`` removes)
RUN_FILES = ("config.json", "metrics.csv", "last.pt", "best.pt")
METRIC_COLUMNS = ("epoch", "step", "loss", "val_dice", "lr", "time")


@dataclass(frozen=True)
class StepInfo:
    """Reported after every optimisation step."""

    epoch: int
    step: int
    total_steps: int
    batch: int
    n_batches: int
    loss: float
    lr: float
    elapsed: float


@dataclass(frozen=True)
class EpochInfo:
    """Reported at the end of every epoch."""

    epoch: int
    step: int
    mean_loss: float
    val_dice: float | None
    best_dice: float | None
    elapsed: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`.

    Attributes
    ----------
    out_dir, last, best, metrics
        Run folder and files (``best`` is None when no validation ran).
    finished
        False when the run stopped early (``stop_after_steps``) and can be resumed.
    epochs_done, steps_done
        Completed epochs and optimisation steps (over all sessions).
    best_dice, best_epoch
        Best validation Dice and its (1-based) epoch, None without validation.
    load_report
        Report of the initial checkpoint load (None for random init or a resumed run).
    config
        The run's configuration.
    """

    out_dir: Path
    last: Path
    best: Path | None
    metrics: Path
    finished: bool
    epochs_done: int
    steps_done: int
    best_dice: float | None
    best_epoch: int | None
    load_report: LoadReport | None
    config: TrainConfig


# --- small pure pieces -------------------------------------------------------------------------


def lr_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimisation step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    cosine decay from 1 to 0 over the remaining steps.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def paper_lr_factor(epoch: int, *, epochs: int, warmup_epochs: int) -> float:
    """Learning-rate multiplier of the paper's schedule in epoch ``epoch`` (0-based).

    Linear warm-up from 0 over ``warmup_epochs`` epochs (``epoch / (warmup_epochs - 1)``, so
    epoch 0 has lr 0), then cosine decay to 0 at ``epochs``; stepped once per epoch (the
    ``LinearWarmupCosineAnnealingLR`` of the Swin UNETR fine-tuning code with
    ``warmup_start_lr=0, eta_min=0``).
    """
    if epoch < warmup_epochs:
        return epoch / max(1, warmup_epochs - 1)
    span = max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (epoch - warmup_epochs) / span)))


def _step_factor(step: int, *, total_steps: int, warmup_steps: int) -> float:
    return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps)


def _epoch_paper_factor(step: int, *, n_batches: int, epochs: int, warmup_epochs: int) -> float:
    # LambdaLR steps once per optimisation step; the factor only changes between epochs
    return paper_lr_factor(step // n_batches, epochs=epochs, warmup_epochs=warmup_epochs)


def make_loss(name: str) -> nn.Module:
    """The segmentation loss of a :class:`TrainConfig` (``docs/conventions.md``).

    ``"dicece"``: MONAI ``DiceCELoss`` with its defaults (softmax, one-hot target);
    ``"dicece-paper"``: the paper's ``DiceCELoss(squared_pred=True, smooth_nr=0, smooth_dr=1e-6)``.
    """
    from monai.losses import DiceCELoss

    if name == "dicece-paper":
        return DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def dice_score(pred: torch.Tensor, ref: torch.Tensor) -> float:
    """Foreground Dice of two label maps (nonzero = foreground); 1 when both are empty."""
    p, r = pred != 0, ref != 0
    denom = int(p.sum()) + int(r.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & r).sum()) / denom


def _derived_seeds(*parts: int, n: int = 1) -> list[int]:
    return [int(s) for s in np.random.SeedSequence([int(p) for p in parts]).generate_state(n, dtype=np.uint32)]


def _epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    gen = torch.Generator().manual_seed(_derived_seeds(seed, epoch, 1_000_003)[0])
    return torch.randperm(n, generator=gen).tolist()


def rank_batches(order: Sequence[int], batch_size: int, *, rank: int = 0,
                 world_size: int = 1) -> list[tuple[list[int], int, int]]:
    """One rank's part of every step of an epoch: ``(volumes, n_mine, n_batch)`` per step.

    Step ``t`` covers ``order[t * batch_size:(t + 1) * batch_size]`` (the last step may be
    shorter), as in one process; rank ``r`` takes its positions ``r, r + world_size, ...``,
    so the ranks' shares are disjoint and together the whole batch. ``n_mine`` counts the
    volumes this rank contributes; a rank with none gets the batch's first volume to run
    with weight 0 (``n_mine == 0``), because DDP needs every rank in every backward.
    """
    steps = []
    for start in range(0, len(order), batch_size):
        batch = list(order[start:start + batch_size])
        mine = batch[rank::world_size]
        steps.append((mine or batch[:1], len(mine), len(batch)))
    return steps


# --- data ---------------------------------------------------------------------------------------


class _CropDataset(torch.utils.data.Dataset):
    """Volumes in memory; item ``i`` is the list of augmented crops of volume ``i`` this epoch."""

    def __init__(self, volumes: Sequence[dict[str, torch.Tensor]], config: TrainConfig) -> None:
        from monai.transforms import Compose, RandCropByPosNegLabeld

        from attnprobe.data.augment import RandTumorIntensityd, paper_augmentation, standard_augmentation

        self.volumes = list(volumes)
        self.seed = config.seed
        self.epoch = 0
        self.cropper = RandCropByPosNegLabeld(keys=("image", "label"), label_key="label", spatial_size=config.roi,
                                              pos=1.0, neg=1.0, num_samples=config.num_samples, image_key="image",
                                              image_threshold=0.0)
        # In-plane 90-degree turns swap x and y: only safe when the crop is square in-plane.
        square = config.roi[0] == config.roi[1]
        tumor = (RandTumorIntensityd("image", label_key="label", prob=config.tumor_prob,
                                     keep_first=config.keep_first_crop) if config.tumor_aware else None)
        if config.augmentation == "paper":  # tumor-aware before the intensity augmentations
            self.augment = paper_augmentation(("image", "label"), label_keys=("label",), seed=None,
                                              rot90_prob=0.2 if square else 0.0, tumor=tumor)
        else:
            ops: list[Any] = [standard_augmentation(("image", "label"), label_keys=("label",), seed=None,
                                                    rot90_prob=0.1 if square else 0.0)]
            if tumor is not None:
                ops.append(tumor)
            self.augment = Compose(ops)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, index: int) -> list[dict[str, torch.Tensor]]:
        crop_seed, aug_seed = _derived_seeds(self.seed, self.epoch, index, n=2)
        self.cropper.set_random_state(seed=crop_seed)
        self.augment.set_random_state(seed=aug_seed)
        crops = self.cropper(self.volumes[index])  # type: ignore[arg-type]  # MONAI types keys as Hashable
        out = []
        for k, crop in enumerate(crops):
            crop = self.augment({**crop, "crop_index": k})
            out.append({key: _plain_tensor(crop[key]) for key in ("image", "label")})
        return out


def _plain_tensor(t: Any) -> torch.Tensor:
    t = t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)
    return t.to(torch.float32).contiguous()


def _collate(items: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    crops = [c for item in items for c in item]
    return {key: torch.stack([c[key] for c in crops]) for key in ("image", "label")}


def _pad_to_roi(case: PreparedCase, config: TrainConfig) -> dict[str, torch.Tensor]:
    from attnprobe.data.preprocess import pad_transforms

    if case.label is None:
        raise DataError(f"training case {case.case_id!r} has no label", expected="a label for every training case",
                        got="label missing", fix="add 'label' to its datalist entry")
    top = int(case.label.max())
    if top >= config.n_classes:
        raise DataError(f"label of case {case.case_id!r} has class {top}",
                        expected=f"classes 0..{config.n_classes - 1} (n_classes={config.n_classes})",
                        got=f"max label {top}", fix="relabel, or build the model with more output channels")
    data = {"image": case.image, "label": case.label.to(torch.float32)}
    for pad in pad_transforms(("image", "label"), config.pad_mode, roi=config.roi):
        data = pad(data)
    return {"image": _plain_tensor(data["image"]), "label": _plain_tensor(data["label"])}


# --- model --------------------------------------------------------------------------------------


def initial_model(config: TrainConfig, *, allow_random_init: bool = False,
                  log: Callable[[str], None] | None = None) -> tuple[nn.Module, LoadReport | None]:
    """The model a run starts from: the ``init`` checkpoint, or random weights.

    Seeds with ``set_determinism(config.seed)`` first, so random weights (all of them, or the
    layers the checkpoint lacks) are reproducible. A checkpoint whose output layer has another
    number of classes keeps everything but that layer (reported through ``log``). The model's
    config ROI is set to the training crop, so later tools use the ROI it was trained with.

    Raises
    ------
    ConfigError
        A pretrained preset without ``init`` (unless ``allow_random_init``).
    CheckpointError
        An ``init`` that does not load (see :func:`attnprobe.models.load_checkpoint`).
    """
    from monai.utils import set_determinism

    log = log or (lambda _msg: None)
    spec = get_preset(config.preset)
    set_determinism(seed=config.seed)
    report = None
    if config.init is None:
        if spec.pretrained and not allow_random_init:
            raise ConfigError(f"preset {config.preset!r} starts from pretrained weights but no init was given",
                              expected="init=NAME|PATH (a model in attnprobe.toml or a checkpoint)",
                              got="init=None", fix="pass --init ct (or --init none to train from random weights, "
                                                   "or use --preset scratch)")
        model = build_model(config.arch, preset=config.model_preset, out_channels=config.n_classes)
    else:
        from attnprobe.workspace import resolve_model

        ref = resolve_model(config.init)
        model, report = load_checkpoint(ref.checkpoint, config.arch, preset=config.model_preset,
                                        compat=config.init_compat)
        log(f"init {ref.name}: {report.summary()}")
        if report.notice:
            log(f"note: {report.notice}")
        if int(model_config(model).get("out_channels", config.n_classes)) != config.n_classes:
            model = _replace_head(model, config, log)
    # nn.Module.__setattr__ is typed for tensors and modules only; this is a plain attribute
    model.attnprobe_config = {**model_config(model), "roi": tuple(config.roi)}  # type: ignore[assignment]
    return model.train(), report


def _replace_head(model: nn.Module, config: TrainConfig, log: Callable[[str], None]) -> nn.Module:
    fresh = build_model(adapter_for(model).name, preset=config.model_preset,
                        **{**model_config(model), "out_channels": config.n_classes})
    old, new = model.state_dict(), fresh.state_dict()
    keep = {k: v for k, v in old.items() if k in new and new[k].shape == v.shape}
    dropped = sorted(set(old) - set(keep))
    fresh.load_state_dict(keep, strict=False)
    log(f"output layer re-initialised for {config.n_classes} classes (dropped {dropped})")
    return fresh


# --- checkpoints and run folder -------------------------------------------------------------------


def read_train_metadata(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``train`` metadata of a checkpoint written by :func:`train`, or None for other checkpoints."""
    train_meta = read_metadata(path).get("train")
    return dict(train_meta) if isinstance(train_meta, Mapping) else None


def _rng_state() -> dict[str, Any]:
    np_state = cast(tuple, np.random.get_state())  # the legacy tuple (the default)
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": py_state[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_cached_gaussian"])))
    random.setstate((3, tuple(int(v) for v in state["python"].tolist()), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def _optimizer_state(saved: Mapping[str, Any]) -> dict[str, Any]:
    # Checkpoint metadata turns mapping keys into strings; the optimizer matches params by int ids.
    return {"state": {int(k): v for k, v in saved["state"].items()}, "param_groups": saved["param_groups"]}


def _check_run_dir(out_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse a folder the run may not use (nothing is deleted here)."""
    if resume:
        if not (out_dir / "last.pt").is_file():
            raise ConfigError(f"nothing to resume in {out_dir}", expected="a run folder with last.pt",
                              got="no last.pt", fix="drop --resume to start a new run")
        return
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("run output is not a folder", expected="a folder or a new path", got=str(out_dir))
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run folder {out_dir} already exists and is not empty",
                          expected="a new or empty folder", got=", ".join(sorted(p.name for p in out_dir.iterdir())[:5]),
                          fix="pass --resume to continue it, --overwrite to replace it, or another --out")


def _start_run_dir(out_dir: Path) -> None:
    """Create the folder and remove an earlier run's files (only those; anything else stays)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _check_same_run(stored: Mapping[str, Any], config: TrainConfig, data: Mapping[str, Any]) -> None:
    old = TrainConfig.from_dict(stored).as_dict()
    new = config.as_dict()
    diffs = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    diffs += [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in data.items() if stored.get(k) != v]
    if diffs:
        raise ConfigError("--resume with settings that differ from the run's", expected="the same command as before",
                          got="; ".join(diffs), fix="repeat the original options, or start a new run")


def _truncate_metrics(path: Path, rows: int) -> None:
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    header = ",".join(METRIC_COLUMNS) + "\n"
    path.write_text(header + "".join(lines[1:1 + rows]))


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


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


# --- the loop ----------------------------------------------------------------------------------


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
    dev = _device(device)
    with _deterministic_algorithms(deterministic, warn_only=dev.type == "cuda"):
        main = dist.is_main()
        log = log if log is not None and main else (lambda _msg: None)
        out = Path(out_dir)
        if dev.type == "cuda" and dev.index is None and dist.is_distributed():
            dev = torch.device("cuda", dist.local_rank())
        for name, limit in (("checkpoint_every", checkpoint_every), ("stop_after_steps", stop_after_steps)):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ConfigError(f"bad {name}", expected="a positive integer or None", got=repr(limit))
        _check_run_dir(out, overwrite=overwrite, resume=resume)
        world = dist.world_size()
        if config.batch_size < world:
            raise ConfigError(
                "the batch is smaller than the number of ranks",
                expected=f"batch_size >= {world} (batch_size is the global batch, split over ranks)",
                got=f"batch_size={config.batch_size}",
                fix=f"pass --batch-size {world} or more, or start fewer processes")
        data_info = {"data": str(_abs(data)), "split": split,
                     "val_data": str(_abs(val_data if val_data is not None else data)),
                     "val_split": val_split}

        train_refs = list_data(data, split=split)  # type: ignore[arg-type]
        val_refs: list[CaseRef] = []
        if val_split is not None:
            try:
                val_source = val_data if val_data is not None else data
                val_refs = list_data(val_source, split=val_split)  # type: ignore[arg-type]
            except DataError:
                if val_data is not None or val_split != "validation":
                    raise
                log("no 'validation' split: training without validation (no best.pt)")

        stored_state = None
        report = None
        if resume:
            stored = read_train_metadata(out / "last.pt")
            if not stored or "state" not in stored:
                raise CheckpointError(f"{out / 'last.pt'} holds no resumable state",
                                      expected="a last.pt written by train", got="no train state",
                                      fix="start a new run with --overwrite")
            _check_same_run(stored, config, data_info)
            stored_state = stored["state"]
            model, _ = load_checkpoint(out / "last.pt", config.arch, preset=config.model_preset)
            model.train()
            log(f"resuming {out} at epoch {stored_state['epoch'] + 1}, step {stored_state['global_step']}")
        else:
            model, report = initial_model(config, allow_random_init=allow_random_init, log=log)
        # Every rank has checked the folder and read last.pt before rank 0 changes anything in it.
        dist.barrier()
        if not resume and main:
            # Only now, with data and weights known to be usable, may an earlier run's files go.
            _start_run_dir(out)
        model.to(dev)

        pre = config.preprocess_config("full")
        # Any rank may draw any training volume in a later epoch; validation cases are split.
        volumes = [_pad_to_roi(prepare_case(ref, pre), config) for ref in train_refs]
        val_cases = {i: prepare_case(val_refs[i], pre) for i in dist.shard(val_refs)}
        for case in val_cases.values():
            if case.label is None:
                raise DataError(f"validation case {case.case_id!r} has no label",
                                expected="labels for validation", got="label missing")

        dataset = _CropDataset(volumes, config)
        net = dist.data_parallel(model, device=dev)
        n_batches = math.ceil(len(volumes) / config.batch_size)
        total_steps = n_batches * config.epochs
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        if config.schedule == "epoch-paper":
            warmup = round(config.warmup_fraction * config.epochs)
            factor = functools.partial(_epoch_paper_factor, n_batches=n_batches, epochs=config.epochs,
                                       warmup_epochs=warmup)
        else:
            warmup = max(1, round(config.warmup_fraction * total_steps)) if config.warmup_fraction > 0 else 0
            factor = functools.partial(_step_factor, total_steps=total_steps, warmup_steps=warmup)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        use_amp = config.amp and dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda") if use_amp else None
        loss_fn = make_loss(config.loss)
        infer = InferenceConfig(roi=config.roi, overlap=config.overlap, sw_batch_size=config.sw_batch_size,
                                amp=config.amp)
        workers = num_workers if num_workers is not None else (2 if dev.type == "cuda" else 0)

        state: dict[str, Any] = {"epoch": 0, "batch": 0, "global_step": 0, "best_dice": None,
                                 "best_epoch": None, "elapsed": 0.0, "metrics_rows": 0,
                                 "epoch_loss_sum": 0.0}
        metrics = out / "metrics.csv"
        if stored_state is not None:
            optimizer.load_state_dict(_optimizer_state(stored_state["optimizer"]))
            scheduler.load_state_dict(dict(stored_state["scheduler"]))
            if scaler is not None and stored_state.get("scaler"):
                scaler.load_state_dict(dict(stored_state["scaler"]))
            _set_rng_state(stored_state["rng"])
            # Only the keys above: a last.pt of an older version may hold more (epoch_loss_n).
            state.update({k: stored_state[k] for k in state})
            if main:
                _truncate_metrics(metrics, int(state["metrics_rows"]))
        elif main:
            (out / "config.json").write_text(json.dumps({**config.as_dict(), **data_info}, indent=1))
            _truncate_metrics(metrics, 0)

        def meta(*, with_state: bool, val_dice: float | None = None) -> dict[str, Any]:
            info: dict[str, Any] = {**config.as_dict(), **data_info, "epoch": state["epoch"],
                                    "step": state["global_step"], "val_dice": val_dice,
                                    "best_dice": state["best_dice"], "best_epoch": state["best_epoch"],
                                    "n_train": len(volumes), "n_val": len(val_refs), "world_size": world,
                                    "versions": versions()}
            if with_state:
                info["state"] = {**state, "optimizer": optimizer.state_dict(),
                                 "scheduler": _scheduler_state(scheduler),
                                 "scaler": scaler.state_dict() if scaler is not None else None,
                                 "rng": _rng_state()}
            return {"train": info}

        def save_last() -> None:
            if main:
                save_checkpoint(model, out / "last.pt", extra=meta(with_state=True))

        def finish(*, finished: bool) -> TrainResult:
            dist.barrier()  # on every rank, returning means rank 0's files are written
            return _result(out, config, state, report, finished=finished)

        t0 = time.perf_counter() - float(state["elapsed"])
        # Only rank 0 writes rows; the others count them so that their state matches its state.
        with metrics.open("a", newline="") if main else open(os.devnull, "w") as fh:
            writer = csv.writer(fh)

            def row(epoch: int, loss: float, val_dice: float | None, lr: float) -> None:
                state["elapsed"] = time.perf_counter() - t0
                writer.writerow([epoch, state["global_step"], _fmt(loss), _fmt(val_dice), _fmt(lr),
                                 f"{state['elapsed']:.3f}"])
                fh.flush()
                state["metrics_rows"] += 1

            while state["epoch"] < config.epochs:
                epoch = int(state["epoch"])
                dataset.set_epoch(epoch)
                order = _epoch_order(config.seed, epoch, len(volumes))
                steps = rank_batches(order, config.batch_size, rank=dist.rank(),
                                     world_size=world)[int(state["batch"]):]
                loader = torch.utils.data.DataLoader(dataset, batch_sampler=[mine for mine, _, _ in steps],
                                                     collate_fn=_collate, num_workers=workers)
                for batch, (_, n_mine, n_batch) in zip(loader, steps):
                    net.train()
                    x = batch["image"].to(dev)
                    y = batch["label"].to(dev)
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device_type=dev.type, enabled=use_amp):
                        loss = loss_fn(net(x), y)
                    # DDP averages gradients over ranks: weigh this rank's mean by its share of the batch.
                    weight = n_mine * world / n_batch
                    scaled = loss if weight == 1.0 else loss * weight
                    if scaler is not None:
                        scaler.scale(scaled).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        scaled.backward()
                        optimizer.step()
                    scheduler.step()
                    value = _batch_loss(loss, n_mine, n_batch)
                    state["global_step"] += 1
                    state["batch"] += 1
                    state["epoch_loss_sum"] += value
                    row(epoch + 1, value, None, lr)
                    stop = stop_after_steps is not None and state["global_step"] >= stop_after_steps
                    due = checkpoint_every is not None and state["global_step"] % checkpoint_every == 0
                    if stop or due:
                        save_last()
                    if on_step is not None:
                        on_step(StepInfo(epoch + 1, state["global_step"], total_steps, int(state["batch"]),
                                         n_batches, value, lr, state["elapsed"]))
                    if stop:
                        return finish(finished=False)

                # state["batch"] counts this epoch's steps, i.e. the losses summed so far.
                mean_loss = state["epoch_loss_sum"] / max(1, state["batch"])
                val_dice = None
                if val_refs and ((epoch + 1) % config.val_every == 0 or epoch + 1 == config.epochs):
                    mine = []
                    for i, case in val_cases.items():
                        pred = predict_case(model, case, config=infer, device=dev).label
                        mine.append((i, dice_score(pred, cast(torch.Tensor, case.label)[0])))  # checked above
                    # Averaged in case order, as in one process.
                    dices = [d for _, d in sorted(p for part in dist.gather_objects(mine) for p in part)]
                    val_dice = float(np.mean(dices))
                    row(epoch + 1, mean_loss, val_dice, optimizer.param_groups[0]["lr"])
                state.update(epoch=epoch + 1, batch=0, epoch_loss_sum=0.0)
                if val_dice is not None and (state["best_dice"] is None or val_dice > state["best_dice"]):
                    state.update(best_dice=val_dice, best_epoch=epoch + 1)
                    if main:
                        save_checkpoint(model, out / "best.pt",
                                        extra=meta(with_state=False, val_dice=val_dice))
                save_last()
                if on_epoch is not None:
                    on_epoch(EpochInfo(epoch + 1, state["global_step"], mean_loss, val_dice,
                                       state["best_dice"], state["elapsed"]))
        return finish(finished=True)


def _batch_loss(loss: torch.Tensor, n_mine: int, n_batch: int) -> float:
    """The whole batch's mean loss: this rank's mean in one process, else the volume-weighted mean."""
    if not dist.is_distributed():
        return float(loss.detach())
    total = torch.tensor([float(loss.detach()) * n_mine], dtype=torch.float64, device=loss.device)
    return float(dist.all_reduce_sum_(total)) / n_batch


def _result(out: Path, config: TrainConfig, state: Mapping[str, Any], report: LoadReport | None, *,
            finished: bool) -> TrainResult:
    best = out / "best.pt"
    return TrainResult(out_dir=out, last=out / "last.pt", best=best if best.is_file() else None,
                       metrics=out / "metrics.csv", finished=finished, epochs_done=int(state["epoch"]),
                       steps_done=int(state["global_step"]), best_dice=state["best_dice"],
                       best_epoch=state["best_epoch"], load_report=report, config=config)


def _scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    # The lambdas are rebuilt from the config (plain functions are stored as None by torch).
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"} | {"lr_lambdas": [None]}



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
