"""The adapter interface: what attnprobe needs to know about one architecture.

An adapter is a small stateless object registered under an architecture name
(``swin_unetr``, ``smit``). It builds models, names their taps canonically, and exposes
the model's *own* window functions so token geometry can never drift from the model.
Adding an architecture means writing one adapter module and registering it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from attnprobe.errors import ConfigError, ShapeError
from attnprobe.models.compat import BUILD_DEFAULT, Compat, check_compat

TapKind = Literal["attn", "out"]

ATTN_DIMS: tuple[str, ...] = ("sample", "window", "head", "query", "key")
OUT_DIMS: tuple[str, ...] = ("sample", "x", "y", "z", "channel")
KIND_DIMS: tuple[str, ...] = ("sample", "window", "token")

Triple = tuple[int, int, int]


def as_triple(values: Sequence[int], what: str = "spatial shape") -> Triple:
    """``values`` as three ints ``(x, y, z)``; a 3D volume has exactly three spatial sizes."""
    if len(values) != 3:
        raise ShapeError(f"{what} is not 3D", expected="three sizes (x, y, z)", got=str(tuple(values)))
    return (int(values[0]), int(values[1]), int(values[2]))


@dataclass(frozen=True)
class BlockRef:
    """One transformer block of a model, by canonical position and module paths."""

    stage: int
    block: int
    block_path: str
    softmax_path: str
    attn_path: str

    @property
    def name(self) -> str:
        return f"stage{self.stage}.block{self.block}"


@dataclass(frozen=True)
class TapSpec:
    """A tap: a canonical name bound to one module whose forward output it reads."""

    name: str
    kind: TapKind
    block: BlockRef
    module_path: str

    @property
    def dims(self) -> tuple[str, ...]:
        return ATTN_DIMS if self.kind == "attn" else OUT_DIMS


@dataclass(frozen=True)
class BlockGeometry:
    """Token geometry of one block for one input size (x, y, z order).

    ``window`` and ``shift`` are what the block really uses after window shrinking on
    small grids; ``padded`` is the grid after window padding.
    """

    stage: int
    block: int
    grid: Triple
    window: Triple
    shift: Triple
    heads: int
    channels: int

    @property
    def name(self) -> str:
        return f"stage{self.stage}.block{self.block}"

    @property
    def padded(self) -> Triple:
        return tuple(math.ceil(g / w) * w for g, w in zip(self.grid, self.window))  # type: ignore[return-value]

    @property
    def n_windows(self) -> int:
        return math.prod(p // w for p, w in zip(self.padded, self.window))

    @property
    def n_tokens(self) -> int:
        """Tokens per window (``N``)."""
        return math.prod(self.window)

    @property
    def shifted(self) -> bool:
        return any(s > 0 for s in self.shift)


STATE_DICT_WRAPPERS: tuple[str, ...] = ("state_dict", "model", "model_state_dict")


def unwrap_state_dict(raw: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a checkpoint object with its common wrappers taken off.

    Looks inside the first of :data:`STATE_DICT_WRAPPERS` that holds a mapping, keeps tensor
    values only and strips a DataParallel ``module.`` prefix. The format name says what was
    found: ``plain``, a wrapper name, either with ``+module``.
    """
    sd: Mapping[str, Any] = raw
    fmt = "plain"
    for wrapper in STATE_DICT_WRAPPERS:
        if isinstance(raw.get(wrapper), Mapping):
            sd, fmt = raw[wrapper], wrapper
            break
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
        fmt += "+module"
    return tensors, fmt


