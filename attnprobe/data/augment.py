"""Tumor-aware intensity augmentation and the standard augmentation pipeline (docs/conventions.md).

:class:`RandTumorIntensity` / :class:`RandTumorIntensityd` follow MONAI's random-transform
conventions: each instance owns a ``numpy.random.RandomState`` (``self.R``) that
``set_random_state(seed=...)`` replaces, and ``randomize()`` draws everything the next call needs.
With probability ``prob`` a call draws ``s ~ U(scale_range)`` and ``b ~ U(shift_range)`` and sets
``I <- s * I + b`` on tumor voxels (``label == tumor_label``) only; every other voxel is returned
bit-for-bit unchanged. Intended after intensity scaling to [0, 1] (the default ranges assume it).

Keeping the first crop of each volume (``keep_first=True``)
-----------------------------------------------------------
``RandCropByPosNegLabeld`` turns one volume into a list of crop dicts and ``Compose`` applies the
following transforms to each crop separately, so the transform has to recognise "crop 0" from
the crop itself. It looks, in this order, for:

1. ``d[crop_index_key]`` (default ``"crop_index"``), an integer the user's pipeline may set;
2. ``meta["patch_index"]`` of a ``MetaTensor`` under ``keys`` or ``label_key``, which MONAI's
   multi-sample croppers (``RandCropByPosNegLabeld``, ``RandSpatialCropSamplesd``, ...) write
   while meta tracking is on (the default);
3. a call counter modulo ``num_samples`` when ``num_samples`` is given: correct when every crop of
   every volume passes through this instance in order, which holds inside one ``Compose`` call
   and per ``DataLoader`` worker (each worker owns a copy and processes whole volumes).

Crop 0 is returned untouched and draws no random numbers. If ``keep_first=True`` and none of
the three is available, the call raises :class:`~attnprobe.errors.ConfigError`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandFlipd,
    RandomizableTransform,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from monai.utils import TransformBackends

from attnprobe.errors import ConfigError, ShapeError

PATCH_INDEX_META = "patch_index"  # monai.utils.ImageMetaKey.PATCH_INDEX


def _check_range(name: str, rng: Sequence[float]) -> tuple[float, float]:
    vals = tuple(float(v) for v in rng)
    if len(vals) != 2 or not np.all(np.isfinite(vals)) or vals[0] > vals[1]:
        raise ConfigError(f"Bad {name}.", expected="(low, high) with low <= high", got=repr(tuple(rng)),
                          fix=f"pass e.g. {name}=(0.5, 1.5)" if name == "scale_range" else f"pass e.g. {name}=(-0.2, 0.2)")
    return vals[0], vals[1]


def _check_prob(prob: float) -> float:
    if not 0.0 <= float(prob) <= 1.0:
        raise ConfigError("Bad probability.", expected="0 <= prob <= 1", got=repr(prob), fix="pass e.g. prob=0.3")
    return float(prob)


def _label_shape(img: Any, label: Any) -> tuple[int, ...]:
    """Validate an image/label pair; return the label shape with a channel axis."""
    lab_shape = tuple(label.shape)
    img_shape = tuple(img.shape)
    if img.ndim < 2:
        raise ShapeError("Image must be channel-first.", expected="(channel, x, y[, z])", got=str(img_shape),
                         fix="add a channel axis, e.g. EnsureChannelFirstd")
    if len(lab_shape) == len(img_shape) - 1:
        lab_shape = (1, *lab_shape)
    if len(lab_shape) != len(img_shape) or lab_shape[1:] != img_shape[1:] or lab_shape[0] not in (1, img_shape[0]):
        raise ShapeError("Label does not match the image.",
                         expected=f"(1, *{img_shape[1:]}) or ({img_shape[0]}, *{img_shape[1:]}) label map",
                         got=str(tuple(label.shape)), fix="crop/resample image and label together; no one-hot labels")
    return lab_shape


def _tumor_mask(img: Any, label: Any, tumor_label: int) -> Any:
    """Boolean tumor mask broadcastable to ``img`` ``(channel, x, y, z)``, in img's array library."""
    lab_shape = _label_shape(img, label)
    if isinstance(img, torch.Tensor):
        lab = torch.as_tensor(label.as_tensor() if isinstance(label, MetaTensor) else label, device=img.device)
        return (lab == tumor_label).reshape(lab_shape)
    lab_np = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    return (lab_np == tumor_label).reshape(lab_shape)


