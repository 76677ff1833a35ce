"""The paper's fine-tuning recipe (``paper-*`` presets): each piece against a hand computation,
and a two-step run with all of it on phantoms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnprobe.data.augment import RandTumorIntensityd, paper_augmentation
from attnprobe.data.phantoms import write_phantom_dataset
from attnprobe.data.preprocess import PreprocessConfig, pad_transforms, prepare_array
from attnprobe.errors import ConfigError
from attnprobe.train.presets import PAPER_RECIPE, resolve_train_config
from attnprobe.train.trainer import make_loss, paper_lr_factor, train
from tests.helpers import read_csv_rows


def test_epoch_schedule_warms_up_from_zero_then_cosine():
    # LinearWarmupCosineAnnealingLR(warmup_epochs=50, max_epochs=500, warmup_start_lr=0, eta_min=0),
    # closed form: e < 50: e/49; else 0.5 (1 + cos(pi (e - 50) / 450))
    f = [paper_lr_factor(e, epochs=500, warmup_epochs=50) for e in range(500)]
    assert f[0] == 0.0 and f[1] == pytest.approx(1 / 49) and f[49] == pytest.approx(1.0)
    assert f[50] == pytest.approx(1.0) and f[275] == pytest.approx(0.5)
    assert f[499] == pytest.approx(0.5 * (1 + math.cos(math.pi * 449 / 450)))
    assert all(a <= b for a, b in zip(f[:50], f[1:50])) and all(a >= b for a, b in zip(f[50:], f[51:]))


def test_paper_loss_squares_predictions_with_its_smoothing():
    loss = make_loss("dicece-paper")
    assert loss.dice.squared_pred and loss.dice.smooth_nr == 0.0 and loss.dice.smooth_dr == 1e-6
    logits = torch.tensor([[[[[2.0, -1.0]]], [[[0.0, 1.0]]]]])  # (B=1, C=2, 1, 1, 2)
    target = torch.tensor([[[[[0.0, 1.0]]]]])
    p = logits.softmax(1)
    g = torch.stack([1 - target[:, 0], target[:, 0]], 1)
    # Dice per (sample, class) with squared denominators, mean over classes; + mean CE
    dice = 1 - (2 * (p * g).sum((2, 3, 4))) / ((p**2).sum((2, 3, 4)) + (g**2).sum((2, 3, 4)) + 1e-6)
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
    assert float(loss(logits, target)) == pytest.approx(float(dice.mean() + ce), rel=1e-6)
    assert float(make_loss("dicece")(logits, target)) != pytest.approx(float(loss(logits, target)), rel=1e-3)


def test_inplane_symmetric_padding():
    data = {"image": torch.ones(1, 10, 10, 10)}
    for pad in pad_transforms(("image",), "inplane-symmetric", roi=(16, 16, 16)):
        data = pad(data)
    real = np.argwhere(np.asarray(data["image"][0]) > 0)
    assert real.min(0).tolist() == [3, 3, 0] and real.max(0).tolist() == [12, 12, 9]
    case = prepare_array(np.ones((10, 10, 10), np.float32), case_id="c",
                         config=PreprocessConfig(roi=(32, 32, 32), spacing=None, crop_foreground=False,
                                                 pad_mode="inplane-symmetric"))
    where = np.argwhere(case.mask[0].numpy())
    assert where.min(0).tolist() == [11, 11, 0] and where.max(0).tolist() == [20, 20, 9]


def test_paper_presets_take_the_recipe_and_explicit_options_win():
    cfg = resolve_train_config("paper-act", init="ct", epochs=500)
    assert cfg.tumor_aware and cfg.roi == (96, 96, 64) and cfg.init == "ct"
    for key, value in PAPER_RECIPE.items():
        assert getattr(cfg, key) == value, key
    assert resolve_train_config("paper-base", init="ct", batch_size=4).batch_size == 4
    # another intensity mode drops the recipe's 0-800 window with it
    pct = resolve_train_config("paper-act", init="ct", intensity="percentile")
    assert pct.intensity == "percentile" and pct.a_min is None and pct.a_max is None
    assert resolve_train_config("act", init="ct").loss == "dicece"  # attnprobe's own recipe
    with pytest.raises(ConfigError, match="unknown loss"):
        resolve_train_config("act", init="ct", loss="focal")


def test_paper_augmentation_puts_tumor_aware_before_intensity():
    tumor = RandTumorIntensityd("image", label_key="label", prob=0.3)
    names = [type(t).__name__ for t in paper_augmentation(tumor=tumor).transforms]
    assert names == ["RandAffined", "RandFlipd", "RandFlipd", "RandFlipd", "RandRotate90d", "RandTumorIntensityd",
                     "RandGaussianNoised", "RandGaussianSmoothd", "RandScaleIntensityd", "RandShiftIntensityd",
                     "RandAdjustContrastd"]
    probs = [getattr(t, "prob", None) for t in paper_augmentation(tumor=tumor).transforms]
    assert probs == [0.3, 0.2, 0.2, 0.2, 0.2, 0.3, 0.15, 0.15, 0.3, 0.1, 0.15]
    x = {"image": torch.rand(1, 16, 16, 8), "label": (torch.rand(1, 16, 16, 8) > 0.7).float()}
    a, b = paper_augmentation(seed=5)(dict(x)), paper_augmentation(seed=5)(dict(x))
    assert torch.equal(torch.as_tensor(a["image"]), torch.as_tensor(b["image"]))  # seeded
    assert set(np.unique(np.asarray(a["label"]))) <= {0.0, 1.0}  # labels stay labels


def test_a_paper_run_steps_lr_per_epoch(tmp_path):
    data = write_phantom_dataset(tmp_path / "ph", n=4, seed=0, shape=(48, 48, 24), modalities=("mri",))["mri"]
    cfg = resolve_train_config("paper-act", model_preset="tiny", epochs=2, spacing=2.0, num_samples=1, seed=3,
                               batch_size=1, warmup_fraction=0.5, a_max=1.0, init=None)
    result = train(cfg, data, tmp_path / "run", allow_random_init=True, val_split=None)
    rows = [r for r in read_csv_rows(result.metrics) if r["loss"]]
    lrs = [float(r["lr"]) for r in rows]
    # 2 epochs x 2 steps (2 training volumes, batch 1); warm-up of 1 epoch from lr 0: epoch 1 all 0
    assert len(rows) == 4 and lrs[:2] == [0.0, 0.0] and lrs[2:] == [pytest.approx(cfg.lr)] * 2