class Adapter(ABC):
    """Everything architecture-specific that capture and geometry need.

    Subclasses set ``name``, ``presets`` and ``default_preset`` and implement the
    abstract methods. Models built by :meth:`build` carry ``attnprobe_arch`` and
    ``attnprobe_config`` attributes so the rest of the toolkit can find their adapter.
    """

    name: ClassVar[str]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]
    default_preset: ClassVar[str]
    #: every spatial input size must be a multiple of this
    input_multiple: ClassVar[int] = 32
    #: spatial reduction of the patch embedding
    patch_size: ClassVar[int] = 2
    #: compat modes the adapter can build (``docs/compat.md``); others are refused. A subclass
    #: that overrides ``_construct`` must say again which modes its construction honours.
    compat_modes: ClassVar[tuple[Compat, ...]] = ("current",)

    # ---- building -------------------------------------------------------------------
    @abstractmethod
    def _construct(self, config: Mapping[str, Any]) -> nn.Module:
        """Instantiate the model from a complete config."""

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        config = {**config, "compat": check_compat(config.get("compat", BUILD_DEFAULT))}
        if config["compat"] not in self.compat_modes:
            raise ConfigError(f"the {self.name} adapter has no compat mode {config['compat']!r}",
                              expected=f"one of {list(self.compat_modes)}", got=repr(config["compat"]),
                              fix="drop --compat (compat=...) for this architecture")
        model = self._construct(config)
        # nn.Module.__setattr__ is typed for tensors and modules only; these are plain attributes
        model.attnprobe_arch = self.name  # type: ignore[assignment]
        model.attnprobe_config = dict(config)  # type: ignore[assignment]
        return model

    def recognizes(self, model: nn.Module) -> bool:
        """True when a model not built by attnprobe is of this architecture."""
        return False

    # ---- checkpoints ----------------------------------------------------------------
    @abstractmethod
    def normalize_state_dict(self, raw: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
        """Unwrap a loaded checkpoint object into model keys; return (state_dict, format name).

        Adapters map their model-specific layouts and use :func:`unwrap_state_dict` for the
        common wrappers.
        """

    @abstractmethod
    def infer_config(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Hyper-parameters that the keys and shapes determine."""

    @abstractmethod
    def is_backbone_key(self, key: str) -> bool:
        """True for keys of the pretrained encoder (the ones a load must not miss)."""

    def is_known_extra_key(self, key: str) -> bool:
        """True for keys of known heads the model has no place for (self-supervised heads).

        They are listed in the load report as ignored; any other key the model lacks is an error.
        """
        return False

    # ---- structure ------------------------------------------------------------------
    @abstractmethod
    def blocks(self, model: nn.Module) -> list[BlockRef]:
        """All attention blocks in forward order."""

    def merge_offsets(self, model: nn.Module, stage: int) -> tuple[Triple, ...] | None:
        """Sub-voxel offsets the patch merging after ``stage`` reads; ``None`` means all eight.

        Token kinds follow it: a merged token is real iff a child it reads is real.
        """
        return None

    def block_hparams(self, model: nn.Module, ref: BlockRef) -> tuple[Triple, int, int]:
        """(nominal window, heads, channels) of one block.

        Default: the block module's ``window_size``, ``num_heads`` and ``dim`` attributes.
        """
        block: Any = model.get_submodule(ref.block_path)
        return tuple(block.window_size), int(block.num_heads), int(block.dim)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules holding a ``use_flash_attention`` flag that capture must switch off."""
        return [model.get_submodule(ref.attn_path) for ref in self.blocks(model)]

    # ---- geometry (the model's own window functions) --------------------------------
    @abstractmethod
    def shrink_window(self, grid: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
        """The model's own window shrinking: nominal (window, shift) -> what a grid allows."""

    def effective_window(self, grid: Triple, window: Triple, shifted: bool) -> tuple[Triple, Triple]:
        """(window, shift) the block really uses on a token grid, as the model computes it.

        Shifted blocks have the nominal shift ``window // 2``; :meth:`shrink_window` applies
        the model's rule for grids smaller than a window.
        """
        nominal_shift = tuple(w // 2 for w in window) if shifted else (0, 0, 0)
        return self.shrink_window(grid, window, nominal_shift)  # type: ignore[arg-type]

    @abstractmethod
    def window_partition(self, x: torch.Tensor, window: Triple) -> torch.Tensor:
        """The model's partition: ``(B, X, Y, Z, C) -> (B*nW, N, C)``."""

    def pad_to_window(self, x: torch.Tensor, window: Triple, value: float = 0.0) -> torch.Tensor:
        """Pad a channel-last grid at the END of each axis up to a window multiple."""
        _, gx, gy, gz, _ = x.shape
        px, py, pz = ((w - g % w) % w for g, w in zip((gx, gy, gz), window))
        if px or py or pz:
            x = F.pad(x, (0, 0, 0, pz, 0, py, 0, px), value=value)
        return x

    def block_window(self, model: nn.Module, ref: BlockRef, grid: Triple) -> tuple[Triple, Triple]:
        """(window, shift) one block of this model uses on a token grid.

        Default: the nominal window with :meth:`effective_window`; adapters whose blocks know
        their own rule (it may depend on the compat mode) ask the block.
        """
        nominal, _, _ = self.block_hparams(model, ref)
        return self.effective_window(grid, nominal, ref.block % 2 == 1)

    def stage_grid(self, spatial_shape: Triple, stage: int) -> Triple:
        """Token grid of a stage for an input of ``spatial_shape`` voxels."""
        grid = tuple(math.ceil(s / self.patch_size) for s in spatial_shape)
        for _ in range(stage):
            grid = tuple(math.ceil(g / 2) for g in grid)
        return grid  # type: ignore[return-value]

    def geometry(self, model: nn.Module, spatial_shape: Triple) -> list[BlockGeometry]:
        """Geometry of every block for one input size."""
        out = []
        for ref in self.blocks(model):
            grid = self.stage_grid(spatial_shape, ref.stage)
            _, heads, channels = self.block_hparams(model, ref)
            window, shift = self.block_window(model, ref, grid)
            out.append(BlockGeometry(ref.stage, ref.block, grid, window, shift, heads, channels))
        return out

    def out_to_channel_last(self, value: torch.Tensor, geom: BlockGeometry) -> torch.Tensor:
        """Bring a block's forward output to ``(B, X, Y, Z, C)``; default: already so."""
        return value

    # ---- taps -----------------------------------------------------------------------
    def taps(self, model: nn.Module) -> list[TapSpec]:
        taps: list[TapSpec] = []
        for ref in self.blocks(model):
            taps.append(TapSpec(f"{ref.name}.attn", "attn", ref, ref.softmax_path))
            taps.append(TapSpec(f"{ref.name}.out", "out", ref, ref.block_path))
        return taps
