"""Edits of a forward pass: frozen specs of what an intervention changes, and the tensor functions.

Two sites per block, named like the probe's taps (``docs/ablation.md`` has the meaning of each):

- :class:`MaskKeys` at ``stage{s}.block{b}.attn``: the logits of keys of a padding kind get
  ``-inf`` *before* the softmax, so the softmax itself renormalises every row over the keys
  left (not a rescale of the probabilities after it). A window in which every key would be
  masked (a window of padding only) is left as it is: its rows would otherwise be NaN.
- :class:`ReplaceTokens` at ``stage{s}.block{b}.out``: the block's output tokens of a kind
  (input padding, or real) are replaced by zero, by the mean real token of the sample, or by
  the values of a second forward (patching). Block outputs live on the stage grid, where
  window padding does not exist.

The specs only say *what*; :class:`~attnprobe.capture.intervene.Intervene` applies them with
hooks. The functions here are pure and act on plain tensors, so they are testable by hand.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from attnprobe.errors import ConfigError, ShapeError, check_option
from attnprobe.tokens import INPUT_PAD, PADDING_KINDS, REAL, WINDOW_PAD, PaddingKind

__all__ = [
    "TokenKind",
    "Replacement",
    "MaskKeys",
    "ReplaceTokens",
    "Edit",
    "Intervention",
    "key_mask",
    "mask_logits",
    "replace_tokens",
]

TokenKind = Literal["input", "real"]
Replacement = Literal["zero", "mean-real", "patch"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("input", "real")
REPLACEMENTS: tuple[Replacement, ...] = ("zero", "mean-real", "patch")

_KEY_CODES: dict[str, tuple[int, ...]] = {"input": (INPUT_PAD,), "window": (WINDOW_PAD,),
                                          "all": (INPUT_PAD, WINDOW_PAD)}
_TOKEN_CODES: dict[str, int] = {"input": INPUT_PAD, "real": REAL}


def _check_glob(blocks: object) -> None:
    if not isinstance(blocks, str) or not blocks:
        raise ConfigError("bad block glob", expected="a glob over block names such as 'stage1.*' or '*'",
                          got=repr(blocks))


@dataclass(frozen=True, kw_only=True)
class MaskKeys:
    """Mask the keys of a padding kind before the softmax of the matching blocks.

    Parameters
    ----------
    blocks
        Glob over block names (``stage{s}.block{b}``), e.g. ``"stage2.*"`` or ``"*"``.
    kind
        ``"input"`` (input padding), ``"window"`` (window padding) or ``"all"`` (both).
    """

    blocks: str = "*"
    kind: PaddingKind = "all"

    def __post_init__(self) -> None:
        _check_glob(self.blocks)
        check_option("key kind", self.kind, PADDING_KINDS)

    site = "attn"


@dataclass(frozen=True, kw_only=True, eq=False)
class ReplaceTokens:
    """Replace the output tokens of one kind of the matching blocks.

    Parameters
    ----------
    blocks
        Glob over block names (``stage{s}.block{b}``).
    kind
        ``"input"``: tokens of input padding; ``"real"``: real tokens (on the stage grid).
    value
        ``"zero"``; ``"mean-real"``: the mean over the sample's real tokens, per channel (a
        sample without a real token is left as it is); ``"patch"``: the same positions of
        ``source``.
    source
        For ``"patch"``: block name -> output ``(sample, x, y, z, channel)`` of a second
        forward (e.g. ``Probe.cache`` of the same case at another padding, keys without the
        ``.out`` suffix or with it). The shapes must be the edited forward's.
    """

    blocks: str = "*"
    kind: TokenKind = "input"
    value: Replacement = "mean-real"
    source: Mapping[str, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        _check_glob(self.blocks)
        check_option("token kind", self.kind, TOKEN_KINDS)
        check_option("replacement", self.value, REPLACEMENTS)
        if (self.value == "patch") != (self.source is not None):
            raise ConfigError("a patch needs a source, and only a patch takes one",
                              expected="value='patch' with source={block: tensor}, or another value without",
                              got=f"value={self.value!r}, source={'given' if self.source is not None else None}",
                              fix="capture the source forward's '*.out' taps with a Probe and pass probe.cache")

    site = "out"

    def source_for(self, block: str) -> torch.Tensor:
        """The patch values of one block; a clear error when the source lacks it."""
        if self.source is None:  # __post_init__ refuses this; kept for objects built around it
            raise ConfigError("a patch edit has no source", expected="source= the outputs of a second forward",
                              got="None", fix="pass ReplaceTokens(..., value='patch', source=probe.cache)")
        for key in (block, f"{block}.out"):
            if key in self.source:
                return self.source[key]
        raise ConfigError(f"the patch source has no values for {block}",
                          expected=f"a key {block!r} or {block + '.out'!r}",
                          got=f"{sorted(self.source)[:4]}",
                          fix="capture the source forward with taps covering every patched block")


Edit = MaskKeys | ReplaceTokens


@dataclass(frozen=True, kw_only=True, eq=False)
class Intervention:
    """A named list of edits applied together to one forward (empty: the plain forward)."""

    name: str
    edits: tuple[Edit, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("an intervention needs a name", expected="a non-empty string", got=repr(self.name))
        bad = [e for e in self.edits if not isinstance(e, (MaskKeys, ReplaceTokens))]
        if bad:
            raise ConfigError("not an edit", expected="MaskKeys or ReplaceTokens", got=type(bad[0]).__name__)
        object.__setattr__(self, "edits", tuple(self.edits))

    def edits_for(self, block: str, site: str) -> list[Edit]:
        """The edits at one site (``attn`` or ``out``) of one block, in the order given."""
        return [e for e in self.edits if e.site == site and fnmatch.fnmatchcase(block, e.blocks)]


def key_mask(kinds: torch.Tensor, kind: PaddingKind) -> torch.Tensor:
    """Which keys of each window to mask.

    Parameters
    ----------
    kinds : (sample, window, token) uint8
        Token kinds of one block in window order.
    kind
        Padding kind whose keys are masked.

    Returns
    -------
    torch.Tensor
        ``(sample, window, key)`` bool; all False in windows where every key is of ``kind``
        (masking them all would leave no key to normalise over).
    """
    masked = torch.zeros_like(kinds, dtype=torch.bool)
    for code in _KEY_CODES[kind]:
        masked |= kinds == code
    return masked & ~masked.all(dim=-1, keepdim=True)


def mask_logits(logits: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Set the logits of masked keys to ``-inf`` (a new tensor; the input is not changed).

    Parameters
    ----------
    logits : (sample*window, head, query, key)
        Pre-softmax scores as the attention module hands them to its softmax.
    masked : (sample, window, key) bool
        From :func:`key_mask`.

    Returns
    -------
    torch.Tensor
        Same shape and dtype; bit-identical to ``logits`` where nothing is masked.
    """
    bw, heads, n_q, n_k = logits.shape
    b, w, n = masked.shape
    if b * w != bw or n != n_k:
        raise ShapeError("key mask does not fit the attention logits",
                         expected=f"(sample, window, {n_k}) with sample*window = {bw}",
                         got=str(tuple(masked.shape)), fix="build it from the kinds of the same block and batch")
    rows = masked.reshape(bw, 1, 1, n_k).to(logits.device)
    return logits.masked_fill(rows, float("-inf"))