def apply_tumor_intensity(img: Any, label: Any, *, scale: float, shift: float, tumor_label: int = 1) -> Any:
    """Return ``img`` with ``scale * I + shift`` on tumor voxels, every other voxel unchanged.

    Parameters
    ----------
    img
        ``(channel, x, y, z)`` image: numpy array, torch tensor or MetaTensor (kept as such, with
        its meta). Integer images are promoted to float32.
    label
        ``(1, x, y, z)``, ``(channel, x, y, z)`` or ``(x, y, z)`` label map (any array type).
    scale, shift
        The affine intensity change.
    tumor_label
        Label value marking the tumor.

    Returns
    -------
    Same type as ``img``; a new array (the input is not modified).
    """
    mask = _tumor_mask(img, label, tumor_label)
    if isinstance(img, torch.Tensor):
        src = img if img.is_floating_point() else img.float()
        # where() copies the untouched voxels exactly; MetaTensor keeps its meta through it
        return torch.where(mask, src * scale + shift, src)
    arr = np.asarray(img)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return np.where(mask, arr * arr.dtype.type(scale) + arr.dtype.type(shift), arr)


class _TumorIntensityDraw(RandomizableTransform):
    """The random part both tumor-intensity transforms share: whether to apply, ``scale``, ``shift``."""

    def __init__(self, prob: float, *, scale_range: Sequence[float], shift_range: Sequence[float],
                 tumor_label: int) -> None:
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.scale_range = _check_range("scale_range", scale_range)
        self.shift_range = _check_range("shift_range", shift_range)
        self.tumor_label = int(tumor_label)
        self.scale, self.shift = 1.0, 0.0

    @property
    def applied(self) -> bool:
        """Whether the last call changed the image (or the last randomize() chose to)."""
        return bool(self._do_transform)

    def randomize(self, data: Any = None) -> None:
        """Decide whether to transform and, if so, draw ``scale`` and ``shift``."""
        super().randomize(None)
        if not self._do_transform:
            return
        self.scale = float(self.R.uniform(*self.scale_range))
        self.shift = float(self.R.uniform(*self.shift_range))


