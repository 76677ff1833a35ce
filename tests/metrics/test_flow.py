"""Attention flow / ADI (docs/definitions.md) against brute force, closed forms and invariances."""

from __future__ import annotations

import math
import re

import pytest
import torch

from attnprobe.errors import AttnprobeError, ConfigError, DataError, ShapeError
from attnprobe.metrics.flow import (
    METRICS,
    PAD_QUERY_MODES,
    FlowAccumulator,
    FlowResult,
    accumulators_to,
    attention_flow,
)
from attnprobe.tokens import INPUT_PAD, PADDING_KINDS, REAL, WINDOW_PAD
from tests.helpers import tf32_left_on

PAD_SETS = {"input": {INPUT_PAD}, "window": {WINDOW_PAD}, "all": {INPUT_PAD, WINDOW_PAD}}


# ---------------------------------------------------------------- helpers


def random_block(seed: int, *, batch=(2,), windows=7, heads=3, n=6, dtype=torch.float64):
    """Random softmax attention and kinds with an all-real, an all-padding, an all-window-pad
    and a no-real-but-input window, the rest random."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*batch, windows, heads, n, n, generator=g, dtype=torch.float64)
    probs = torch.softmax(logits, dim=-1).to(dtype)
    kinds = torch.randint(0, 3, (*batch, windows, n), generator=g).to(torch.uint8)
    kinds[..., 0, :] = REAL
    kinds[..., 1, :] = torch.tensor([INPUT_PAD, WINDOW_PAD] * n, dtype=torch.uint8)[:n]
    kinds[..., 2, :] = WINDOW_PAD
    kinds[..., 3, :] = INPUT_PAD
    return probs, kinds


def brute_force(probs, kinds, padding, heads, pad_queries="all-windows"):
    """Triple loop over windows, queries, keys on Python floats, straight from the definition in docs/definitions.md.

    Padding queries of windows without a real token count for ``pad_queries="all-windows"``
    only; real queries only exist in windows with a real token. ``a_pr``/``a_pp`` are NaN
    without padding queries. Returns {metric: list} per sample (a list over heads for per-head)."""
    pset = PAD_SETS[padding]
    lead = probs.shape[:-4]
    p_flat = probs.double().reshape(-1, *probs.shape[-4:]).tolist()
    k_flat = kinds.reshape(-1, *kinds.shape[-2:]).tolist()
    n_head = probs.shape[-3]
    out = {m: [] for m in (*METRICS, "n_real_queries", "n_pad_queries")}
    for p_s, k_s in zip(p_flat, k_flat, strict=True):
        if heads == "mean":
            mats = [[[[sum(p_w[h][i][j] for h in range(n_head)) / n_head for j in range(len(k_w))]
                      for i in range(len(k_w))] for p_w, k_w in zip(p_s, k_s, strict=True)]]
        else:
            mats = [[p_w[h] for p_w in p_s] for h in range(n_head)]
        per_head = {m: [] for m in out}
        for windows in mats:
            s = dict.fromkeys(("rr", "rp", "pr", "pp", "h", "hrp"), 0.0)
            nr = npd = 0
            for a, k_w in zip(windows, k_s, strict=True):
                if REAL not in k_w and pad_queries == "real-windows":
                    continue
                for i, ki in enumerate(k_w):
                    to_r = to_p = h = hrp = 0.0
                    for j, kj in enumerate(k_w):
                        v = a[i][j]
                        e = -v * math.log(v) if v > 0 else 0.0
                        h += e
                        if kj == REAL:
                            to_r += v
                        elif kj in pset:
                            to_p += v
                            hrp += e
                    if ki == REAL:
                        nr += 1
                        s["rr"] += to_r
                        s["rp"] += to_p
                        s["h"] += h
                        s["hrp"] += hrp
                    elif ki in pset:
                        npd += 1
                        s["pr"] += to_r
                        s["pp"] += to_p
            vals = {
                "a_rr": s["rr"] / nr if nr else 0.0, "a_rp": s["rp"] / nr if nr else 0.0,
                "a_pr": s["pr"] / npd if npd else math.nan, "a_pp": s["pp"] / npd if npd else math.nan,
                "h": s["h"] / nr if nr else 0.0, "h_rp": s["hrp"] / nr if nr else 0.0,
                "adi": s["hrp"] / s["h"] if s["h"] > 0 else 0.0,
                "n_real_queries": nr, "n_pad_queries": npd,
            }
            vals["sfr"] = vals["a_rr"]
            for m in out:
                per_head[m].append(vals[m])
        for m in out:
            out[m].append(per_head[m] if heads == "per-head" else per_head[m][0])
    shape_m = (*lead, n_head) if heads == "per-head" else lead
    res = {m: torch.tensor(out[m], dtype=torch.float64).reshape(shape_m) for m in METRICS}
    for c in ("n_real_queries", "n_pad_queries"):
        res[c] = torch.tensor([x if heads == "mean" else x[0] for x in out[c]]).reshape(lead)
    return res


def assert_same(res: FlowResult, ref: dict, *, rtol=1e-10, atol=1e-12):
    for name, value in ref.items():
        got = getattr(res, name)
        assert got.shape == value.shape, name
        if name.startswith("n_"):
            assert torch.equal(got.cpu(), value), name
        else:
            torch.testing.assert_close(got.cpu(), value, rtol=rtol, atol=atol, equal_nan=True, msg=name)


def uniform_block(ks, n):
    """Uniform attention 1/n over windows with ks[w] padding tokens (input padding at the end)."""
    w = len(ks)
    probs = torch.full((w, 1, n, n), 1.0 / n, dtype=torch.float64)
    kinds = torch.zeros(w, n, dtype=torch.uint8)
    for i, k in enumerate(ks):
        kinds[i, n - k:] = INPUT_PAD
    return probs, kinds


# ---------------------------------------------------------------- brute force


@pytest.mark.parametrize("pad_queries", PAD_QUERY_MODES)
@pytest.mark.parametrize("heads", ["mean", "per-head"])
@pytest.mark.parametrize("padding", PADDING_KINDS)
def test_matches_brute_force(padding, heads, pad_queries):
    probs, kinds = random_block(0, batch=(3,))
    ref = brute_force(probs, kinds, padding, heads, pad_queries)
    got = attention_flow(probs, kinds, padding=padding, heads=heads, pad_queries=pad_queries)
    assert got.pad_queries == pad_queries
    assert_same(got, ref)


def test_pad_queries_changes_only_the_padding_query_row():
    # random_block has windows without a real token (all input padding, all window padding,
    # mixed padding): their padding queries count under "all-windows" only.
    probs, kinds = random_block(13, batch=(3,))
    acc = FlowAccumulator(heads="per-head").update(probs, kinds)
    for padding in PADDING_KINDS:
        every = acc.result(padding=padding, pad_queries="all-windows")
        kept = acc.result(padding=padding, pad_queries="real-windows")
        for m in ("adi", "sfr", "a_rr", "a_rp", "h", "h_rp", "n_real_queries"):
            assert torch.equal(getattr(every, m), getattr(kept, m)), m
        assert bool((every.n_pad_queries > kept.n_pad_queries).all())
        assert not torch.allclose(every.a_pp, kept.a_pp)
    # the constructor's rule is the default of result()
    real_only = FlowAccumulator(pad_queries="real-windows").update(probs, kinds).result()
    torch.testing.assert_close(real_only.a_pp, attention_flow(probs, kinds, pad_queries="real-windows").a_pp)
    assert attention_flow(probs, kinds).pad_queries == "all-windows"  # the paper's is the default


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("heads", ["mean", "per-head"])
def test_windows_in_cpu_pieces_match_brute_force(heads, dtype, monkeypatch):
    # pieces of 2 windows over 7: several full pieces and a partial last one, each reusing the
    # work buffers (real inputs are cut into ~2 MiB pieces; these test blocks fit in one)
    probs, kinds = random_block(5, batch=(2,), windows=7, dtype=dtype)
    per_window = 2 * (1 if heads == "mean" else 3) * 6 * 6 * (8 if dtype == torch.float64 else 4)
    monkeypatch.setattr("attnprobe.metrics.flow._CPU_PIECE_BYTES", 2 * per_window)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    for padding in PADDING_KINDS:
        ref = brute_force(probs, kinds, padding, heads)
        assert_same(attention_flow(probs, kinds, padding=padding, heads=heads), ref, **tol)


def test_matches_brute_force_float32_and_two_batch_dims():
    # float32 work: per-row sums of <= 6 terms, errors ~1e-7 relative.
    probs, kinds = random_block(1, batch=(2, 2), dtype=torch.float32)
    for padding in PADDING_KINDS:
        ref = brute_force(probs, kinds, padding, "mean")
        assert_same(attention_flow(probs, kinds, padding=padding), ref, rtol=1e-5, atol=1e-6)


def test_invariants_between_padding_kinds():
    probs, kinds = random_block(2)
    r = {k: attention_flow(probs, kinds, padding=k, heads="per-head") for k in PADDING_KINDS}
    for m in ("a_rp", "h_rp", "adi"):
        torch.testing.assert_close(getattr(r["input"], m) + getattr(r["window"], m), getattr(r["all"], m))
    for m in ("a_rr", "h", "n_real_queries"):
        torch.testing.assert_close(getattr(r["input"], m), getattr(r["all"], m))
    # Only with P = all padding is the real row of the flow matrix a distribution.
    torch.testing.assert_close(r["all"].a_rr + r["all"].a_rp, torch.ones_like(r["all"].a_rr))
    torch.testing.assert_close(r["all"].a_pr + r["all"].a_pp, torch.ones_like(r["all"].a_pr))
    assert bool((r["all"].adi >= 0).all() and (r["all"].adi <= 1).all())


def test_mean_mode_averages_heads_first():
    probs, kinds = random_block(3)
    mean = attention_flow(probs, kinds, heads="mean")
    via = attention_flow(probs.mean(dim=-3, keepdim=True), kinds, heads="per-head")
    for m in METRICS:
        torch.testing.assert_close(getattr(mean, m), getattr(via, m).squeeze(-1))
    # ... which is not the mean of per-head entropies (entropy is concave).
    per = attention_flow(probs, kinds, heads="per-head")
    assert not torch.allclose(mean.h, per.h.mean(-1))


# ---------------------------------------------------------------- closed forms


def test_no_padding_gives_zero_adi():
    probs, _ = random_block(4)
    kinds = torch.zeros(probs.shape[:-3] + probs.shape[-1:], dtype=torch.uint8)
    for padding in PADDING_KINDS:
        r = attention_flow(probs, kinds, padding=padding)
        assert torch.equal(r.adi, torch.zeros(2, dtype=torch.float64))
        assert torch.equal(r.a_rp, torch.zeros_like(r.a_rp))
        torch.testing.assert_close(r.a_rr, torch.ones_like(r.a_rr))
        # No padding query: A_pr, A_pp have no value (NaN), not 0; the count says why.
        assert bool(r.a_pr.isnan().all()) and bool(r.a_pp.isnan().all())
        assert torch.equal(r.n_pad_queries, torch.zeros(2, dtype=torch.int64))


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_uniform_attention_single_window(k):
    n = 8
    probs, kinds = uniform_block([k], n)
    r = attention_flow(probs, kinds, padding="input")
    ln = math.log(n)
    torch.testing.assert_close(r.h, torch.tensor(ln, dtype=torch.float64))
    torch.testing.assert_close(r.h_rp, torch.tensor(k / n * ln, dtype=torch.float64))
    torch.testing.assert_close(r.adi, torch.tensor(k / n, dtype=torch.float64))
    torch.testing.assert_close(r.a_rp, torch.tensor(k / n, dtype=torch.float64))
    torch.testing.assert_close(r.a_rr, torch.tensor((n - k) / n, dtype=torch.float64))
    if k:
        torch.testing.assert_close(r.a_pp, torch.tensor(k / n, dtype=torch.float64))
    assert int(r.n_real_queries) == n - k and int(r.n_pad_queries) == k


def test_uniform_attention_pooled_ratio_of_means():
    n, ks = 8, [0, 2, 5, 8, 3]  # k = 8: all-padding window, no real query
    probs, kinds = uniform_block(ks, n)
    r = attention_flow(probs, kinds, padding="input")
    kept = [k for k in ks if k < n]
    n_real = sum(n - k for k in kept)
    # sum_R H^rp / sum_R H with H_i = log n, H^rp_i = (k/n) log n per real query of a window.
    adi = sum((n - k) * k / n for k in kept) / n_real
    # A padding query of a window with k padding tokens puts k/n on padding keys.
    a_pp_all = sum(k * k / n for k in ks) / sum(ks)  # every window's padding queries (default)
    a_pp_kept = sum(k * k / n for k in kept) / sum(kept)  # windows with a real token only
    torch.testing.assert_close(r.adi, torch.tensor(adi, dtype=torch.float64))
    torch.testing.assert_close(r.a_rp, torch.tensor(adi, dtype=torch.float64))
    torch.testing.assert_close(r.a_pp, torch.tensor(a_pp_all, dtype=torch.float64))
    torch.testing.assert_close(r.h, torch.tensor(math.log(n), dtype=torch.float64))
    assert int(r.n_real_queries) == n_real and int(r.n_pad_queries) == sum(ks)
    kept_r = attention_flow(probs, kinds, padding="input", pad_queries="real-windows")
    torch.testing.assert_close(kept_r.a_pp, torch.tensor(a_pp_kept, dtype=torch.float64))
    torch.testing.assert_close(kept_r.a_pr, torch.tensor(1 - a_pp_kept, dtype=torch.float64))
    assert int(kept_r.n_pad_queries) == sum(kept) and float(kept_r.adi) == float(r.adi)
    # ratio of means != mean of per-window ratios
    assert abs(adi - sum(k / n for k in kept) / len(kept)) > 1e-3


def test_empty_query_sets_and_one_hot_attention():
    n = 4
    probs = torch.eye(n, dtype=torch.float64).expand(2, 1, n, n).clone()  # H = 0 everywhere
    kinds = torch.tensor([[0, 0, 1, 2], [1, 1, 2, 2]], dtype=torch.uint8)
    r = attention_flow(probs, kinds)
    assert float(r.adi) == 0.0 and float(r.h) == 0.0 and float(r.a_rr) == 1.0
    # A sample without a real token: real-query metrics are 0 (never NaN) ...
    only_pad = attention_flow(probs[1:], kinds[1:])
    for m in ("adi", "sfr", "a_rr", "a_rp", "h", "h_rp", "n_real_queries"):
        assert float(getattr(only_pad, m)) == 0.0, m
    # ... its padding queries count in every window (one-hot on themselves: all to padding) ...
    assert float(only_pad.a_pp) == 1.0 and float(only_pad.a_pr) == 0.0 and int(only_pad.n_pad_queries) == 4
    # ... and none under "real-windows": no padding query, no value.
    kept = attention_flow(probs[1:], kinds[1:], pad_queries="real-windows")
    assert bool(kept.a_pr.isnan()) and bool(kept.a_pp.isnan()) and int(kept.n_pad_queries) == 0


# ---------------------------------------------------------------- invariances, chunking


def test_window_and_token_order_invariance():
    probs, kinds = random_block(5)
    base = attention_flow(probs, kinds, heads="per-head")
    g = torch.Generator().manual_seed(0)
    perm_w = torch.randperm(probs.shape[-4], generator=g)
    perm_t = torch.randperm(probs.shape[-1], generator=g)
    by_window = attention_flow(probs[:, perm_w], kinds[:, perm_w], heads="per-head")
    by_token = attention_flow(probs[..., perm_t, :][..., perm_t], kinds[..., perm_t], heads="per-head")
    for m in METRICS:
        torch.testing.assert_close(getattr(by_window, m), getattr(base, m), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(getattr(by_token, m), getattr(base, m), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("heads", ["mean", "per-head"])
def test_accumulator_over_window_chunks_equals_one_shot(heads):
    probs, kinds = random_block(6, windows=11, dtype=torch.float32)
    acc = FlowAccumulator(heads=heads)
    for lo, hi in [(0, 3), (3, 3), (3, 4), (4, 11)]:  # uneven, one empty chunk
        acc.update(probs[:, lo:hi], kinds[:, lo:hi])
    for padding in PADDING_KINDS:
        one = attention_flow(probs, kinds, padding=padding, heads=heads)
        chunked = acc.result(padding=padding)
        for m, v in one.as_dict().items():
            # Same float32 work per window, but a batched float32 GEMM may order its sums
            # differently for another batch of windows: float32 rounding (~1e-9 relative
            # seen), nothing a wrong split would give.
            torch.testing.assert_close(getattr(chunked, m), v, rtol=1e-7, atol=1e-9, msg=m)
    # merge() of accumulators over disjoint windows == one accumulator over all
    a = FlowAccumulator(heads=heads).update(probs[:, :5], kinds[:, :5])
    b = FlowAccumulator(heads=heads).update(probs[:, 5:], kinds[:, 5:])
    merged = a.merge(b).result()
    torch.testing.assert_close(merged.adi, attention_flow(probs, kinds, heads=heads).adi, rtol=1e-7, atol=0)


@pytest.mark.parametrize("device", ["cpu", "cpu:0"])  # "cpu:0" != "cpu" takes the concatenate-and-copy path
def test_accumulators_moved_together_give_the_same_results(device):
    accs = [FlowAccumulator(heads=h).update(*random_block(n, windows=w, dtype=torch.float32))
            for h, n, w in (("mean", 5, 5), ("per-head", 6, 4), ("mean", 7, 6))]
    accs.append(FlowAccumulator())  # never updated: stays empty
    moved = accumulators_to(accs, device)
    assert len(moved) == 4 and moved[-1]._flow is None
    for a, b in zip(accs[:3], moved[:3]):
        # Already there: state shared; "elsewhere" (cpu:0 compares unequal to cpu): copied.
        assert (b._flow is a._flow) == (device == "cpu") and (b._count is a._count) == (device == "cpu")
        for padding in PADDING_KINDS:
            for m, v in a.result(padding=padding).as_dict().items():
                assert torch.equal(getattr(b.result(padding=padding), m), v), m


def test_batch_splitting_and_broadcast_kinds():
    probs, kinds = random_block(7, batch=(4,))
    whole = attention_flow(probs, kinds)
    parts = [attention_flow(probs[i:i + 1], kinds[i:i + 1]) for i in range(4)]
    for m in METRICS:
        torch.testing.assert_close(torch.cat([getattr(p, m) for p in parts]), getattr(whole, m))
    shared = attention_flow(probs, kinds[0])  # one geometry for the whole batch
    expanded = attention_flow(probs, kinds[:1].expand_as(kinds))
    torch.testing.assert_close(shared.adi, expanded.adi)


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize(("dtype", "unit_roundoff"), [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)])
def test_low_precision_inputs_agree_with_float32(dtype, unit_roundoff):
    probs, kinds = random_block(8, batch=(2,), windows=9, heads=4, n=27, dtype=torch.float32)
    low = probs.to(dtype)
    ref = attention_flow(probs, kinds, heads="per-head")
    got = attention_flow(low, kinds, heads="per-head")
    # Upcast is exact, so the low-precision input equals its float32 image bit for bit...
    same = attention_flow(low.float(), kinds, heads="per-head")
    for m in METRICS:
        torch.testing.assert_close(getattr(got, m), getattr(same, m), rtol=0, atol=0)
    # ... and differs from float32 only by the rounding of each probability, |dp| <= u p:
    # sums of probabilities move by <= u relatively; |d(-p log p)| <= u p |1 + log p| gives
    # |dH| <= u (H + 1), i.e. <= u (1 + 1/H) relatively (H > 1 here); ADI is a ratio of two
    # such sums, so <= ~2 u (1 + 1/H). rtol = 4u covers it with margin; atol covers values
    # near 0 (tiny fp16 subnormal probabilities).
    assert float(ref.h.min()) > 1.0
    for m in METRICS:
        torch.testing.assert_close(getattr(got, m), getattr(ref, m), rtol=4 * unit_roundoff, atol=1e-5, msg=m)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_minus_100_masked_logits_give_no_nan(dtype):
    g = torch.Generator().manual_seed(9)
    w, n = 4, 8
    logits = torch.randn(2, w, 2, n, n, generator=g)
    mask = torch.rand(w, 1, n, n, generator=g) < 0.5  # shifted-window style: -100, not -inf
    mask |= torch.eye(n, dtype=torch.bool)  # ... but every query sees itself, like Swin
    logits = logits - 100.0 * (~mask)
    probs = torch.softmax(logits, dim=-1).to(dtype)  # masked entries ~e^-100, 0 in fp16/bf16
    kinds = torch.randint(0, 3, (2, w, n), generator=g).to(torch.uint8)
    kinds[..., 0] = REAL
    for heads in ("mean", "per-head"):
        for padding in PADDING_KINDS:
            r = attention_flow(probs, kinds, padding=padding, heads=heads)
            has_pad = (r.n_pad_queries > 0).reshape(-1, *([1] * (r.a_pr.ndim - 1)))
            for m, v in r.as_dict().items():
                # NaN only as "no value": a_pr/a_pp of a sample without padding queries
                ok = torch.isfinite(v.double()) | (~has_pad if m in ("a_pr", "a_pp") else False)
                assert ok.all(), (m, dtype, heads, padding)
    # In float64 the ~e^-100 entries contribute ~1e-41 each: same as masking to exact zeros.
    approx = torch.softmax(logits.double(), dim=-1)
    exact = torch.softmax(logits.double().masked_fill(~mask, -math.inf), dim=-1)
    torch.testing.assert_close(attention_flow(approx, kinds).adi, attention_flow(exact, kinds).adi,
                               rtol=1e-10, atol=1e-12)


def test_float64_work_is_kept_and_outputs_are_float64():
    probs, kinds = random_block(10, dtype=torch.float64)
    r = attention_flow(probs, kinds)
    assert r.adi.dtype == torch.float64 and r.n_real_queries.dtype == torch.int64
    assert set(r.as_dict()) == {*METRICS, "n_real_queries", "n_pad_queries"}
    assert r.padding == "all" and r.heads == "mean"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_tf32_on():
    probs, kinds = random_block(11, dtype=torch.float32)
    cpu = attention_flow(probs, kinds, heads="per-head")
    with tf32_left_on() as still_on:
        gpu = attention_flow(probs.cuda(), kinds, heads="per-head")  # kinds moved to the device
        assert still_on()  # the user's setting is back
    assert gpu.adi.device.type == "cuda"
    for m in METRICS:
        torch.testing.assert_close(getattr(gpu, m).cpu(), getattr(cpu, m), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- errors


def test_errors_are_attnprobe_errors():
    probs, kinds = random_block(12)
    with pytest.raises(ShapeError, match="expected"):
        attention_flow(probs[0, 0], kinds[0, 0])  # rank < 4
    with pytest.raises(ShapeError):
        attention_flow(probs, kinds[..., :-1])  # N mismatch
    with pytest.raises(ShapeError):
        attention_flow(probs, kinds[:, :-1])  # window mismatch
    with pytest.raises(ShapeError):
        attention_flow(probs, kinds.float())
    with pytest.raises(ShapeError):
        attention_flow(probs, kinds[None, None])  # more leading dims than probs
    with pytest.raises(DataError, match="codes"):
        attention_flow(probs, kinds + 1)
    with pytest.raises(ConfigError):
        attention_flow(probs, kinds, padding="both")
    with pytest.raises(ConfigError):
        attention_flow(probs, kinds, heads="sum")
    with pytest.raises(ConfigError, match=re.escape("expected 'all-windows' | 'real-windows'; got 'all'")):
        attention_flow(probs, kinds, pad_queries="all")
    with pytest.raises(ConfigError, match="pad_queries"):
        FlowAccumulator(pad_queries="windows")
    with pytest.raises(ConfigError, match="pad_queries"):
        FlowAccumulator().update(probs, kinds).result(pad_queries="every")
    with pytest.raises(DataError):
        FlowAccumulator().result()
    acc = FlowAccumulator().update(probs, kinds)
    with pytest.raises(ShapeError):
        acc.update(probs[:1], kinds[:1])  # batch dims changed between chunks
    with pytest.raises(AttnprobeError):
        acc.merge(FlowAccumulator(heads="per-head").update(probs, kinds))
