"""Options shared by the commands: preprocessing (ROI, spacing, intensity, padding) and device.

Every command that reads images declares these options through the aliases below, and turns
them into one :class:`~attnprobe.data.preprocess.PreprocessConfig` with :class:`Preprocessing`:

1. :meth:`Preprocessing.check` reads and checks the values before anything is loaded (a bad
   ``--roi`` fails in milliseconds, not after the model);
2. :func:`checkpoint_facts` reads what the checkpoint says its model was trained with
   (attnprobe's ``train`` metadata, or the ``info`` of a checkpoint attnprobe's demo made);
3. :meth:`Preprocessing.resolve` fills the options left unset from the checkpoint, then from
   the defaults (1 mm, percentile intensity, padding at the end), and refuses an option that
   differs from the checkpoint's training unless ``--allow-roi-mismatch`` is given: the same
   error in every command (docs/cli.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from attnprobe.cli.common import err_console, parse_roi
from attnprobe.errors import ConfigError

if TYPE_CHECKING:
    from attnprobe.data.preprocess import PreprocessConfig

Intensity = Literal["percentile", "fixed"]
PadMode = Literal["end", "symmetric", "inplane-symmetric"]

#: what a command uses for an option the user left unset and the checkpoint does not record
DEFAULTS: dict[str, Any] = {"spacing": 1.0, "intensity": "percentile", "a_min": None, "a_max": None,
                            "pad_mode": "end"}
FROM_CHECKPOINT = "default: the checkpoint's training value"

RoiOption = Annotated[str | None, typer.Option(
    "--roi", help=f"Model input x,y,z in voxels, multiples of 32 ({FROM_CHECKPOINT}, else the model's).")]
SpacingOption = Annotated[float | None, typer.Option(
    "--spacing", help=f"Resample to this isotropic spacing in mm ({FROM_CHECKPOINT}, else 1).")]
IntensityOption = Annotated[Intensity | None, typer.Option(
    "--intensity", help=f"Intensity scaling ({FROM_CHECKPOINT}, else percentile).")]
AMinOption = Annotated[float | None, typer.Option(
    "--a-min", help="Fixed window lower bound (--intensity fixed).")]
AMaxOption = Annotated[float | None, typer.Option(
    "--a-max", help="Fixed window upper bound (--intensity fixed).")]
PadModeOption = Annotated[PadMode | None, typer.Option(
    "--pad-mode", help=f"Where input padding goes ({FROM_CHECKPOINT}, else end).")]
AllowMismatchOption = Annotated[bool, typer.Option(
    "--allow-roi-mismatch", help="Allow a ROI, spacing, intensity or padding mode different from the "
    "model's training (recorded in its checkpoint).")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout instead of a table.")]


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing options of one command, as given (None: not given)."""

    roi: str | None = None
    spacing: float | None = None
    intensity: str | None = None
    a_min: float | None = None
    a_max: float | None = None
    pad_mode: str | None = None
    allow_mismatch: bool = False

    def check(self) -> tuple[int, int, int] | Literal["full"] | None:
        """Read and check every option without loading anything; return the ROI (None: not given)."""
        from attnprobe.data.preprocess import validate_roi

        roi = parse_roi(self.roi)
        if roi is not None:
            roi = validate_roi(roi, what="--roi")
        if self.spacing is not None and not self.spacing > 0:
            raise ConfigError("bad --spacing", expected="a positive size in mm", got=str(self.spacing))
        if (self.a_min is not None or self.a_max is not None) and self.intensity not in (None, "fixed"):
            raise ConfigError("--a-min/--a-max apply to --intensity fixed", expected="--intensity fixed with them",
                              got=f"--intensity {self.intensity}", fix="drop --a-min/--a-max or use --intensity fixed")
        if self.intensity == "fixed" and (self.a_min is None) != (self.a_max is None):
            raise ConfigError("--intensity fixed needs both bounds", expected="--a-min and --a-max",
                              got=f"--a-min {self.a_min} --a-max {self.a_max}")
        if self.a_min is not None and self.a_max is not None and not self.a_min < self.a_max:
            raise ConfigError("bad intensity window", expected="--a-min below --a-max",
                              got=f"--a-min {self.a_min} --a-max {self.a_max}")
        return roi

    def resolve(self, stored: dict[str, Any] | None, *, model_roi: Any = None,
                what: str = "the checkpoint") -> PreprocessConfig:
        """The config to use: options given, else the checkpoint's training values, else defaults.

        Parameters
        ----------
        stored
            The checkpoint's training preprocessing (:attr:`CheckpointFacts.stored`), None or {}
            when it records none.
        model_roi
            The ROI to use when neither ``--roi`` nor ``stored`` has one (a workspace's or the
            model's own); (96, 96, 96) when None too.

        Raises
        ------
        ConfigError
            An option that differs from the checkpoint's training, without ``--allow-roi-mismatch``.
        """
        from attnprobe.data.preprocess import PreprocessConfig

        roi = self.check()
        given = {"roi": tuple(roi) if isinstance(roi, tuple) else roi, "spacing": self.spacing,
                 "intensity": self.intensity, "a_min": self.a_min, "a_max": self.a_max, "pad_mode": self.pad_mode}
        values = check_against_training(stored or {}, given, allow=self.allow_mismatch, what=what)
        if values["intensity"] != "fixed":  # a stored window does not apply to percentile scaling
            values["a_min"] = values["a_max"] = None
        return PreprocessConfig(roi=values["roi"] or (tuple(model_roi) if model_roi else (96, 96, 96)),
                                spacing=values["spacing"], intensity=values["intensity"],
                                a_min=values["a_min"], a_max=values["a_max"], pad_mode=values["pad_mode"])