class RandTumorIntensity(_TumorIntensityDraw):
    """Randomly rescale and shift tumor intensities (array transform).

    Parameters
    ----------
    prob
        Probability that a call changes the image.
    scale_range
        ``(low, high)`` of the uniform scale ``s``.
    shift_range
        ``(low, high)`` of the uniform shift ``b``.
    tumor_label
        Label value marking the tumor.

    Notes
    -----
    Call as ``t(img, label)`` with ``img`` ``(channel, x, y, z)``. After a call ``t.applied``,
    ``t.scale`` and ``t.shift`` describe what was done.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, prob: float = 0.3, *, scale_range: Sequence[float] = (0.5, 1.5),
                 shift_range: Sequence[float] = (-0.2, 0.2), tumor_label: int = 1) -> None:
        super().__init__(prob, scale_range=scale_range, shift_range=shift_range, tumor_label=tumor_label)

    # The label travels beside the image, so the signature differs from Transform's one argument.
    def __call__(self, img: Any, label: Any, randomize: bool = True) -> Any:  # type: ignore[override]
        """Apply to one channel-first image given its label map (see class docstring)."""
        if randomize:
            self.randomize()
        if not self._do_transform:
            _label_shape(img, label)  # validate anyway: an error must not depend on the dice
            return img
        return apply_tumor_intensity(img, label, scale=self.scale, shift=self.shift, tumor_label=self.tumor_label)


class RandTumorIntensityd(_TumorIntensityDraw, MapTransform):
    """Dictionary version of :class:`RandTumorIntensity` (one draw per call, shared by all keys).

    Parameters
    ----------
    keys
        Image keys to transform.
    label_key
        Key of the label map that marks the tumor.
    prob, scale_range, shift_range, tumor_label
        As in :class:`RandTumorIntensity`; ``prob`` applies per crop (per call).
    keep_first
        Leave the first crop of each volume untouched (see the module docstring for how the crop
        index is found).
    crop_index_key
        Dict key holding an explicit crop index (checked first).
    num_samples
        Crops per volume, enabling the call-counter fallback.
    allow_missing_keys
        Skip absent image keys instead of raising.
    """

    backend = RandTumorIntensity.backend

    def __init__(self, keys: KeysCollection, *, label_key: str = "label", prob: float = 0.3,
                 scale_range: Sequence[float] = (0.5, 1.5), shift_range: Sequence[float] = (-0.2, 0.2),
                 tumor_label: int = 1, keep_first: bool = False, crop_index_key: str = "crop_index",
                 num_samples: int | None = None, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        _TumorIntensityDraw.__init__(self, prob, scale_range=scale_range, shift_range=shift_range,
                                     tumor_label=tumor_label)
        self.label_key = label_key
        self.keep_first = bool(keep_first)
        self.crop_index_key = crop_index_key
        if num_samples is not None and int(num_samples) < 1:
            raise ConfigError("Bad num_samples.", expected="a positive integer or None", got=repr(num_samples),
                              fix="pass the number of crops per volume, e.g. num_samples=4")
        self.num_samples = None if num_samples is None else int(num_samples)
        self._counter = 0
        self.last_crop_index: int | None = None

    def reset_counter(self) -> None:
        """Restart the ``num_samples`` call counter (e.g. at the start of an epoch)."""
        self._counter = 0

    def crop_index(self, d: Mapping[Hashable, Any]) -> int | None:
        """Index of this crop within its volume, or None when it cannot be told (no counting)."""
        if self.crop_index_key in d:
            return int(d[self.crop_index_key])
        for key in (*self.keys, self.label_key):
            val = d.get(key)
            if isinstance(val, MetaTensor) and PATCH_INDEX_META in val.meta:
                return int(val.meta[PATCH_INDEX_META])
        return None

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Apply to every image key of one crop dict; returns a shallow copy."""
        d = dict(data)
        if self.label_key not in d:
            raise ConfigError("Label key missing from the data dict.", expected=f"key {self.label_key!r}",
                              got=f"keys {list(d)}", fix="set label_key= to the label's key")
        if self.keep_first:
            idx = self.crop_index(d)
            if idx is None and self.num_samples is not None:
                idx = self._counter % self.num_samples
                self._counter += 1
            if idx is None:
                raise ConfigError("keep_first=True but the crop index cannot be found.",
                                  expected=f"d[{self.crop_index_key!r}], a MetaTensor with meta['patch_index'], "
                                           "or num_samples",
                                  got="none of them", fix="keep meta tracking on, or pass num_samples=")
            self.last_crop_index = idx
            if idx == 0:
                self._do_transform = False
                return d
        self.randomize()
        if not self._do_transform:
            return d
        label = d[self.label_key]
        for key in self.key_iterator(d):
            d[key] = apply_tumor_intensity(d[key], label, scale=self.scale, shift=self.shift,
                                           tumor_label=self.tumor_label)
        return d


def standard_augmentation(keys: Sequence[str] = ("image", "label"), *, label_keys: Sequence[str] = ("label",),
                          seed: int | None = 0, flip_prob: float = 0.1, rot90_prob: float = 0.1,
                          scale_factor: float = 0.1, scale_prob: float = 0.1, shift_offset: float = 0.1,
                          shift_prob: float = 0.5, allow_missing_keys: bool = False) -> Compose:
    """The standard MONAI augmentation used by the trainer presets (moderate, seeded).

    Flips along each spatial axis ``x, y, z`` (``flip_prob`` each), in-plane 90-degree rotations
    (axes ``x, y`` only, so the axial axis stays last for anisotropic crops; ``rot90_prob``),
    then on image keys only ``RandScaleIntensityd`` (factor ``1 + U(-scale_factor, scale_factor)``,
    ``scale_prob``) and ``RandShiftIntensityd`` (offset ``U(-shift_offset, shift_offset)``,
    ``shift_prob``) -- the Swin UNETR fine-tuning recipe.

    Parameters
    ----------
    keys
        All keys that move spatially (images and labels).
    label_keys
        Keys among ``keys`` that are labels (spatial transforms only).
    seed
        Seed for every random transform (via ``Compose.set_random_state``); None leaves MONAI's
        default state.
    flip_prob, rot90_prob, scale_factor, scale_prob, shift_offset, shift_prob
        Strengths and probabilities.
    allow_missing_keys
        Passed to every transform.

    Returns
    -------
    monai.transforms.Compose

    Notes
    -----
    Rotating in-plane swaps ``x`` and ``y``; for a crop with ``x != y`` the crops of a batch can
    then differ in shape, so keep in-plane crops square or set ``rot90_prob=0``.
    Add tumor-aware augmentation by composing ``[standard_augmentation(...), RandTumorIntensityd(...)]``.
    """
    keys = tuple(keys)
    labels = tuple(label_keys)
    if not keys:
        raise ConfigError("No keys to augment.", expected="at least one key", got="()", fix='pass keys=("image", "label")')
    stray = [k for k in labels if k not in keys]
    if stray:
        raise ConfigError("Label keys must be among keys.", expected=f"a subset of {keys}", got=repr(stray),
                          fix="add them to keys or drop them from label_keys")
    for name, p in (("flip_prob", flip_prob), ("rot90_prob", rot90_prob), ("scale_prob", scale_prob),
                    ("shift_prob", shift_prob)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"Bad {name}.", expected="0 <= p <= 1", got=repr(p), fix=f"pass {name} within [0, 1]")
    image_keys = [k for k in keys if k not in labels]
    ops: list[Any] = [RandFlipd(keys, prob=flip_prob, spatial_axis=axis, allow_missing_keys=allow_missing_keys)
                      for axis in (0, 1, 2)]
    ops.append(RandRotate90d(keys, prob=rot90_prob, max_k=3, spatial_axes=(0, 1),
                             allow_missing_keys=allow_missing_keys))
    if image_keys:
        ops.append(RandScaleIntensityd(image_keys, factors=scale_factor, prob=scale_prob,
                                       allow_missing_keys=allow_missing_keys))
        ops.append(RandShiftIntensityd(image_keys, offsets=shift_offset, prob=shift_prob,
                                       allow_missing_keys=allow_missing_keys))
    comp = Compose(ops)
    if seed is not None:
        comp.set_random_state(seed=int(seed))
    return comp


