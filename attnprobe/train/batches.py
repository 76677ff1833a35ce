"""What the trainer feeds its steps: volume order, each rank's share, and seeded crops.

Randomness never flows from one step to the next through a hidden generator: the volume order
of epoch ``e`` is a permutation drawn from ``(seed, e)``, and the crops and augmentations of
volume ``i`` in epoch ``e`` come from transforms reseeded from ``(seed, e, i)``. So resuming at
a step boundary replays exactly the same batches, with any number of DataLoader workers or
ranks (see :mod:`attnprobe.train.trainer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from attnprobe.data.preprocess import PreparedCase
from attnprobe.errors import DataError
from attnprobe.train.presets import TrainConfig

__all__ = ["CropDataset", "collate_crops", "derived_seeds", "epoch_order", "pad_to_roi", "rank_batches"]


def derived_seeds(*parts: int, n: int = 1) -> list[int]:
    """``n`` independent 32-bit seeds drawn from the integers ``parts``."""
    return [int(s) for s in np.random.SeedSequence([int(p) for p in parts]).generate_state(n, dtype=np.uint32)]


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order in which epoch ``epoch`` (0-based) visits ``n`` volumes: a function of ``(seed, epoch)``."""
    gen = torch.Generator().manual_seed(derived_seeds(seed, epoch, 1_000_003)[0])
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


class CropDataset(torch.utils.data.Dataset):
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
        crop_seed, aug_seed = derived_seeds(self.seed, self.epoch, index, n=2)
        self.cropper.set_random_state(seed=crop_seed)
        self.augment.set_random_state(seed=aug_seed)
        crops = self.cropper(self.volumes[index])  # type: ignore[arg-type]  # MONAI types keys as Hashable
        out = []
        for k, crop in enumerate(crops):
            crop = self.augment({**crop, "crop_index": k})
            out.append({key: _plain_tensor(crop[key]) for key in ("image", "label")})
        return out


def collate_crops(items: list[list[dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Stack the crops of all volumes of a batch into ``image`` and ``label`` tensors."""
    crops = [c for item in items for c in item]
    return {key: torch.stack([c[key] for c in crops]) for key in ("image", "label")}


def pad_to_roi(case: PreparedCase, config: TrainConfig) -> dict[str, torch.Tensor]:
    """A training volume padded to at least the crop on every axis (its label checked)."""
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


def _plain_tensor(t: Any) -> torch.Tensor:
    t = t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)
    return t.to(torch.float32).contiguous()