def check_against_training(stored: dict[str, Any], requested: dict[str, Any], *, allow: bool,
                           what: str = "the checkpoint", doing: str = "running") -> dict[str, Any]:
    """Values to use: ``requested`` where given, else ``stored``, else :data:`DEFAULTS`.

    A requested value that differs from a stored one is refused unless ``allow`` (then one
    warning line names the differences).
    """
    diffs = [f"{k}={_show(requested[k])} (trained with {_show(stored[k])})" for k in requested
             if requested[k] is not None and stored.get(k) is not None
             and _norm(k, requested[k]) != _norm(k, stored[k])]
    if diffs and not allow:
        raise ConfigError(f"preprocessing differs from the model's training (recorded in {what})",
                          expected=", ".join(f"{k}={_show(stored[k])}" for k in requested if stored.get(k) is not None),
                          got="; ".join(diffs),
                          fix="drop the option to use the trained values, or pass --allow-roi-mismatch")
    if diffs:
        err_console.print(f"warning: {doing} with {'; '.join(diffs)}", highlight=False, markup=False)
    return {k: (requested[k] if requested[k] is not None else stored.get(k, DEFAULTS.get(k)))
            for k in requested}


def _norm(key: str, value: Any) -> Any:
    if key == "spacing" and isinstance(value, (int, float)):
        return (float(value),) * 3  # one number means isotropic
    return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else repr(value)


@dataclass(frozen=True)
class CheckpointFacts:
    """What a checkpoint file says about its model before the model is built.

    Attributes
    ----------
    stored
        The preprocessing its model was trained with, as far as it records it: attnprobe's
        trainer records ``train`` metadata (roi, spacing, intensity, a_min, a_max, pad_mode);
        checkpoints made by the demo's CT pretraining an ``info`` dict (roi,
        ``spec.spacing_mm`` and the CT window ``spec.window_hu``, mapped to [0, 1] as
        ``--intensity fixed``). ``{}`` for other checkpoints.
    roi
        The model's input ROI: the training ROI, else the one in its saved config (None: not recorded).
    feature_size
        Embedding size of the first stage (48, the common one, when not recorded).
    """

    stored: dict[str, Any]
    roi: tuple[int, int, int] | None = None
    feature_size: int = 48


def checkpoint_facts(checkpoint: str | os.PathLike[str] | None) -> CheckpointFacts:
    """Read :class:`CheckpointFacts` (a capture store, a folder or None: nothing recorded)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return CheckpointFacts({})
    from attnprobe.models.checkpoints import META_KEY, read_checkpoint

    raw = read_checkpoint(Path(checkpoint))
    meta: dict[str, Any] = _mapping(raw.get(META_KEY))
    config = _mapping(meta.get("config"))
    info = _mapping(raw.get("info"))
    stored: dict[str, Any] = {}
    train = meta.get("train")
    if isinstance(train, dict):
        keys = ("roi", "spacing", "intensity", "a_min", "a_max", "pad_mode")
        stored = {k: (tuple(train[k]) if isinstance(train[k], list) else train[k]) for k in keys
                  if train.get(k) is not None}
    elif str(info.get("made_by", "")).startswith("attnprobe."):
        if isinstance(info.get("roi"), (list, tuple)):
            stored["roi"] = tuple(int(v) for v in info["roi"])
        spec = _mapping(info.get("spec"))
        if spec.get("spacing_mm") is not None:
            stored["spacing"] = float(spec["spacing_mm"])
        window = spec.get("window_hu")
        if isinstance(window, (list, tuple)) and len(window) == 2:
            stored.update(intensity="fixed", a_min=float(window[0]), a_max=float(window[1]))
    roi = stored.get("roi") or (tuple(config["roi"]) if isinstance(config.get("roi"), (list, tuple)) else None)
    feature_size = next((int(config[k]) for k in ("feature_size", "embed_dim") if isinstance(config.get(k), int)),
                        12 if info.get("model_preset") == "tiny" else 48)
    return CheckpointFacts(stored, tuple(roi) if roi else None, feature_size)


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


# --- memory ------------------------------------------------------------------------------------

#: activations of one forward, in float32 values per input voxel and channel of the first
#: stage (measured on Swin UNETR and SMIT: the decoder's full-resolution blocks dominate)
_VALUES_PER_VOXEL_AND_CHANNEL = 10


def forward_bytes(shape: tuple[int, ...], *, feature_size: int = 48) -> int:
    """A rough upper estimate of the memory one forward of an input ``shape`` (x, y, z) needs."""
    voxels = 1
    for s in shape:
        voxels *= int(s)
    return voxels * feature_size * _VALUES_PER_VOXEL_AND_CHANNEL * 4


def available_bytes(device: str = "cpu") -> int | None:
    """Total memory of the device (None: unknown)."""
    if str(device).startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        return None
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(shape: tuple[int, ...], *, feature_size: int = 48, device: str = "cpu",
                 option: str = "--roi") -> None:
    """Refuse an input whose forward cannot fit in the device's memory, before loading anything."""
    need = forward_bytes(shape, feature_size=feature_size)
    have = available_bytes(device)
    if have is not None and need > have:
        raise ConfigError(f"an input of {'x'.join(map(str, shape))} voxels is too large for this machine",
                          expected=f"a forward that fits in {have / 2**30:.1f} GiB of {str(device).split(':')[0]} memory",
                          got=f"about {need / 2**30:,.0f} GiB estimated for one forward ({option})",
                          fix=f"use a smaller {option}")
