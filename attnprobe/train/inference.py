"""Sliding-window prediction of prepared cases, flip TTA, and writing results in native space.

Prediction runs on a :class:`~attnprobe.data.preprocess.PreparedCase` (normally prepared with
``roi="full"`` so the whole volume is seen): MONAI ``sliding_window_inference`` with windows of
the model ROI, overlap 0.5 and Gaussian blending, softmax over the logits. With test-time
augmentation the softmax is averaged over the identity and flips of the input (each flip undone
on the output before averaging).

Results go back to the input's own grid with ``PreparedCase.box.to_native``: the label map by
nearest neighbour, probabilities by linear interpolation (voxels the preprocessing cropped away
read as background: label 0, probability 0 in every channel). Files are NIfTI with the native
affine, so they overlay the input image in any viewer.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from attnprobe.data.io import save_nifti
from attnprobe.data.preprocess import PreparedCase, validate_roi
from attnprobe.errors import ConfigError, ShapeError

__all__ = [
    "DEFAULT_TTA_FLIPS",
    "InferenceConfig",
    "Prediction",
    "sliding_window_probs",
    "predict_case",
    "write_prediction",
]

#: identity and one flip per spatial axis (x, y, z)
DEFAULT_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (0,), (1,), (2,))


@dataclass(frozen=True, kw_only=True)
class InferenceConfig:
    """How a volume is predicted.

    Parameters
    ----------
    roi
        Window size ``(x, y, z)`` (the model ROI the network was trained with).
    overlap
        Fraction of overlap between neighbouring windows.
    sw_batch_size
        Windows per forward pass.
    tta
        Average the softmax over ``tta_flips``.
    tta_flips
        Spatial axes (0 = x, 1 = y, 2 = z) to flip, one tuple per pass; ``()`` is the identity.
    amp
        Mixed precision on CUDA (ignored on CPU).
    """

    roi: tuple[int, int, int]
    overlap: float = 0.5
    sw_batch_size: int = 4
    tta: bool = False
    tta_flips: tuple[tuple[int, ...], ...] = DEFAULT_TTA_FLIPS
    amp: bool = True

    def __post_init__(self) -> None:
        roi = validate_roi(tuple(self.roi) if isinstance(self.roi, list) else self.roi)
        if roi == "full":
            raise ConfigError("inference roi must be a window size", expected="three sizes (x, y, z)", got="'full'")
        object.__setattr__(self, "roi", tuple(roi))
        if not 0.0 <= self.overlap < 1.0:
            raise ConfigError("bad overlap", expected="0 <= overlap < 1", got=repr(self.overlap))
        if isinstance(self.sw_batch_size, bool) or not isinstance(self.sw_batch_size, int) or self.sw_batch_size < 1:
            raise ConfigError("bad sw_batch_size", expected="a positive integer", got=repr(self.sw_batch_size))
        flips = tuple(tuple(int(a) for a in f) for f in self.tta_flips)
        if not flips or any(a not in (0, 1, 2) for f in flips for a in f):
            raise ConfigError("bad tta_flips", expected="tuples of spatial axes among 0, 1, 2, e.g. ((), (0,))",
                              got=repr(self.tta_flips))
        object.__setattr__(self, "tta_flips", flips)


@dataclass(frozen=True, eq=False)
class Prediction:
    """The prediction of one prepared case.

    Attributes
    ----------
    case
        The prepared input.
    probs
        float32 ``(classes, x, y, z)`` softmax on the prepared grid.
    label
        uint8 ``(x, y, z)`` argmax on the prepared grid (0 on padding voxels).
    """

    case: PreparedCase
    probs: torch.Tensor
    label: torch.Tensor

    @property
    def case_id(self) -> str:
        return self.case.case_id

    def native_label(self) -> np.ndarray:
        """uint8 label map on the input file's grid (nearest neighbour)."""
        back = self.case.box.to_native(self.label.to(torch.float32), mode="nearest")[0]
        return back.round().to(torch.uint8).numpy()

    def native_probs(self) -> np.ndarray:
        """float32 ``(classes, *native_shape)`` probabilities on the input file's grid (linear)."""
        return self.case.box.to_native(self.probs, mode="bilinear").numpy().astype(np.float32)


def _check_image(image: torch.Tensor) -> torch.Tensor:
    if image.ndim == 4:
        image = image[None]
    if image.ndim != 5 or image.shape[1] != 1:
        raise ShapeError("image to predict has the wrong shape", expected="(1, x, y, z) or (batch, 1, x, y, z)",
                         got=str(tuple(image.shape)))
    return image