def replace_tokens(x: torch.Tensor, kinds: torch.Tensor, *, kind: TokenKind, value: Replacement,
                   source: torch.Tensor | None = None) -> torch.Tensor:
    """Replace the tokens of one kind on a stage grid (a new tensor).

    Parameters
    ----------
    x : (sample, x, y, z, channel)
        Block output, channel-last.
    kinds : (sample, x, y, z) uint8
        Token kinds of the stage grid (REAL or INPUT_PAD).
    kind, value
        As in :class:`ReplaceTokens`.
    source : (sample, x, y, z, channel), optional
        Patch values for ``value="patch"``.

    Returns
    -------
    torch.Tensor
        ``x`` with the selected tokens replaced; equal to ``x`` when none is selected.
    """
    if tuple(kinds.shape) != tuple(x.shape[:-1]):
        raise ShapeError("token kinds do not fit the block output", expected=str(tuple(x.shape[:-1])),
                         got=str(tuple(kinds.shape)), fix="use the stage grid kinds of the same batch")
    kinds = kinds.to(x.device)
    chosen = (kinds == _TOKEN_CODES[kind])[..., None]
    if value == "zero":
        fill = torch.zeros((), dtype=x.dtype, device=x.device)
    elif value == "mean-real":
        real = (kinds == REAL)[..., None].to(x.dtype)
        count = real.sum(dim=(1, 2, 3), keepdim=True)
        fill = (x * real).sum(dim=(1, 2, 3), keepdim=True) / count.clamp(min=1)
        chosen = chosen & (count > 0)  # no real token in the sample: nothing to average, keep x
    else:
        if source is None or tuple(source.shape) != tuple(x.shape):
            raise ShapeError("patch source does not fit the block output", expected=str(tuple(x.shape)),
                             got=str(None if source is None else tuple(source.shape)),
                             fix="patch from a forward of the same input size and batch")
        fill = source.to(device=x.device, dtype=x.dtype)
    return torch.where(chosen, fill, x)