def paper_augmentation(keys: Sequence[str] = ("image", "label"), *, label_keys: Sequence[str] = ("label",),
                       seed: int | None = 0, rot90_prob: float = 0.2, tumor: Any = None,
                       allow_missing_keys: bool = False) -> Compose:
    """The paper's fine-tuning augmentation (``augmentation="paper"``, ``docs/conventions.md``).

    Spatial, on every key (labels with nearest interpolation): ``RandAffined`` (p 0.3; rotation
    up to 15 degrees and scaling up to 10 % per axis), flips along x, y, z (p 0.2 each),
    in-plane 90-degree rotations (``rot90_prob``). Then ``tumor`` (a
    :class:`RandTumorIntensityd`, or None) -- *before* the intensity transforms, as in the
    paper -- then, on image keys: Gaussian noise (p 0.15, std 0.01), Gaussian smoothing (p 0.15,
    sigma 0.5-1.0 voxel), intensity scaling by ``1 + U(-0.2, 0.2)`` (p 0.3), shift by
    ``U(-0.2, 0.2)`` (p 0.1), contrast (gamma 0.7-1.5, p 0.15). The probabilities and the
    scale/shift strengths are the paper's; the affine ranges, noise std, smoothing sigmas and
    gamma range are not given there and are attnprobe's choices.
    """
    from monai.transforms import (
        RandAdjustContrastd,
        RandAffined,
        RandGaussianNoised,
        RandGaussianSmoothd,
    )

    keys, labels = tuple(keys), tuple(label_keys)
    image_keys = [k for k in keys if k not in labels]
    modes = ["nearest" if k in labels else "bilinear" for k in keys]
    kw: dict[str, Any] = {"allow_missing_keys": allow_missing_keys}
    ops: list[Any] = [RandAffined(keys, prob=0.3, rotate_range=(math.radians(15),) * 3, scale_range=(0.1,) * 3,
                                  mode=modes, padding_mode="zeros", **kw)]
    ops += [RandFlipd(keys, prob=0.2, spatial_axis=axis, **kw) for axis in (0, 1, 2)]
    ops.append(RandRotate90d(keys, prob=_check_prob(rot90_prob), max_k=3, spatial_axes=(0, 1), **kw))
    if tumor is not None:
        ops.append(tumor)
    if image_keys:
        ops += [RandGaussianNoised(image_keys, prob=0.15, mean=0.0, std=0.01, **kw),
                RandGaussianSmoothd(image_keys, prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                                    sigma_z=(0.5, 1.0), **kw),
                RandScaleIntensityd(image_keys, factors=0.2, prob=0.3, **kw),
                RandShiftIntensityd(image_keys, offsets=0.2, prob=0.1, **kw),
                RandAdjustContrastd(image_keys, prob=0.15, gamma=(0.7, 1.5), **kw)]
    comp = Compose(ops)
    if seed is not None:
        comp.set_random_state(seed=int(seed))
    return comp
