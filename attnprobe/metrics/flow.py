"""Attention flow between real and padding tokens, and the attention dilution index (docs/definitions.md).

Inputs are the attention probabilities of one block and the token kinds in the same window
order (:mod:`attnprobe.tokens`). Everything is vectorised over windows and any leading batch
dims and runs on the device of the probabilities. The only NaN it returns is ``a_pr``/``a_pp``
of a sample without padding queries (see below); definition choices are listed in
``docs/conventions.md``.

Token classes
-------------
Every token is ``REAL``, ``INPUT_PAD`` or ``WINDOW_PAD``. For ``padding`` =

- ``"input"``: P = input-padding tokens,
- ``"window"``: P = window-padding tokens,
- ``"all"``: P = both padding kinds,

and R = real tokens in every case. With ``"input"`` or ``"window"`` the tokens of the *other*
padding kind (call them O) belong to neither class: as queries they enter no average, as keys
they enter no ``A_qr``/``A_qp`` sum but do enter the full entropy ``H`` (docs/definitions.md: ``H`` sums all
keys). Consequences, all exact: ``A_rr + A_rp = 1 - (attention of real queries to O)``; the
``"input"`` and ``"window"`` values of ``a_rp``, ``h_rp`` and ``adi`` add up to the ``"all"``
value; ``a_rr``, ``h`` and ``n_real_queries`` do not depend on ``padding``.

Definitions (one sample)
-----------------------
With ``ᾱ`` the head-averaged probabilities (or one head's, for ``heads="per-head"``):

- ``a_qk = mean_{i in q} sum_{j in k, same window} ᾱ_ij`` for q, k in {r, p}, queries of all
  windows pooled; ``sfr = a_rr``. Real queries only exist in windows that hold a real token.
  Padding queries (``a_pr``, ``a_pp``) are those of every window for
  ``pad_queries="all-windows"`` (the paper's definition, the default), or only those of
  windows that hold a real token for ``pad_queries="real-windows"`` (attnprobe's earlier
  definition: a window without a real token then drops out of every average).
- ``H_i = -sum_j ᾱ_ij log ᾱ_ij`` and ``H^rp_i = -sum_{j in P} ᾱ_ij log ᾱ_ij`` (natural log,
  0 log 0 = 0); ``h = mean_{i in R} H_i``, ``h_rp = mean_{i in R} H^rp_i``.
- ``adi = sum_{i in R} H^rp_i / sum_{i in R} H_i`` (ratio of means).

Empty query sets
----------------
- ``a_pr = a_pp = NaN`` when a sample has no padding query (under the ``pad_queries`` rule):
  there is no value, and a 0 would pull stage and model means down
  (:mod:`attnprobe.metrics.aggregate` skips NaN).
- ``adi = 0`` when ``sum H`` is 0 (no padding, or one-hot attention): a block that sees no
  padding spends no attention on it. ``a_rr = a_rp = h = h_rp = 0`` when a sample has no real
  query at all (an input without a real voxel), kept as 0 so real-query metrics never NaN.
- ``n_real_queries`` / ``n_pad_queries`` count the queries behind the values and serve as
  token weights.
- Precision: element-wise work in float32 (float64 if the input is float64); within a
  window the sum over queries of one class in the work dtype (one small GEMM), every sum
  after that — over keys of a class, over windows — in float64 (float32 on MPS, which has
  no float64). Results are float64, within ~1e-7 relative of a float64 computation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch

from attnprobe.errors import ConfigError, DataError, ShapeError, check_option
from attnprobe.metrics.cka_base import _tf32_off
from attnprobe.tokens import INPUT_PAD, PADDING_KINDS, REAL, WINDOW_PAD, PaddingKind

__all__ = [
    "METRICS",
    "COUNTS",
    "HeadMode",
    "PadQueries",
    "PAD_QUERY_MODES",
    "FlowResult",
    "FlowAccumulator",
    "accumulators_to",
    "attention_flow",
]

HeadMode = Literal["mean", "per-head"]
HEAD_MODES: tuple[HeadMode, ...] = ("mean", "per-head")
PadQueries = Literal["all-windows", "real-windows"]
PAD_QUERY_MODES: tuple[PadQueries, ...] = ("all-windows", "real-windows")

METRICS: tuple[str, ...] = ("adi", "sfr", "a_rr", "a_rp", "a_pr", "a_pp", "h", "h_rp")
"""Names of the metric fields of :class:`FlowResult`, in report order."""

COUNTS: tuple[str, ...] = ("n_real_queries", "n_pad_queries")
"""Names of the count fields of :class:`FlowResult`."""

# Token classes are indexed by their kind code: column c of a one-hot is kind c.
_N_CLASSES = 3
# Queries are summed in two window groups, so one pass serves both pad_queries rules.
_WITH_REAL, _WITHOUT_REAL = 0, 1
_PAD_CLASSES: dict[str, list[int]] = {
    "input": [INPUT_PAD],
    "window": [WINDOW_PAD],
    "all": [INPUT_PAD, WINDOW_PAD],
}


@dataclass(frozen=True, eq=False)
class FlowResult:
    """Attention flow of one block, per sample.

    Metric tensors have shape ``(*batch)`` for ``heads="mean"`` and ``(*batch, head)`` for
    ``heads="per-head"``, dtype float64; count tensors have shape ``(*batch)``, dtype int64.
    ``*batch`` are the leading dims of the input (e.g. ``sample``).

    Attributes
    ----------
    a_rr, a_rp, a_pr, a_pp
        Flow matrix entries: mean over queries of the first class of the attention mass on
        keys of the second class (r = real, p = padding). ``a_pr``/``a_pp`` are NaN where
        ``n_pad_queries`` is 0.
    sfr
        Signal fidelity ratio, equal to ``a_rr``.
    h, h_rp
        Mean over real queries of the full attention entropy and of its padding-key part (nats).
    adi
        Attention dilution index ``sum_R H^rp / sum_R H``, in [0, 1].
    n_real_queries
        Real queries counted (all windows).
    n_pad_queries
        Padding queries counted: of every window (``pad_queries="all-windows"``) or only of
        windows that hold a real token (``"real-windows"``).
    padding, heads, pad_queries
        The options the result was computed with.
    """

    a_rr: torch.Tensor
    a_rp: torch.Tensor
    a_pr: torch.Tensor
    a_pp: torch.Tensor
    sfr: torch.Tensor
    h: torch.Tensor
    h_rp: torch.Tensor
    adi: torch.Tensor
    n_real_queries: torch.Tensor
    n_pad_queries: torch.Tensor
    padding: PaddingKind
    heads: HeadMode
    pad_queries: PadQueries = "all-windows"

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Metric and count tensors by name (keys of :data:`METRICS` then the counts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _OPTION_FIELDS}


_OPTION_FIELDS = ("padding", "heads", "pad_queries")


def check_reduction_options(heads: object, padding_kinds: Sequence[object],
                            pad_queries: object = "all-windows") -> None:
    """Check the ``heads``, ``padding_kinds`` and ``pad_queries`` options shared by the flow
    reducers (online and offline)."""
    check_option("heads", heads, HEAD_MODES)
    check_option("pad_queries", pad_queries, PAD_QUERY_MODES)
    bad = [k for k in padding_kinds if k not in PADDING_KINDS]
    if bad or not padding_kinds:
        raise ConfigError("unknown padding kinds", expected=f"a non-empty subset of {PADDING_KINDS}",
                          got=repr(list(padding_kinds)))


def check_kind_codes(kinds: torch.Tensor) -> None:
    """Raise :class:`DataError` if ``kinds`` holds a code other than REAL, INPUT_PAD, WINDOW_PAD.

    One device sync; a bad code would otherwise vanish silently from every class.
    """
    bad_mask = (kinds < REAL) | (kinds > WINDOW_PAD)
    if bool(bad_mask.any()):
        bad = torch.unique(kinds[bad_mask]).tolist()
        raise DataError(
            "unknown token kind codes",
            expected="codes in {0 (real), 1 (input padding), 2 (window padding)}",
            got=f"codes {bad[:5]}",
            fix="build kinds with the constants in attnprobe.tokens",
        )


# On the CPU, windows are reduced in pieces of about this much work copy (stays in cache).
_CPU_PIECE_BYTES = 2 << 20


def _sum_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; float32 sums are still far inside the 1e-5 online/offline budget.
    return torch.float32 if device.type == "mps" else torch.float64


def _check_inputs(probs: torch.Tensor, kinds: torch.Tensor, *, check_codes: bool = True) -> torch.Tensor:
    """Validate shapes/dtypes/values; return ``kinds`` on ``probs``' device, expanded to
    ``(*batch, window, N)``. ``check_codes=False`` skips the value check (a device sync)."""
    if not isinstance(probs, torch.Tensor) or not isinstance(kinds, torch.Tensor):
        raise ShapeError(
            "probs and kinds must be torch tensors",
            got=f"{type(probs).__name__}, {type(kinds).__name__}",
            fix="convert with torch.as_tensor",
        )
    if probs.ndim < 4 or probs.shape[-1] != probs.shape[-2]:
        raise ShapeError(
            "attention probabilities have the wrong shape",
            expected="(..., window, head, query, key) with query == key",
            got=str(tuple(probs.shape)),
            fix="reshape the hook output (B*nW, head, N, N) to (B, nW, head, N, N)",
        )
    if not probs.is_floating_point():
        raise ShapeError("attention probabilities must be floating point", got=str(probs.dtype))
    if kinds.dtype == torch.bool or kinds.is_floating_point() or kinds.is_complex():
        raise ShapeError(
            "token kinds must be an integer tensor",
            expected="uint8 codes REAL=0, INPUT_PAD=1, WINDOW_PAD=2",
            got=str(kinds.dtype),
        )
    *lead, n_win, _, n_tok, _ = probs.shape
    want = (*lead, n_win, n_tok)
    ok = kinds.ndim >= 2 and tuple(kinds.shape[-2:]) == (n_win, n_tok)
    if ok:
        try:
            torch.broadcast_shapes(tuple(kinds.shape), want)
        except RuntimeError:
            ok = False
        ok = ok and kinds.ndim <= len(want)
    if not ok:
        raise ShapeError(
            "token kinds do not match the attention probabilities",
            expected=f"{want} (leading dims may be omitted to broadcast)",
            got=str(tuple(kinds.shape)),
            fix="push the block's token kinds through the same pad/roll/partition as the features",
        )
    kinds = kinds.to(probs.device)
    if check_codes:
        # One sync per call; cheap next to the forward, and a bad code would otherwise vanish silently.
        check_kind_codes(kinds)
    return kinds.expand(want)


def _pieces(n_win: int, per_window_bytes: int, device: torch.device) -> int:
    """Windows per piece: on the CPU a piece's work copy fits in cache; elsewhere all at once."""
    if device.type != "cpu":
        return max(1, n_win)
    return max(1, min(n_win, _CPU_PIECE_BYTES // max(per_window_bytes, 1)))


def _block_sums(
    probs: torch.Tensor, kinds: torch.Tensor, heads: HeadMode
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sufficient statistics of one chunk of windows.

    Returns
    -------
    flow : (*batch, head', group, 3, 3)
        Sum over queries of class c of the mass on keys of class d, per window group
        (``group`` 0: windows holding a real token, 1: windows holding none).
    ent : (*batch, head', 3)
        Sum over real queries of ``-sum_{j in class d} a_ij log a_ij``.
    count : (*batch, group, 3)
        Queries of class c per window group (int64).

    ``head'`` is 1 for ``heads="mean"``. Class index = kind code.

    Per window, both sums are ``Q^T A K`` with one-hot query rows ``Q`` (N, 6: group x
    class) and key columns ``K`` (N, 3): ``Q^T A`` in the work dtype, the rest (and the sum
    over windows) in ``sum_dtype``. On the CPU the windows go in pieces whose work copy stays
    in cache, so the head average, its ``x log x`` and both GEMMs read it from there.
    """
    sum_dtype = _sum_dtype(probs.device)
    work = torch.float64 if probs.dtype == torch.float64 and sum_dtype == torch.float64 else torch.float32
    *lead, n_win, n_head, n_tok, _ = probs.shape
    hh = 1 if heads == "mean" else n_head

    classes = torch.arange(_N_CLASSES, device=probs.device, dtype=kinds.dtype)
    key_onehot = kinds.unsqueeze(-1) == classes  # (*batch, window, N, 3) bool
    has_real = key_onehot[..., REAL].any(dim=-1, keepdim=True)  # (*batch, window, 1)
    # Queries of windows with and without a real token are kept apart: the pad_queries rule
    # decides at result() time whether the second group counts.
    groups = torch.stack([has_real, ~has_real], dim=-1)  # (*batch, window, 1, group)
    query_onehot = key_onehot.unsqueeze(-2) & groups.unsqueeze(-1)  # (*batch, window, N, group, 3)
    count = query_onehot.sum(dim=(-4, -3))  # int64 (*batch, group, 3)

    # Row g*3 + c of `rows` picks the queries of class c in window group g; row REAL (group 0,
    # class REAL) is every real query, as every real query sits in a window with a real token.
    rows = query_onehot.flatten(-2).transpose(-1, -2).to(work).unsqueeze(-3)  # (*batch, window, 1, 6, N)
    cols = key_onehot.to(sum_dtype).unsqueeze(-3)  # (*batch, window, 1, N, 3)
    flow_w = torch.empty((*lead, n_win, hh, 2 * _N_CLASSES, _N_CLASSES), dtype=sum_dtype, device=probs.device)
    ent_w = torch.empty((*lead, n_win, hh, 1, _N_CLASSES), dtype=sum_dtype, device=probs.device)

    step = _pieces(n_win, math.prod(lead) * hh * n_tok * n_tok * torch.finfo(work).bits // 8, probs.device)
    on_cpu = probs.device.type == "cpu"
    buf = torch.empty((*lead, min(step, n_win), hh, n_tok, n_tok), dtype=work, device=probs.device)
    logs = torch.empty_like(buf) if on_cpu else buf
    tiny = torch.finfo(work).tiny
    with _tf32_off(probs.device):  # a float32 GEMM on CUDA keeps its 24 bits even where TF32 is on
        for w0 in range(0, n_win, step):
            part = probs[..., w0:w0 + step, :, :, :]
            attn = buf[..., :part.shape[-4], :, :, :]
            if heads == "mean":
                # Heads are averaged before anything non-linear (docs/definitions.md); fp16/bf16
                # heads are upcast by the first copy and added in the work dtype.
                if part.dtype == work and n_head > 1:
                    torch.add(part[..., :1, :, :], part[..., 1:2, :, :], out=attn)
                else:
                    attn.copy_(part[..., :1, :, :])
                for h in range(1 + (part.dtype == work), n_head):
                    attn.add_(part[..., h:h + 1, :, :])
                attn.div_(n_head)
            else:
                attn.copy_(part)
            q, k = rows[..., w0:w0 + step, :, :, :], cols[..., w0:w0 + step, :, :, :]
            flow_w[..., w0:w0 + step, :, :, :] = torch.matmul(torch.matmul(q, attn).to(sum_dtype), k)
            if on_cpu:
                # x log x with 0 log 0 = 0 as x times the vectorised log of max(x, tiny): xlogy is
                # scalar code on the CPU, several times slower (the two differ by an ulp of the log).
                torch.mul(attn, torch.clamp_min(attn, tiny, out=logs[..., :attn.shape[-4], :, :, :]).log_(), out=attn)
            else:
                torch.special.xlogy(attn, attn, out=attn)
            ent_w[..., w0:w0 + step, :, :, :] = torch.matmul(torch.matmul(q[..., REAL:REAL + 1, :], attn).to(sum_dtype), k)

    flow = flow_w.sum(dim=-4).unflatten(-2, (2, _N_CLASSES))  # (*batch, head', group, 3, 3)
    ent = -ent_w.sum(dim=-4).squeeze(-2)  # (*batch, head', 3)
    return flow, ent, count


class FlowAccumulator:
    """Attention flow summed chunk by chunk over windows, for stores that do not fit in memory.

    Feed the windows of one block in any split and order with :meth:`update`; :meth:`result`
    then equals :func:`attention_flow` on all windows at once up to rounding (float32 GEMMs
    may sum in another order for another batch of windows: ~1e-9 relative). The state holds all three token classes, so one pass serves every
    ``padding`` kind and both ``pad_queries`` rules: call ``result(padding=...)`` once per kind.

    Parameters
    ----------
    padding
        Default padding kind for :meth:`result`.
    heads
        ``"mean"``: average heads first; ``"per-head"``: keep a trailing head dim.
    pad_queries
        Default padding-query rule for :meth:`result`: ``"all-windows"`` (the paper's: the
        padding queries of every window) or ``"real-windows"`` (only windows holding a real
        token). Only ``a_pr``, ``a_pp`` and ``n_pad_queries`` depend on it.

    Examples
    --------
    >>> acc = FlowAccumulator(heads="mean")
    >>> for w0 in range(0, n_windows, 64):                      # doctest: +SKIP
    ...     acc.update(probs[:, w0:w0 + 64], kinds[:, w0:w0 + 64])
    >>> {k: acc.result(padding=k).adi for k in ("input", "window", "all")}  # doctest: +SKIP
    """

    def __init__(self, *, padding: PaddingKind = "all", heads: HeadMode = "mean",
                 pad_queries: PadQueries = "all-windows") -> None:
        check_option("padding", padding, PADDING_KINDS)
        check_option("heads", heads, HEAD_MODES)
        check_option("pad_queries", pad_queries, PAD_QUERY_MODES)
        self.padding: PaddingKind = padding
        self.heads: HeadMode = heads
        self.pad_queries: PadQueries = pad_queries
        self._flow: torch.Tensor | None = None
        self._ent: torch.Tensor | None = None
        self._count: torch.Tensor | None = None

    def update(self, probs: torch.Tensor, kinds: torch.Tensor, *, trusted_kinds: bool = False) -> FlowAccumulator:
        """Add a chunk of windows.

        Parameters
        ----------
        probs : (*batch, window, head, query, key) floating tensor
            Attention probabilities of a chunk of windows (any float dtype).
        kinds : (*batch, window, N) integer tensor
            Token kinds of the same windows in the same order; leading dims may be omitted
            (broadcast). Moved to ``probs``' device.
        trusted_kinds
            Skip checking the kind codes (a device sync per call). For kinds made by
            :mod:`attnprobe.capture.geometry`, as in the capture hook, which runs per block.

        Returns
        -------
        FlowAccumulator
            ``self``, so calls chain.
        """
        kinds = _check_inputs(probs, kinds, check_codes=not trusted_kinds)
        flow, ent, count = _block_sums(probs, kinds, self.heads)
        # the three sums are set together; testing all three lets the type checker see it
        if self._flow is None or self._ent is None or self._count is None:
            self._flow, self._ent, self._count = flow, ent, count
            return self
        if flow.shape != self._flow.shape:
            raise ShapeError(
                "chunk does not match the chunks accumulated so far",
                expected=f"batch/head dims {tuple(self._flow.shape[:-3])}",
                got=str(tuple(flow.shape[:-3])),
                fix="split a block along the window axis only",
            )
        dev = self._flow.device
        self._flow = self._flow + flow.to(dev)
        self._ent = self._ent + ent.to(dev)
        self._count = self._count + count.to(dev)
        return self

    def merge(self, other: FlowAccumulator) -> FlowAccumulator:
        """Add the state of another accumulator over other windows of the same block; ``self``."""
        if other.heads != self.heads:
            raise ConfigError("cannot merge accumulators with different head modes",
                              expected=self.heads, got=other.heads)
        if other._flow is None or other._ent is None or other._count is None:
            return self
        if self._flow is None or self._ent is None or self._count is None:
            self._flow, self._ent, self._count = other._flow, other._ent, other._count
            return self
        if other._flow.shape != self._flow.shape:
            raise ShapeError("accumulators have different batch/head dims",
                             expected=str(tuple(self._flow.shape[:-3])), got=str(tuple(other._flow.shape[:-3])))
        dev = self._flow.device
        self._flow = self._flow + other._flow.to(dev)
        self._ent = self._ent + other._ent.to(dev)
        self._count = self._count + other._count.to(dev)
        return self

    def result(self, *, padding: PaddingKind | None = None, pad_queries: PadQueries | None = None) -> FlowResult:
        """Finalise the sums into per-sample metrics.

        Parameters
        ----------
        padding
            Which tokens count as padding; defaults to the constructor's.
        pad_queries
            Which padding queries ``a_pr``/``a_pp`` average over (``"all-windows"`` or
            ``"real-windows"``); defaults to the constructor's.

        Returns
        -------
        FlowResult
            Metrics of shape ``(*batch)`` or ``(*batch, head)``; see the module docstring
            for empty query sets (NaN ``a_pr``/``a_pp``, 0 elsewhere).
        """
        padding = self.padding if padding is None else padding
        pad_queries = self.pad_queries if pad_queries is None else pad_queries
        check_option("padding", padding, PADDING_KINDS)
        check_option("pad_queries", pad_queries, PAD_QUERY_MODES)
        if self._flow is None or self._ent is None or self._count is None:
            raise DataError("no windows were accumulated", fix="call update() before result()")
        ent = self._ent
        flow, count = self._flow[..., _WITH_REAL, :, :], self._count[..., _WITH_REAL, :]
        if pad_queries == "all-windows":
            pad_flow, pad_count = self._flow.sum(dim=-3), self._count.sum(dim=-2)
        else:
            pad_flow, pad_count = flow, count
        pad = _PAD_CLASSES[padding]

        n_real = count[..., REAL]
        n_pad = pad_count[..., pad].sum(dim=-1)

        def mean(total: torch.Tensor, n: torch.Tensor, empty: float) -> torch.Tensor:
            n = n.unsqueeze(-1).to(total.dtype)  # broadcast over the head' dim
            return torch.where(n > 0, total / n.clamp_min(1), torch.full_like(total, empty))

        a_rr = mean(flow[..., REAL, REAL], n_real, 0.0)
        a_rp = mean(flow[..., REAL, pad].sum(dim=-1), n_real, 0.0)
        # No padding query: A_pr and A_pp have no value (NaN), not 0.
        a_pr = mean(pad_flow[..., pad, REAL].sum(dim=-1), n_pad, math.nan)
        a_pp = mean(pad_flow[..., pad, :][..., pad].sum(dim=(-2, -1)), n_pad, math.nan)
        h_all = ent.sum(dim=-1)
        h_pad = ent[..., pad].sum(dim=-1)
        h = mean(h_all, n_real, 0.0)
        h_rp = mean(h_pad, n_real, 0.0)
        # Ratio of sums == ratio of means over the same real queries; 0 where H vanishes.
        positive = h_all > 0
        adi = torch.where(positive, h_pad / torch.where(positive, h_all, torch.ones_like(h_all)),
                          torch.zeros_like(h_all))

        def out(x: torch.Tensor) -> torch.Tensor:
            return x.squeeze(-1) if self.heads == "mean" else x

        return FlowResult(
            a_rr=out(a_rr), a_rp=out(a_rp), a_pr=out(a_pr), a_pp=out(a_pp), sfr=out(a_rr),
            h=out(h), h_rp=out(h_rp), adi=out(adi),
            n_real_queries=n_real, n_pad_queries=n_pad, padding=padding, heads=self.heads,
            pad_queries=pad_queries,
        )


def accumulators_to(accumulators: Sequence[FlowAccumulator], device: str | torch.device) -> list[FlowAccumulator]:
    """Copies of ``accumulators`` with their state on ``device``, moved in one copy per dtype.

    The state of every accumulator (a few small tensors each) is concatenated per (device,
    dtype) and moved at once, so moving the accumulators of a whole forward costs one sync
    instead of one per tensor. State already on ``device`` is shared, not copied; the values
    are unchanged, so :meth:`FlowAccumulator.result` gives the same numbers.
    """
    device = torch.device(device)
    out = [FlowAccumulator(padding=a.padding, heads=a.heads, pad_queries=a.pad_queries) for a in accumulators]
    states = [(a._flow, a._ent, a._count) if a._flow is not None and a._ent is not None and a._count is not None
              else None for a in accumulators]
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[int, int]]] = {}
    for i, state in enumerate(states):
        for k, t in enumerate(state or ()):
            groups.setdefault((t.device, t.dtype), []).append((i, k))
    moved: list[list[torch.Tensor | None]] = [[None, None, None] for _ in accumulators]
    for (src, _), slots in groups.items():
        parts = [states[i][k] for i, k in slots]  # type: ignore[index]
        if src == device:
            flat_parts: Sequence[torch.Tensor] = parts
        else:
            flat = torch.cat([t.reshape(-1) for t in parts]).to(device)
            flat_parts = [f.reshape(t.shape) for f, t in zip(flat.split([t.numel() for t in parts]), parts)]
        for (i, k), t in zip(slots, flat_parts):
            moved[i][k] = t
    for acc, (flow, ent, count), state in zip(out, moved, states):
        if state is not None:
            acc._flow, acc._ent, acc._count = flow, ent, count
    return out


def attention_flow(
    probs: torch.Tensor,
    kinds: torch.Tensor,
    *,
    padding: PaddingKind = "all",
    heads: HeadMode = "mean",
    pad_queries: PadQueries = "all-windows",
) -> FlowResult:
    """Attention flow and ADI of one block, per sample (docs/definitions.md).

    Parameters
    ----------
    probs : (*batch, window, head, query, key) floating tensor
        Post-softmax attention probabilities of one block, e.g. ``(sample, window, head, N, N)``;
        a hook on ``attn.softmax`` sees ``(B*nW, head, N, N)``, reshape it to
        ``(B, nW, head, N, N)``. fp16/bf16 are fine (upcast internally).
    kinds : (*batch, window, N) integer tensor
        Token kinds (:mod:`attnprobe.tokens`) in the same window order; leading dims may be
        omitted to share one geometry across the batch.
    padding
        ``"input"``, ``"window"`` or ``"all"``: which tokens form P (see module docstring for
        how tokens of the other padding kind are treated).
    heads
        ``"mean"`` averages the probabilities over heads first; ``"per-head"`` keeps a
        trailing head dim on every metric.
    pad_queries
        ``"all-windows"`` (default, the paper's definition): ``a_pr``/``a_pp`` average over
        the padding queries of every window, windows without a real token included;
        ``"real-windows"``: only over windows that hold a real token. ``adi``, ``a_rr``,
        ``a_rp``, ``h``, ``h_rp`` and ``sfr`` do not depend on it.

    Returns
    -------
    FlowResult
        float64 metrics ``(*batch)`` or ``(*batch, head)`` and int64 counts ``(*batch)``, on
        ``probs``' device; ``a_pr``/``a_pp`` NaN where there is no padding query.

    Raises
    ------
    ShapeError
        Wrong rank/shape/dtype, or kinds that do not match probs.
    DataError
        Kind codes outside {0, 1, 2}.
    ConfigError
        Unknown ``padding``, ``heads`` or ``pad_queries``.

    Notes
    -----
    Cost: one read of ``probs``, then per window two thin GEMMs with one-hot query rows and
    one ``x log x`` pass over the head-averaged (or, per head, the full) map. On the CPU the
    windows go in cache-sized pieces (extra memory ~2 MiB); elsewhere the extra memory is
    about one float32 copy of the head-averaged (or per-head) block. To get all
    three padding kinds from one pass use :class:`FlowAccumulator` and call ``result`` per kind.
    """
    return FlowAccumulator(padding=padding, heads=heads, pad_queries=pad_queries).update(probs, kinds).result()
