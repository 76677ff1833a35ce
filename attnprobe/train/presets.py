"""Trainer presets (docs/conventions.md) and the resolved training configuration.

Presets
-------
========  ==========================  =====================  ===============  ===========
preset    crop (ROI)                  augmentation           initial weights  epochs
========  ==========================  =====================  ===============  ===========
base      pretrained (cubic) ROI      standard               ``--init``       E
ta        pretrained (cubic) ROI      standard + tumor-aware ``--init``       E
act       anisotropic ROI             standard + tumor-aware ``--init``       E
scratch   pretrained (cubic) ROI      standard               none (random)    2 E
========  ==========================  =====================  ===============  ===========

ROIs, per architecture and model preset (``roi`` of the architecture preset is the model ROI):

- *pretrained ROI*: the cube of the model ROI's largest side — 96³ for ``swin_unetr``
  (and ``swin_unetr_v2``), 128³ for ``smit``, 64³ for the ``tiny`` presets (whose model ROI is
  64x64x32). A ROI declared for the ``--init`` model in ``attnprobe.toml`` wins.
- *anisotropic ROI*: the paper's crops where they exist — ``swin_unetr`` 96x96x64 and ``smit``
  128x128x64 (side 96 and 128) — and otherwise the pretrained ROI with half its depth,
  rounded up to a multiple of 32 (64x64x32 for the ``tiny`` presets).

An explicit ``roi=`` always wins over both. ``epochs`` is the base number E; ``scratch`` trains
twice as long because it starts from random weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, Literal, get_args

from attnprobe.data.preprocess import IntensityMode, PadMode, PreprocessConfig, validate_roi
from attnprobe.errors import ConfigError, check_option
from attnprobe.models.registry import get_adapter, resolve_config

__all__ = [
    "PresetName",
    "TrainPreset",
    "TRAIN_PRESETS",
    "ANISOTROPIC_CROPS",
    "TrainConfig",
    "PAPER_RECIPE",
    "get_preset",
    "pretrained_roi",
    "anisotropic_roi",
    "resolve_train_config",
]

PresetName = Literal["base", "ta", "act", "scratch", "paper-base", "paper-ta", "paper-act", "paper-scratch"]
Recipe = Literal["attnprobe", "paper"]
LossName = Literal["dicece", "dicece-paper"]
Schedule = Literal["step", "epoch-paper"]
Augmentation = Literal["standard", "paper"]
Roi3 = tuple[int, int, int]


@dataclass(frozen=True)
class TrainPreset:
    """What one trainer preset changes.

    Attributes
    ----------
    name
        ``"base"``, ``"ta"``, ``"act"`` or ``"scratch"``.
    description
        One line for help texts.
    anisotropic
        Train on the anisotropic crop instead of the pretrained cubic ROI.
    tumor_aware
        Add :class:`~attnprobe.data.augment.RandTumorIntensityd` after the standard augmentation.
    pretrained
        Start from pretrained weights (``init``); ``False`` means random initialisation.
    epoch_factor
        Multiplier of the base number of epochs.
    recipe
        ``"paper"``: the paper's fine-tuning recipe (:data:`PAPER_RECIPE`) as defaults.
    """

    name: PresetName
    description: str
    anisotropic: bool
    tumor_aware: bool
    pretrained: bool
    epoch_factor: int
    recipe: Recipe = "attnprobe"


TRAIN_PRESETS: Mapping[str, TrainPreset] = MappingProxyType({
    "base": TrainPreset("base", "pretrained ROI, standard augmentation", False, False, True, 1),
    "ta": TrainPreset("ta", "pretrained ROI, standard + tumor-aware intensity augmentation", False, True, True, 1),
    "act": TrainPreset("act", "anisotropic crop, standard + tumor-aware intensity augmentation", True, True,
                       True, 1),
    "scratch": TrainPreset("scratch", "random initialisation, pretrained ROI, twice the epochs", False, False,
                           False, 2),
    "paper-base": TrainPreset("paper-base", "base with the paper's recipe", False, False, True, 1, "paper"),
    "paper-ta": TrainPreset("paper-ta", "ta with the paper's recipe", False, True, True, 1, "paper"),
    "paper-act": TrainPreset("paper-act", "act with the paper's recipe", True, True, True, 1, "paper"),
    "paper-scratch": TrainPreset("paper-scratch", "scratch with the paper's recipe", False, False, False, 2,
                                 "paper"),
})

#: The paper's fine-tuning recipe: the defaults of the ``paper-*`` presets (``docs/conventions.md``).
#: Its 500 epochs with a 50-epoch warm-up are ``--epochs 500`` with this warm-up fraction.
PAPER_RECIPE: Mapping[str, Any] = MappingProxyType({
    "batch_size": 2,
    "loss": "dicece-paper",          # DiceCE(squared_pred=True, smooth_nr=0, smooth_dr=1e-6)
    "schedule": "epoch-paper",       # warm-up from lr 0, stepped per epoch, then cosine
    "warmup_fraction": 0.1,          # 50 of 500 epochs
    "augmentation": "paper",         # RandAffine, flips/rot90, noise/smoothing, scale/shift/contrast
    "intensity": "fixed", "a_min": 0.0, "a_max": 800.0,  # MRI clipped to 0-800, then scaled
    "pad_mode": "inplane-symmetric",  # symmetric in x, y; at the end along z
})

#: Paper crops, keyed by (architecture, side of the pretrained cubic ROI).
ANISOTROPIC_CROPS: Mapping[tuple[str, int], Roi3] = MappingProxyType({
    ("swin_unetr", 96): (96, 96, 64),
    ("smit", 128): (128, 128, 64),
})


def get_preset(name: str) -> TrainPreset:
    """The preset called ``name``; unknown names are a :class:`ConfigError`."""
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown trainer preset {name!r}", expected=f"one of {list(TRAIN_PRESETS)}",
                          got=repr(name)) from None


def pretrained_roi(arch: str, model_preset: str | None = None, *, declared: Roi3 | None = None) -> Roi3:
    """The cubic ROI a backbone was pretrained with.

    Parameters
    ----------
    arch
        Registered architecture.
    model_preset
        Architecture preset (``None``: the architecture's default).
    declared
        A ROI declared for the initial model (``attnprobe.toml``); returned when given.
    """
    if declared is not None:
        return _roi(declared, what="declared roi")
    side = max(int(v) for v in resolve_config(arch, model_preset)["roi"])
    return (side, side, side)


def anisotropic_roi(arch: str, model_preset: str | None = None, *, pretrained: Roi3 | None = None) -> Roi3:
    """The anisotropic crop for an architecture (module docstring has the rule)."""
    cube = pretrained_roi(arch, model_preset, declared=pretrained)
    side = cube[0]
    if (arch, side) in ANISOTROPIC_CROPS and cube == (side, side, side):
        return ANISOTROPIC_CROPS[(arch, side)]
    depth = max(32, math.ceil(cube[2] / 2 / 32) * 32)
    return (cube[0], cube[1], depth)


def _roi(value: Any, *, what: str) -> Roi3:
    roi = validate_roi(tuple(value) if isinstance(value, list) else value, what=what)
    if roi == "full":
        raise ConfigError(f"{what} must be a crop size", expected="three sizes (x, y, z)", got="'full'")
    return tuple(int(v) for v in roi)  # type: ignore[return-value]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"bad {name}", expected="a positive integer", got=repr(value))
    return int(value)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoints).

    Build one with :func:`resolve_train_config`, which applies the preset rules; constructing
    it directly takes the values as they are.

    Parameters
    ----------
    preset
        Trainer preset name.
    arch, model_preset
        Architecture and architecture preset (``None``: the default preset).
    roi
        Training crop and sliding-window size ``(x, y, z)``.
    epochs
        Epochs to train (after the preset's factor); ``base_epochs`` is the number asked for.
    init
        Name (``attnprobe.toml``) or path of the checkpoint to start from; ``None``: random.
    tumor_aware
        Add tumor-aware intensity augmentation.
    batch_size
        Volumes per step; each gives ``num_samples`` crops, so a step sees
        ``batch_size * num_samples`` crops.
    num_samples
        Pos/neg-balanced crops per volume (``RandCropByPosNegLabeld``, pos = neg = 1).
    lr, weight_decay
        AdamW settings.
    warmup_fraction
        Fraction of all steps spent in the linear warm-up (at least one step), then cosine
        decay to 0.
    val_every
        Validate every this many epochs (and after the last one).
    seed
        Seeds model initialisation, data order and every random transform.
    spacing, intensity, a_min, a_max, pad_mode
        Preprocessing (:class:`~attnprobe.data.preprocess.PreprocessConfig`).
    n_classes
        Output channels (background + classes); labels must lie in ``0..n_classes-1``.
    tumor_prob, keep_first_crop
        Tumor-aware augmentation probability per crop, and whether crop 0 of each volume is
        left untouched.
    overlap, sw_batch_size
        Sliding-window validation (Gaussian blending).
    amp
        Mixed precision; used on CUDA only.
    """

    preset: PresetName = "base"
    arch: str = "swin_unetr"
    model_preset: str | None = None
    roi: Roi3 = (96, 96, 96)
    epochs: int = 100
    base_epochs: int = 100
    init: str | None = None
    #: compat mode of ``init`` (None: what the checkpoint records, see attnprobe.models.compat)
    init_compat: str | None = None
    tumor_aware: bool = False
    loss: LossName = "dicece"
    schedule: Schedule = "step"
    augmentation: Augmentation = "standard"
    batch_size: int = 1
    num_samples: int = 4
    lr: float = 3e-4
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.05
    val_every: int = 1
    seed: int = 0
    spacing: float = 1.0
    intensity: IntensityMode = "percentile"
    a_min: float | None = None
    a_max: float | None = None
    pad_mode: PadMode = "end"
    n_classes: int = 2
    tumor_prob: float = 0.3
    keep_first_crop: bool = False
    overlap: float = 0.5
    sw_batch_size: int = 4
    amp: bool = True

    def __post_init__(self) -> None:
        if not get_preset(self.preset).pretrained and self.init is not None:
            raise ConfigError(f"preset {self.preset!r} trains from random weights", expected="init=None",
                              got=f"init={self.init!r}", fix="drop init, or use a pretrained preset (base, ta, act)")
        get_adapter(self.arch)
        if self.model_preset is not None:
            resolve_config(self.arch, self.model_preset)
        object.__setattr__(self, "roi", _roi(self.roi, what="roi"))
        for name in ("epochs", "base_epochs", "batch_size", "num_samples", "val_every", "sw_batch_size"):
            _positive_int(name, getattr(self, name))
        if self.n_classes < 2:
            raise ConfigError("bad n_classes", expected="2 or more (background + classes)", got=repr(self.n_classes))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("bad seed", expected="a non-negative integer", got=repr(self.seed))
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise ConfigError("bad optimiser settings", expected="lr > 0 and weight_decay >= 0",
                              got=f"lr={self.lr}, weight_decay={self.weight_decay}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ConfigError("bad warmup_fraction", expected="0 <= fraction < 1", got=repr(self.warmup_fraction))
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("bad overlap", expected="0 <= overlap < 1", got=repr(self.overlap))
        if not 0.0 <= self.tumor_prob <= 1.0:
            raise ConfigError("bad tumor_prob", expected="a probability in [0, 1]", got=repr(self.tumor_prob))
        for name, options in (("loss", get_args(LossName)), ("schedule", get_args(Schedule)),
                              ("augmentation", get_args(Augmentation)), ("intensity", get_args(IntensityMode))):
            check_option(name, getattr(self, name), options)
        # Fails early (here, not after minutes of loading) on a bad window or spacing.
        self.preprocess_config()

    def preprocess_config(self, roi: Roi3 | Literal["full"] = "full") -> PreprocessConfig:
        """Preprocessing of this run; ``roi="full"`` keeps whole volumes (training, sliding window)."""
        return PreprocessConfig(roi=roi, pad_mode=self.pad_mode, spacing=self.spacing, intensity=self.intensity,
                                a_min=self.a_min, a_max=self.a_max)

    def as_dict(self) -> dict[str, Any]:
        """Plain builtins (tuples as lists), as stored in checkpoints."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`as_dict`; keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "roi" in values:
            values["roi"] = tuple(values["roi"])
        return cls(**values)


def resolve_train_config(
    preset: str = "base",
    *,
    arch: str = "swin_unetr",
    model_preset: str | None = None,
    epochs: int = 100,
    roi: Roi3 | None = None,
    init: str | None = None,
    declared_roi: Roi3 | None = None,
    **options: Any,
) -> TrainConfig:
    """Apply a preset's rules and return the full :class:`TrainConfig`.

    Parameters
    ----------
    preset
        ``"base"``, ``"ta"``, ``"act"`` or ``"scratch"``.
    arch, model_preset
        Architecture and its preset (e.g. ``model_preset="tiny"``).
    epochs
        Base number of epochs; ``scratch`` doubles it.
    roi
        Explicit crop; overrides the preset's ROI rule.
    init
        Initial checkpoint (name or path). Ignored, with ``None`` stored, for ``scratch``.
    declared_roi
        ROI declared for ``init`` in ``attnprobe.toml`` (the pretrained ROI when given).
    **options
        Any other :class:`TrainConfig` field (``batch_size``, ``seed``, ``spacing``, ...).

    Examples
    --------
    >>> resolve_train_config("act", arch="swin_unetr", init="ct").roi
    (96, 96, 64)
    >>> cfg = resolve_train_config("scratch", model_preset="tiny", epochs=10)
    >>> cfg.roi, cfg.epochs, cfg.init
    ((64, 64, 64), 20, None)
    """
    spec = get_preset(preset)
    unknown = sorted(set(options) - {f.name for f in fields(TrainConfig)})
    fixed = sorted(set(options) & {"preset", "arch", "model_preset", "epochs", "base_epochs", "roi", "init",
                                   "tumor_aware"})
    if unknown or fixed:
        raise ConfigError("bad training option(s)", expected="TrainConfig fields other than the preset-derived ones",
                          got=str(unknown + fixed))
    base_epochs = _positive_int("epochs", epochs)
    if roi is not None:
        crop = _roi(roi, what="roi")
    elif spec.anisotropic:
        crop = anisotropic_roi(arch, model_preset, pretrained=declared_roi)
    else:
        crop = pretrained_roi(arch, model_preset, declared=declared_roi)
    if spec.recipe == "paper":
        recipe = dict(PAPER_RECIPE)
        if options.get("intensity", "fixed") != "fixed":  # its 0-800 window belongs to 'fixed' only
            recipe.pop("a_min"), recipe.pop("a_max")
        options = {**recipe, **options}  # explicit options win over the recipe
    return TrainConfig(preset=spec.name, arch=arch, model_preset=model_preset, roi=crop,
                       epochs=base_epochs * spec.epoch_factor, base_epochs=base_epochs,
                       init=init if spec.pretrained else None, tumor_aware=spec.tumor_aware, **options)
