"""Token kinds in window order vs a brute-force per-token computation, and vs the model."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from attnprobe.capture.geometry import check_input_shape, token_kinds
from attnprobe.errors import ShapeError
from attnprobe.models import build_model, get_adapter
from attnprobe.tokens import INPUT_PAD, REAL, WINDOW_PAD


def brute_force_real(mask: np.ndarray, stage: int, patch: int, offsets=None) -> np.ndarray:
    """Real flag of every token of a stage, from first principles.

    Stage 0: any voxel of the patch is real. Later stages: any child the merging reads is real
    (all eight by default; ``offsets`` for MONAI < 1.5's merging, which reads six).
    """
    grid = [s // patch for s in mask.shape]
    real = np.zeros(grid, dtype=bool)
    for q in itertools.product(*(range(g) for g in grid)):
        real[q] = mask[q[0] * patch:(q[0] + 1) * patch, q[1] * patch:(q[1] + 1) * patch,
                       q[2] * patch:(q[2] + 1) * patch].any()
    for _ in range(stage):
        children = offsets or list(itertools.product(range(2), repeat=3))
        merged = np.zeros([g // 2 for g in real.shape], dtype=bool)
        for q in itertools.product(*(range(g) for g in merged.shape)):
            merged[q] = any(real[2 * q[0] + i, 2 * q[1] + j, 2 * q[2] + k] for i, j, k in children)
        real = merged
    return real


def brute_force_kinds(mask: np.ndarray, geom, patch: int, offsets=None) -> np.ndarray:
    """Kind of token n of window w, one token at a time from first principles."""
    real = brute_force_real(mask, geom.stage, patch, offsets)
    padded = [math.ceil(g / w) * w for g, w in zip(geom.grid, geom.window)]
    per_axis = [p // w for p, w in zip(padded, geom.window)]
    out = np.zeros((math.prod(per_axis), math.prod(geom.window)), dtype=np.uint8)
    for w_index, w_pos in enumerate(itertools.product(*(range(n) for n in per_axis))):
        for t_index, t_pos in enumerate(itertools.product(*(range(n) for n in geom.window))):
            # position in the rolled grid -> position in the unrolled padded grid
            q = [(wp * ws + tp + s) % p for wp, ws, tp, s, p in zip(w_pos, geom.window, t_pos, geom.shift, padded)]
            if any(qi >= g for qi, g in zip(q, geom.grid)):
                out[w_index, t_index] = WINDOW_PAD
                continue
            out[w_index, t_index] = REAL if real[tuple(q)] else INPUT_PAD
    return out


def random_mask(shape, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    lo = [rng.integers(0, s // 3) for s in shape]
    hi = [rng.integers(s // 2, s + 1) for s in shape]
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    mask[tuple(rng.integers(0, s, size=5) for s in shape)] = True  # stray real voxels
    return mask


#: MONAI < 1.5's merge order, written here from the published fact (docs/compat.md), not imported
OLD_SWIN_ORDER = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1)]
#: input sizes the original SMIT code can run (its swapped padding fails on the others)
SMIT_ORIGINAL_SHAPES = [(64, 64, 64), (64, 96, 64)]


def matrix(shapes):
    """(shape, arch, window, compat) for every adapter in both compat modes."""
    for compat in ("current", "original"):
        for arch, window in (("swin_unetr", 7), ("swin_unetr", 4), ("smit", 4)):
            for shape in SMIT_ORIGINAL_SHAPES if (arch, compat) == ("smit", "original") else shapes:
                yield pytest.param(shape, arch, window, compat, id=f"{arch}-w{window}-{compat}-{shape}")


@pytest.mark.parametrize(("shape", "arch", "window", "compat"), matrix([(64, 64, 32), (96, 96, 64), (128, 96, 32)]))
def test_kinds_match_brute_force(shape, arch, window, compat):
    model = build_model(arch, preset="tiny", window_size=window, compat=compat)
    adapter = get_adapter(arch)
    mask = random_mask(shape, seed=sum(shape) + window)
    geometry, kinds = token_kinds(model, torch.from_numpy(mask)[None, None])
    assert any(g.shifted for g in geometry.values()) and any(not g.shifted for g in geometry.values())
    offsets = OLD_SWIN_ORDER if (arch, compat) == ("swin_unetr", "original") else None
    for name, geom in geometry.items():
        if (arch, compat) == ("smit", "original"):  # never shrinks, always shifts odd blocks
            assert geom.window == (window,) * 3 and geom.shift == ((window // 2,) * 3 if geom.block % 2 else (0,) * 3)
        expected = brute_force_kinds(mask, geom, adapter.patch_size, offsets)
        np.testing.assert_array_equal(kinds[name][0].numpy(), expected, err_msg=name)


def test_old_swin_merge_order_changes_which_merged_tokens_are_real():
    """A 2x2x2 cell whose only real child is (1,1,0): real now, padding for MONAI < 1.5's merging."""
    mask = torch.zeros(1, 1, 64, 64, 32, dtype=torch.bool)
    mask[0, 0, 2:4, 2:4, 0:2] = True  # stage-0 token (1,1,0), the child (1,1,0) of stage-1 token (0,0,0)
    for compat, expected in (("current", REAL), ("original", INPUT_PAD)):
        model = build_model("swin_unetr", preset="tiny", compat=compat)
        geometry, kinds = token_kinds(model, mask)
        stage1 = kinds["stage1.block0"][0]
        geom = geometry["stage1.block0"]
        assert geom.grid == (16, 16, 8) and geom.window == (7, 7, 7)
        assert int(stage1[0, 0]) == expected, compat  # token (0,0,0) is slot 0 of window 0
        assert int((stage1 == REAL).sum()) == (1 if compat == "current" else 0)


def test_window_shrinks_on_small_grids():
    model = build_model("swin_unetr", preset="tiny")
    geoms = {g.name: g for g in get_adapter("swin_unetr").geometry(model, (64, 64, 32))}
    # stage 2 grid is 8x8x4: z (4 <= 7) shrinks to 4 and loses its shift
    assert geoms["stage2.block1"].window == (7, 7, 4)
    assert geoms["stage2.block1"].shift == (3, 3, 0)
    # stage 3 grid is 4x4x2: every axis shrinks, no shift at all
    assert geoms["stage3.block1"].window == (4, 4, 2) and not geoms["stage3.block1"].shifted


@pytest.mark.parametrize(("shape", "arch", "compat"), [
    p for s in [(64, 64, 32), (64, 96, 32)] for p in (
        (s, "swin_unetr", "current"), (s, "swin_unetr", "original"), (s, "smit", "current"))
] + [((64, 96, 64), "smit", "original"), ((64, 64, 64), "smit", "original")])
def test_window_padding_tokens_are_exact_zeros_in_the_model(shape, arch, compat):
    """Independent check against the model itself: WINDOW_PAD <=> all-zero attention input."""
    torch.manual_seed(0)
    model = build_model(arch, preset="tiny", compat=compat).eval()
    x = torch.randn(2, 1, *shape)
    geometry, kinds = token_kinds(model, torch.ones(2, 1, *shape, dtype=torch.bool))
    seen = {}
    handles = []
    for ref in get_adapter(arch).blocks(model):
        def pre(module, args, name=ref.name):
            seen[name] = args[0].detach()
        handles.append(model.get_submodule(ref.attn_path).register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for name, tokens in seen.items():
        k = kinds[name].reshape(-1)
        zero = (tokens.abs().amax(-1) == 0).reshape(-1)
        assert torch.equal(zero, k == WINDOW_PAD), name


def test_input_padding_tokens_share_the_patch_embedding_bias():
    """Stage-0 tokens over zero-padded voxels all equal conv(0) + bias; real ones differ."""
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny").eval()
    mask = torch.zeros(1, 1, 64, 64, 32, dtype=torch.bool)
    mask[..., :20] = True
    x = torch.randn(1, 1, 64, 64, 32) * mask
    with torch.no_grad():
        emb = model.swinViT.patch_embed(x)[0]  # (C, X, Y, Z)
    _, kinds = token_kinds(model, mask)
    stage0 = kinds["stage0.block0"][0]
    assert (stage0 == INPUT_PAD).sum() == 32 * 32 * 6  # z tokens 10..15 (voxels 20..31)
    pad = emb[:, :, :, 10:].reshape(emb.shape[0], -1)
    assert torch.allclose(pad, model.swinViT.patch_embed.proj.bias[:, None].expand_as(pad))


def test_bad_sizes_name_the_axis():
    adapter = get_adapter("swin_unetr")
    with pytest.raises(ShapeError, match="axis z") as info:
        check_input_shape(adapter, (64, 64, 40))
    assert "32 or 64" in str(info.value)


@pytest.mark.parametrize("compat", ["current", "original"])
@pytest.mark.parametrize("arch", ["swin_unetr", "smit"])
def test_token_positions_invert_the_window_layout(arch, compat):
    from attnprobe.capture.geometry import token_positions

    model = build_model(arch, preset="tiny", compat=compat)
    adapter = get_adapter(arch)
    shape = (64, 96, 64) if (arch, compat) == ("smit", "original") else (64, 96, 32)
    for geom in adapter.geometry(model, shape):
        pos = token_positions(adapter, geom)
        real = pos[pos >= 0]
        # every grid token appears exactly once; -1 exactly where the kinds say window padding
        assert torch.equal(real.sort().values, torch.arange(math.prod(geom.grid)))
        mask = np.ones(shape, dtype=bool)
        expected_pad = brute_force_kinds(mask, geom, adapter.patch_size) == WINDOW_PAD
        np.testing.assert_array_equal((pos < 0).numpy(), expected_pad)


def test_uniform_attention_maps_to_one_over_n_on_every_token():
    from attnprobe.metrics.attention_map import received_attention, to_voxels

    model = build_model("swin_unetr", preset="tiny")
    adapter = get_adapter("swin_unetr")
    mask = torch.ones(1, 1, 64, 64, 32, dtype=torch.bool)
    geometry, kinds = token_kinds(model, mask)
    geom = geometry["stage1.block1"]
    probs = torch.full((geom.n_windows, geom.heads, geom.n_tokens, geom.n_tokens), 1.0 / geom.n_tokens)
    grid = received_attention(probs, kinds["stage1.block1"][0], geom, adapter)
    assert grid.shape == geom.grid
    assert torch.allclose(grid, torch.full(geom.grid, 1.0 / geom.n_tokens))
    voxels = to_voxels(grid, (64, 64, 32))
    assert voxels.shape == (64, 64, 32)
    assert torch.allclose(voxels, torch.full((64, 64, 32), 1.0 / geom.n_tokens))
    # each token covers its own patch: a grid whose value codes the token position spreads to
    # nearest-neighbour blocks (stage 1: 4 voxels a token on every axis)
    factors = [v // g for v, g in zip((64, 64, 32), geom.grid, strict=True)]
    assert factors == [4, 4, 4] and [g * f for g, f in zip(geom.grid, factors, strict=True)] == [64, 64, 32]
    code = torch.arange(math.prod(geom.grid), dtype=torch.float32).reshape(geom.grid)
    want = code
    for axis, f in enumerate(factors):
        want = want.repeat_interleave(f, dim=axis)
    assert torch.equal(to_voxels(code, (64, 64, 32)), want)
