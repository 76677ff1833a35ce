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


def brute_force_kinds(mask: np.ndarray, geom, patch: int) -> np.ndarray:
    """Kind of token n of window w, one token at a time from first principles."""
    factor = patch * 2**geom.stage
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
            box = mask[q[0] * factor:(q[0] + 1) * factor, q[1] * factor:(q[1] + 1) * factor,
                       q[2] * factor:(q[2] + 1) * factor]
            out[w_index, t_index] = REAL if box.any() else INPUT_PAD
    return out


def random_mask(shape, seed):
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, dtype=bool)
    lo = [rng.integers(0, s // 3) for s in shape]
    hi = [rng.integers(s // 2, s + 1) for s in shape]
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    mask[tuple(rng.integers(0, s, size=5) for s in shape)] = True  # stray real voxels
    return mask


@pytest.mark.parametrize("shape", [(64, 64, 32), (96, 96, 64), (128, 96, 32)])
@pytest.mark.parametrize(("arch", "window"), [("swin_unetr", 7), ("swin_unetr", 4), ("smit", 4)])
def test_kinds_match_brute_force(shape, arch, window):
    model = build_model(arch, preset="tiny", window_size=window)
    adapter = get_adapter(arch)
    mask = random_mask(shape, seed=sum(shape) + window)
    geometry, kinds = token_kinds(model, torch.from_numpy(mask)[None, None])
    assert any(g.shifted for g in geometry.values()) and any(not g.shifted for g in geometry.values())
    for name, geom in geometry.items():
        expected = brute_force_kinds(mask, geom, adapter.patch_size)
        np.testing.assert_array_equal(kinds[name][0].numpy(), expected, err_msg=name)


def test_window_shrinks_on_small_grids():
    model = build_model("swin_unetr", preset="tiny")
    geoms = {g.name: g for g in get_adapter("swin_unetr").geometry(model, (64, 64, 32))}
    # stage 2 grid is 8x8x4: z (4 <= 7) shrinks to 4 and loses its shift
    assert geoms["stage2.block1"].window == (7, 7, 4)
    assert geoms["stage2.block1"].shift == (3, 3, 0)
    # stage 3 grid is 4x4x2: every axis shrinks, no shift at all
    assert geoms["stage3.block1"].window == (4, 4, 2) and not geoms["stage3.block1"].shifted


@pytest.mark.parametrize("shape", [(64, 64, 32), (64, 96, 32)])
@pytest.mark.parametrize("arch", ["swin_unetr", "smit"])
def test_window_padding_tokens_are_exact_zeros_in_the_model(shape, arch):
    """Independent check against the model itself: WINDOW_PAD <=> all-zero attention input."""
    torch.manual_seed(0)
    model = build_model(arch, preset="tiny").eval()
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


@pytest.mark.parametrize("arch", ["swin_unetr", "smit"])
def test_token_positions_invert_the_window_layout(arch):
    from attnprobe.capture.geometry import token_positions

    model = build_model(arch, preset="tiny")
    adapter = get_adapter(arch)
    for geom in adapter.geometry(model, (64, 96, 32)):
        pos = token_positions(adapter, geom)
        real = pos[pos >= 0]
        # every grid token appears exactly once; -1 exactly where the kinds say window padding
        assert torch.equal(real.sort().values, torch.arange(math.prod(geom.grid)))
        mask = np.ones((64, 96, 32), dtype=bool)
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