def sliding_window_probs(model: nn.Module, image: torch.Tensor, *, config: InferenceConfig,
                         device: str | torch.device | None = None) -> torch.Tensor:
    """Softmax probabilities of a whole volume by sliding-window inference.

    Parameters
    ----------
    model
        Segmentation network returning logits ``(batch, classes, x, y, z)``.
    image
        ``(1, x, y, z)`` or ``(batch, 1, x, y, z)``; any size (MONAI pads small volumes).
    config
        Window, overlap, TTA.
    device
        Where the model runs; default the device of the model's parameters.

    Returns
    -------
    torch.Tensor
        float32 ``(batch, classes, x, y, z)`` on the CPU.
    """
    from monai.inferers import sliding_window_inference

    image = _check_image(image)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    use_amp = config.amp and dev.type == "cuda"
    flips = config.tta_flips if config.tta else ((),)
    image = image.to(dev)  # once, not once per flip
    was_training = model.training
    model.eval()
    total: torch.Tensor | None = None
    try:
        with torch.no_grad(), torch.autocast(device_type=dev.type, enabled=use_amp):
            for flip in flips:
                dims = [a + 2 for a in flip]
                x = torch.flip(image, dims) if dims else image
                logits = sliding_window_inference(x, config.roi, config.sw_batch_size, model,
                                                  overlap=config.overlap, mode="gaussian")
                probs = torch.softmax(torch.as_tensor(logits).float(), dim=1)
                probs = torch.flip(probs, dims) if dims else probs
                total = probs if total is None else total + probs
    finally:
        model.train(was_training)
    return (cast(torch.Tensor, total) / len(flips)).cpu()  # flips is never empty


def predict_case(model: nn.Module, case: PreparedCase, *, config: InferenceConfig,
                 device: str | torch.device | None = None) -> Prediction:
    """Predict one prepared case; padding voxels are set to background.

    Parameters
    ----------
    model
        Segmentation network (eval mode is set for the call).
    case
        Prepared with the preprocessing the model was trained with (``roi="full"`` for whole
        volumes; any prepared shape works).
    config, device
        As in :func:`sliding_window_probs`.
    """
    probs = sliding_window_probs(model, case.image, config=config, device=device)[0]
    label = probs.argmax(0).to(torch.uint8)
    # Padding is not part of the input: never report a lesion there.
    label = label * case.mask[0].to(torch.uint8)
    return Prediction(case=case, probs=probs.contiguous(), label=label.contiguous())


def write_prediction(prediction: Prediction, out_dir: str | os.PathLike[str], *, probabilities: bool = False,
                     channels: Sequence[int] | None = None, suffix: str = ".nii.gz") -> dict[str, Path]:
    """Write a prediction as NIfTI on the input's native grid.

    Layout: ``<out_dir>/predictions/<case>.nii.gz`` (uint8 labels) and, with ``probabilities``,
    ``<out_dir>/probabilities/<case>.nii.gz`` (float32; a 3D map for one channel, else 4D with
    channels last, as NIfTI stores vectors).

    Parameters
    ----------
    prediction
        From :func:`predict_case`.
    out_dir
        Output folder.
    probabilities
        Also write the softmax.
    channels
        Probability channels to write (default: all but the background when there are two
        classes, i.e. the tumor probability; all otherwise).
    suffix
        ``".nii.gz"`` or ``".nii"``.

    Returns
    -------
    dict
        ``{"prediction": path}`` plus ``"probabilities"`` when written.
    """
    if suffix not in (".nii.gz", ".nii"):
        raise ConfigError("bad suffix", expected="'.nii.gz' or '.nii'", got=repr(suffix))
    out = Path(out_dir)
    affine = prediction.case.box.native_affine
    paths = {"prediction": save_nifti(prediction.native_label(), affine,
                                      out / "predictions" / f"{prediction.case_id}{suffix}")}
    if probabilities:
        probs = prediction.native_probs()
        n = probs.shape[0]
        chans = list(channels) if channels is not None else ([1] if n == 2 else list(range(n)))
        if not chans or any(not 0 <= c < n for c in chans):
            raise ConfigError("bad probability channels", expected=f"indices in 0..{n - 1}", got=repr(channels))
        data = probs[chans[0]] if len(chans) == 1 else np.moveaxis(probs[chans], 0, -1)
        paths["probabilities"] = save_nifti(np.ascontiguousarray(data, dtype=np.float32), affine,
                                            out / "probabilities" / f"{prediction.case_id}{suffix}")
    return paths
