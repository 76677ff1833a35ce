"""Block outputs turned into CKA examples, from a capture store or live from models (docs/cka.md).

Sources
-------
- :func:`store_outputs` -- the ``out`` of every block of a capture store, read one sample at a
  time (out of core: only that sample's chunks are loaded).
- :func:`live_outputs` -- one model run over prepared cases under a :class:`~attnprobe.capture.Probe`
  on its ``*.out`` taps, optionally on crops of each case.
- :func:`paired_live_outputs` -- two models (or one model on two input sets) on IDENTICAL
  inputs: the crops of a case are drawn once and applied to both sides.

Each yields :class:`BlockOutputs`: block name -> channel-last ``(sample=1, x, y, z, channel)``
tensor, tagged with the case's position in the compared list (the order key that makes
sharded and single-process runs agree) and the crop index.

Units
-----
- :func:`pooled_features` -- one vector per example: adaptive average pooling of the named
  spatial axes ``x, y, z`` to a grid (default 8), flattened (via :mod:`attnprobe.metrics.pooling`).
- :func:`token_features` -- every token an example, ``(sample*x*y*z, channel)``; optionally pooled
  to a coarser grid first so that two blocks of different stages describe the same regions.

Crops
-----
:func:`draw_crops` draws ``count`` seeded random crops of a prepared volume. The generator is
seeded from ``(seed, case id)``, so a case gets the same crops on every rank, in every run, and
for both sides of a comparison; ``count=1`` without a size is the whole volume.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from attnprobe.errors import ConfigError, ShapeError, StoreError
from attnprobe.metrics.pooling import Pooling, SmallGrid, pool_examples, tokens_as_examples
from attnprobe.models.adapter import OUT_DIMS
from attnprobe.store import as_tree, block_names
from attnprobe.store.record import CaseLike

if TYPE_CHECKING:
    import xarray as xr

__all__ = [
    "Unit",
    "UNITS",
    "Crop",
    "BlockOutputs",
    "default_crop_size",
    "draw_crops",
    "store_blocks",
    "store_case_ids",
    "store_channels",
    "store_outputs",
    "model_blocks",
    "model_channels",
    "live_outputs",
    "paired_live_outputs",
    "pooled_features",
    "token_features",
]

Unit = Literal["pooled", "tokens"]
UNITS: tuple[str, ...] = ("pooled", "tokens")

Triple = tuple[int, int, int]
SPATIAL = ("x", "y", "z")
_MIN_SIDE = 32  # every model input axis is a multiple of 32 (patch 2, four 2x merges)


# --------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class Crop:
    """A box of a prepared volume, in voxels along ``(x, y, z)``.

    Attributes
    ----------
    start : tuple of int
        First voxel of the box on each axis.
    size : tuple of int
        Extent of the box on each axis.
    """

    start: Triple
    size: Triple

    def apply(self, volume: torch.Tensor) -> torch.Tensor:
        """Cut the box out of the last three axes of ``volume``, e.g. ``(c, x, y, z)``."""
        if volume.ndim < 3:
            raise ShapeError("a crop needs a volume", expected="a tensor ending in (x, y, z)",
                             got=f"shape {tuple(volume.shape)}")
        shape = tuple(int(s) for s in volume.shape[-3:])
        if any(a + s > v for a, s, v in zip(self.start, self.size, shape, strict=True)):
            raise ShapeError("the crop does not fit the volume",
                             expected=f"start + size <= {shape}",
                             got=f"start {self.start}, size {self.size}",
                             fix="draw crops from this volume's shape")
        (x0, y0, z0), (sx, sy, sz) = self.start, self.size
        return volume[..., x0:x0 + sx, y0:y0 + sy, z0:z0 + sz]


def _triple(value: Sequence[int], what: str) -> Triple:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise ConfigError(f"bad {what}", expected="three positive sizes (x, y, z)", got=repr(value))
    return out


def default_crop_size(shape: Sequence[int]) -> Triple:
    """Crop size used when several crops are asked for without a size.

    Parameters
    ----------
    shape : sequence of int
        The prepared volume ``(x, y, z)``.

    Returns
    -------
    tuple of int
        ``shape`` shortened by 32 voxels on every axis longer than 32, so crops can move by up
        to 32 voxels while keeping every side a multiple of 32; if that leaves every side at 32
        (whose 1/32 bottleneck is a single voxel, which the decoders' instance norms reject),
        the longest axis keeps its full length.
    """
    s = _triple(shape, "volume shape")
    out = [v - _MIN_SIDE if v > _MIN_SIDE else v for v in s]
    if max(out) <= _MIN_SIDE:
        longest = int(np.argmax(s))
        out[longest] = s[longest]
    return tuple(out)  # type: ignore[return-value]


def _case_seed(seed: int, key: str) -> np.random.Generator:
    # crc32 is stable across processes and Python versions (hash() is salted per process)
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(key.encode("utf-8"))])


def draw_crops(shape: Sequence[int], *, count: int = 1, size: Sequence[int] | None = None,
               seed: int = 0, key: str = "") -> list[Crop]:
    """Seeded random crops of one prepared volume.

    Parameters
    ----------
    shape : sequence of int
        Volume size ``(x, y, z)``.
    count : int
        Number of crops; ``1`` with ``size=None`` is the whole volume.
    size : sequence of int, optional
        Crop size ``(x, y, z)``; default :func:`default_crop_size` when ``count > 1``.
    seed : int
        Base seed.
    key : str
        Per-case key (the case id): the generator is seeded from ``(seed, crc32(key))``, so the
        same case gets the same crops wherever and whenever it is drawn.

    Returns
    -------
    list of Crop
        ``count`` boxes; starts uniform over every position where the box fits.
    """
    if not isinstance(count, int | np.integer) or count < 1:
        raise ConfigError("bad number of crops", expected="an integer >= 1", got=repr(count))
    full = _triple(shape, "volume shape")
    if size is None:
        if count == 1:
            return [Crop((0, 0, 0), full)]
        size = default_crop_size(full)
    box = _triple(size, "crop size")
    if any(b > f for b, f in zip(box, full, strict=True)):
        raise ConfigError("the crop is larger than the prepared volume",
                          expected=f"a crop size <= {full} on every axis", got=str(box),
                          fix="use a smaller --crop-size or a larger --roi")
    rng = _case_seed(seed, key)
    starts = rng.integers(0, np.asarray(full) - np.asarray(box) + 1, size=(int(count), 3))
    return [Crop(tuple(int(v) for v in row), box) for row in starts]  # type: ignore[arg-type]


# --------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class BlockOutputs:
    """Block outputs of one example (a case, or one crop of it).

    Attributes
    ----------
    index : int
        Position of the case in the compared case list; sorting by ``(index, crop)`` restores
        the single-process order after cases were sharded across ranks.
    case_id : str
        Case id.
    crop : int
        Crop number within the case (0 for the whole volume).
    outputs : mapping of str to torch.Tensor
        Block name (``stage{s}.block{b}``) -> ``(sample=1, x, y, z, channel)``.
    """

    index: int
    case_id: str
    crop: int
    outputs: Mapping[str, torch.Tensor]

    @property
    def key(self) -> tuple[int, int]:
        """``(index, crop)``: the order of this example in a comparison."""
        return (self.index, self.crop)


def _block_order(name: str) -> tuple[int, int]:
    stage, block = name.split(".")
    return int(stage.removeprefix("stage")), int(block.removeprefix("block"))


def store_blocks(store: str | Path | xr.DataTree) -> list[str]:
    """Blocks of a store that hold ``out``, in model order.

    Raises
    ------
    StoreError
        When no block output was captured (only attention taps).
    """
    tree = as_tree(store)
    names = [b for b in block_names(tree) if "out" in tree[b].dataset.data_vars]
    if not names:
        raise StoreError("the store holds no block outputs",
                         expected="'out' arrays (taps like 'stage0.block0.out')",
                         got=f"blocks {block_names(tree)[:4]} without 'out'",
                         fix="capture with --taps '*.out' (or the default '*')")
    return names


def store_case_ids(store: str | Path | xr.DataTree) -> list[str]:
    """Case ids of the finished samples of a store, in store order."""
    tree = as_tree(store)
    done = np.asarray(tree["done"].values, dtype=bool)
    return [str(c) for c, d in zip(tree.dataset["case"].values, done, strict=True) if d]


def _out_array(tree: xr.DataTree, block: str) -> xr.DataArray:
    da = tree[block].dataset["out"]
    if set(da.dims) != set(OUT_DIMS):
        raise StoreError(f"'out' of {block} has the wrong dims", expected=str(OUT_DIMS),
                         got=str(tuple(da.dims)), fix="re-capture with this attnprobe version")
    return da


def store_channels(store: str | Path | xr.DataTree) -> dict[str, int]:
    """Channels of every block output of a store: block name -> ``C``."""
    tree = as_tree(store)
    return {b: int(_out_array(tree, b).sizes["channel"]) for b in store_blocks(tree)}


def store_outputs(store: str | Path | xr.DataTree, case_ids: Sequence[str] | None = None, *,
                  indices: Sequence[int] | None = None, blocks: Sequence[str] | None = None,
                  device: torch.device | str = "cpu") -> Iterator[BlockOutputs]:
    """Block outputs of a capture store, one sample at a time.

    Parameters
    ----------
    store : path or xarray.DataTree
        A capture store (see :func:`attnprobe.store.open_store`).
    case_ids : sequence of str, optional
        Cases to read, in this order (default: the finished samples in store order). The
        position of a case in this list is its :attr:`BlockOutputs.index`.
    indices : sequence of int, optional
        Positions in ``case_ids`` to read (e.g. this rank's share, :func:`attnprobe.dist.shard`).
    blocks : sequence of str, optional
        Blocks to read; default every block with ``out``.
    device : torch.device or str
        Where the tensors go.

    Yields
    ------
    BlockOutputs
        ``outputs[block]`` of shape ``(sample=1, x, y, z, channel)``, float32.

    Raises
    ------
    StoreError
        Unknown or unfinished case ids, blocks without ``out``.
    """
    tree = as_tree(store)
    with_out = store_blocks(tree)
    names = list(blocks) if blocks is not None else with_out
    available = set(with_out)
    missing = [b for b in names if b not in available]
    if missing:
        raise StoreError("blocks without 'out' in the store", expected=f"among {sorted(available)}",
                         got=str(missing[:4]))
    all_ids = [str(c) for c in tree.dataset["case"].values]
    done = np.asarray(tree["done"].values, dtype=bool)
    position = {c: i for i, c in enumerate(all_ids) if done[i]}
    ids = list(case_ids) if case_ids is not None else [c for c in all_ids if c in position]
    unknown = [c for c in ids if c not in position]
    if unknown:
        raise StoreError("cases not finished in the store", expected="case ids of done samples",
                         got=str(unknown[:4]), fix="re-run the capture to finish them")
    arrays = {b: _out_array(tree, b) for b in names}
    for index in range(len(ids)) if indices is None else indices:
        sample = position[ids[index]]
        outputs = {}
        for b, da in arrays.items():
            # isel on the lazily indexed array reads only this sample's chunks
            values = da.isel(sample=sample).transpose(*OUT_DIMS[1:]).values
            outputs[b] = torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)[None]
        yield BlockOutputs(index=int(index), case_id=ids[index], crop=0, outputs=outputs)


def model_blocks(model: nn.Module) -> list[str]:
    """Blocks of a model with an ``out`` tap, in model order."""
    from attnprobe.models.registry import adapter_for

    names = [t.block.name for t in adapter_for(model).taps(model) if t.kind == "out"]
    return sorted(names, key=_block_order)


def model_channels(model: nn.Module) -> dict[str, int]:
    """Channels of every block output of a model: block name -> ``C``."""
    from attnprobe.models.registry import adapter_for

    adapter = adapter_for(model)
    return {ref.name: int(adapter.block_hparams(model, ref)[2]) for ref in adapter.blocks(model)}


CropSource = int | Callable[[CaseLike], Sequence[Crop]] | Mapping[str, Sequence[Crop]] | None


def _crops_for(case: CaseLike, crops: CropSource, *, crop_size: Sequence[int] | None,
               seed: int) -> list[Crop]:
    shape = tuple(int(s) for s in case.image.shape[-3:])
    if crops is None or isinstance(crops, int):
        return draw_crops(shape, count=crops or 1, size=crop_size, seed=seed, key=case.case_id)
    if isinstance(crops, Mapping):
        if case.case_id not in crops:
            raise ConfigError(f"no crops given for case {case.case_id!r}",
                              expected="a crop list for every case", got=str(sorted(crops)[:4]))
        return list(crops[case.case_id])
    return list(crops(case))


def _input(case: CaseLike, crop: Crop, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    image = crop.apply(case.image)[None].to(device=device, dtype=torch.float32)
    mask = crop.apply(case.mask)[None].to(device=device)
    return image, mask


def _run(probe: Any, names: dict[str, str], image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    # no_grad around the forward only: a no_grad block spanning a generator's yields would
    # switch gradients off in the caller's code too
    with torch.no_grad():
        probe.run(image, mask=mask)
    return {block: probe.cache[tap].float() for tap, block in names.items()}


def _probe(model: nn.Module) -> tuple[Any, dict[str, str]]:
    from attnprobe.capture.probe import Probe

    probe = Probe(model, ["*.out"], keep=True)
    return probe, {t.name: t.block.name for t in probe.taps}


def live_outputs(model: nn.Module, cases: Sequence[CaseLike], *, crops: CropSource = 1,
                 crop_size: Sequence[int] | None = None, seed: int = 0,
                 indices: Sequence[int] | None = None,
                 device: torch.device | str = "cpu") -> Iterator[BlockOutputs]:
    """Block outputs of one model, run on prepared cases (or crops of them).

    Parameters
    ----------
    model : torch.nn.Module
        A model of a registered architecture; moved to ``device`` and put in eval mode.
    cases : sequence of CaseLike
        Prepared cases, ``image`` and ``mask`` of shape ``(1, x, y, z)``.
    crops : int, mapping or callable
        Crops per case: a count (drawn by :func:`draw_crops` from ``seed`` and the case id), a
        mapping case id -> crops, or a function case -> crops.
    crop_size : sequence of int, optional
        Crop size for drawn crops (see :func:`draw_crops`).
    seed : int
        Crop seed.
    indices : sequence of int, optional
        Positions in ``cases`` to run (e.g. this rank's share).
    device : torch.device or str
        Where the model runs; outputs stay there.

    Yields
    ------
    BlockOutputs
        One per (case, crop); ``outputs[block]`` of shape ``(sample=1, x, y, z, channel)``.

    Notes
    -----
    The model stays hooked while the iterator is alive; exhaust or close it before running
    the model elsewhere.
    """
    model = model.to(device).eval()
    probe, names = _probe(model)
    with probe:
        for index in range(len(cases)) if indices is None else indices:
            case = cases[index]
            for k, crop in enumerate(_crops_for(case, crops, crop_size=crop_size, seed=seed)):
                outputs = _run(probe, names, *_input(case, crop, device))
                yield BlockOutputs(index=int(index), case_id=case.case_id, crop=k, outputs=outputs)


def paired_live_outputs(ref_model: nn.Module, tgt_model: nn.Module | None, ref_cases: Sequence[CaseLike],
                        tgt_cases: Sequence[CaseLike] | None = None, *, crops: int = 1,
                        crop_size: Sequence[int] | None = None, seed: int = 0,
                        indices: Sequence[int] | None = None,
                        device: torch.device | str = "cpu") -> Iterator[tuple[BlockOutputs, BlockOutputs]]:
    """Block outputs of two models on identical inputs, or of one model on two input sets.

    Parameters
    ----------
    ref_model : torch.nn.Module
        Reference model (e.g. the pretrained one).
    tgt_model : torch.nn.Module or None
        Target model (e.g. the fine-tuned one); ``None`` or ``ref_model`` itself compares the
        reference model with itself (then ``tgt_cases`` should differ from ``ref_cases``).
    ref_cases : sequence of CaseLike
        Inputs of the reference model.
    tgt_cases : sequence of CaseLike, optional
        Inputs of the target model, paired with ``ref_cases`` by position and required to
        carry the same case ids and volume sizes; default ``ref_cases``.
    crops : int
        Crops per case. They are drawn ONCE per case (from ``seed`` and the case id) and the
        same boxes are cut from the reference and the target inputs.
    crop_size, seed, indices, device
        As in :func:`live_outputs`.

    Yields
    ------
    tuple of BlockOutputs
        ``(ref, tgt)`` for each (case, crop), with equal ``index``, ``case_id`` and ``crop``.
    """
    tgt_model = ref_model if tgt_model is None else tgt_model
    same_inputs = tgt_cases is None or tgt_cases is ref_cases
    tgt_cases = ref_cases if tgt_cases is None else tgt_cases
    if len(tgt_cases) != len(ref_cases):
        raise ConfigError("the two input sets have different lengths",
                          expected="one target case per reference case",
                          got=f"{len(ref_cases)} and {len(tgt_cases)}",
                          fix="pair them by case id first (attnprobe.metrics.reuse.pair_by_case_id)")
    ref_model = ref_model.to(device).eval()
    tgt_model = tgt_model.to(device).eval()
    with ExitStack() as stack:
        ref_probe, ref_names = _probe(ref_model)
        stack.enter_context(ref_probe)
        if tgt_model is ref_model:
            tgt_probe, tgt_names = ref_probe, ref_names
        else:
            tgt_probe, tgt_names = _probe(tgt_model)
            stack.enter_context(tgt_probe)
        for index in range(len(ref_cases)) if indices is None else indices:
            ref_case, tgt_case = ref_cases[index], tgt_cases[index]
            if ref_case.case_id != tgt_case.case_id:
                raise ConfigError("the two input sets are not paired",
                                  expected=f"case {ref_case.case_id!r} at position {index} in both",
                                  got=f"{tgt_case.case_id!r} in the target set",
                                  fix="pair them by case id first (attnprobe.metrics.reuse.pair_by_case_id)")
            if tuple(ref_case.image.shape[-3:]) != tuple(tgt_case.image.shape[-3:]):
                raise ShapeError(f"case {ref_case.case_id!r} has different sizes in the two input sets",
                                 expected=str(tuple(ref_case.image.shape[-3:])),
                                 got=str(tuple(tgt_case.image.shape[-3:])),
                                 fix="prepare both input sets with the same fixed --roi")
            boxes = _crops_for(ref_case, crops, crop_size=crop_size, seed=seed)  # drawn once
            for k, crop in enumerate(boxes):
                ref_in = _input(ref_case, crop, device)
                ref_out = _run(ref_probe, ref_names, *ref_in)
                if tgt_model is ref_model and same_inputs:
                    tgt_out = ref_out
                else:
                    tgt_in = ref_in if same_inputs else _input(tgt_case, crop, device)
                    tgt_out = _run(tgt_probe, tgt_names, *tgt_in)
                yield (BlockOutputs(int(index), ref_case.case_id, k, ref_out),
                       BlockOutputs(int(index), tgt_case.case_id, k, tgt_out))


# --------------------------------------------------------------------------- units


def pooled_features(out: torch.Tensor, *, grid: int | Sequence[int] = 8, pooling: Pooling = "correct",
                    small_grid: SmallGrid = "keep") -> torch.Tensor:
    """One feature vector per sample of a block output.

    Parameters
    ----------
    out : torch.Tensor, shape (sample, x, y, z, channel)
        A channel-last block output.
    grid : int or sequence of int
        Adaptive average pooling of ``x, y, z`` to this grid, found by name, never by position.
    pooling : {"correct", "paper-swin-axes"}
        ``"paper-swin-axes"`` reproduces the paper's wrong-axis pooling on request
        (:func:`attnprobe.metrics.pooling.pool_examples`).
    small_grid : {"keep", "stretch"}
        An axis shorter than its grid keeps its size, or is stretched to it as the paper did.

    Returns
    -------
    torch.Tensor, shape (sample, features)
        ``channel * gx * gy * gz`` features for ``pooling="correct"``.
    """
    return pool_examples(out, OUT_DIMS, grid=grid, pooling=pooling, small_grid=small_grid)


def token_features(out: torch.Tensor, *, grid: Sequence[int] | None = None) -> torch.Tensor:
    """Every token of a block output an example.

    Parameters
    ----------
    out : torch.Tensor, shape (sample, x, y, z, channel)
        A channel-last block output.
    grid : sequence of int, optional
        Pool ``x, y, z`` to this token grid first (used to compare a block with one of a
        coarser stage: both then describe the same regions). ``None`` keeps every token.

    Returns
    -------
    torch.Tensor, shape (sample * gx * gy * gz, channel)
        Rows in ``(sample, x, y, z)`` row-major order.
    """
    if grid is None or tuple(grid) == tuple(out.shape[1:4]):
        return tokens_as_examples(out, OUT_DIMS)
    g = _triple(grid, "token grid")
    pooled = pool_examples(out, OUT_DIMS, grid=g)  # (sample, channel * gx * gy * gz)
    sizes = tuple(min(a, b) for a, b in zip(g, out.shape[1:4], strict=True))
    pooled = pooled.reshape(out.shape[0], out.shape[-1], *sizes)
    return tokens_as_examples(pooled, ("sample", "channel", *SPATIAL))
