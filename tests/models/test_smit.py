"""Tests of the SMIT backbone (attnprobe.models.smit).

References used:
- the reference name/shape list ``reference/smit_2282_state_dict.json``, through its
  digest below so the test runs without the file, and directly when the file is present;
- MONAI's ``SwinTransformerBlock`` / ``compute_mask`` / ``WindowAttention`` (same math for
  window 4 when no window shrinks, or only the first axis does);
- brute-force window attention written from coordinates, independent of the model's helpers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnprobe.capture.geometry import token_positions
from attnprobe.errors import CheckpointError, ConfigError, ShapeError
from attnprobe.models import smit as S
from attnprobe.models.adapter import BlockGeometry
from attnprobe.models.registry import adapter_for, get_adapter

# sha256 over the sorted lines "name:(shape)" of reference/smit_2282_state_dict.json
# (253 entries, 64,755,458 values), computed from the file on 2024-11-28.
REFERENCE_DIGEST = "445dbe69721b7302aae1df6bb0a86f65887982abc384a7cdd5bbd9e40a25fa1e"
REFERENCE_ENTRIES = 253
TINY = {"embed_dim": 12, "depths": (2, 2, 2, 2), "num_heads": (3, 3, 3, 3)}


def _reference_json() -> Path | None:
    here = Path(__file__).resolve().parents[2]
    candidates = [os.environ.get("ATTNPROBE_REFERENCE_DIR"), here / "shared" / "reference",
                  "/work/shared/reference"]
    for c in candidates:
        if c and (Path(c) / "smit_2282_state_dict.json").is_file():
            return Path(c) / "smit_2282_state_dict.json"
    return None


def _digest(shapes: dict[str, tuple[int, ...]]) -> str:
    text = "\n".join(f"{k}:{tuple(v)}" for k, v in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def reference_model() -> S.SMIT:
    torch.manual_seed(0)
    return S.SMIT()


@pytest.fixture(scope="module")
def tiny_model() -> S.SMIT:
    torch.manual_seed(0)
    return S.SMIT(**TINY)


# ------------------------------------------------------------------ shapes, forward, backward

def test_forward_backward_tiny_noncubic(tiny_model):
    model = tiny_model.train()
    x = torch.randn(1, 1, 64, 64, 32)
    hidden = model.transformer(x)
    assert [tuple(h.shape) for h in hidden] == [
        (1, 12, 32, 32, 16), (1, 24, 16, 16, 8), (1, 48, 8, 8, 4), (1, 96, 4, 4, 2), (1, 192, 2, 2, 1)]
    model.zero_grad()
    out = model(x)
    assert out.shape == (1, 2, 64, 64, 32)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for i, stage in enumerate(model.transformer.layers):
        for j, block in enumerate(stage.blocks):
            assert block.attn.relative_position_bias_table.grad.abs().sum() > 0, (i, j)


def test_forward_backward_tiny_32_cubed(tiny_model):
    x = torch.randn(2, 1, 32, 32, 32, requires_grad=True)
    # the 1/32 bottleneck is 1x1x1, which torch's instance norm refuses (also in eval mode)
    with pytest.raises(ShapeError, match="bottleneck"):
        tiny_model(x)
    torch.manual_seed(0)
    model = S.SMIT(**TINY, norm_name="batch").train()
    out = model(x)
    assert out.shape == (2, 2, 32, 32, 32)
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_hooked_forward_is_bit_identical(tiny_model):
    model = tiny_model.eval()
    x = torch.randn(1, 1, 32, 32, 64)
    with torch.no_grad():
        plain = model(x)
        handles = [m.register_forward_hook(lambda *a: None) for n, m in model.named_modules()
                   if n.endswith("attn.softmax") or ".blocks." in n and n.count(".") == 4]
        try:
            hooked = model(x)
        finally:
            for h in handles:
                h.remove()
    assert len(handles) == 16
    assert torch.equal(plain, hooked)


# ------------------------------------------------------------------ reference state dict

def test_state_dict_names_and_shapes_match_reference_digest(reference_model):
    shapes = {k: tuple(v.shape) for k, v in reference_model.state_dict().items()}
    assert len(shapes) == REFERENCE_ENTRIES
    assert _digest(shapes) == REFERENCE_DIGEST
    assert sum(math.prod(s) for s in shapes.values()) == 64_755_458
    idx = reference_model.state_dict()["transformer.layers.0.blocks.0.attn.relative_position_index"]
    assert idx.dtype == torch.int64 and idx.shape == (64, 64)


def test_state_dict_equals_reference_json(reference_model):
    path = _reference_json()
    if path is None:
        pytest.skip("reference/smit_2282_state_dict.json not found (digest test covers it)")
    ref = json.loads(path.read_text())
    ours = {k: list(v.shape) for k, v in reference_model.state_dict().items()}
    assert ours == ref
    assert list(ours) == list(ref)  # same order as the checkpoint, too
    assert _digest(ref) == REFERENCE_DIGEST


def test_loads_random_reference_state_dict_strict(reference_model):
    gen = torch.Generator().manual_seed(1)
    sd = {}
    for k, v in reference_model.state_dict().items():
        if v.dtype == torch.int64:  # relative_position_index: any valid table row
            sd[k] = torch.randint(0, 343, v.shape, generator=gen)
        else:
            sd[k] = torch.randn(v.shape, generator=gen)
    result = reference_model.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    key = "transformer.layers.2.blocks.7.attn.relative_position_index"
    assert torch.equal(reference_model.state_dict()[key], sd[key])
    assert torch.equal(reference_model.decoder5.transp_conv.conv.weight, sd["decoder5.transp_conv.conv.weight"])


def test_reference_config_is_the_default(reference_model):
    inferred = S.smit_config_from_state_dict(reference_model.state_dict())
    assert S.SMITConfig(**inferred) == S.SMITConfig()
    assert inferred == {"in_channels": 1, "embed_dim": 48, "patch_size": 2, "depths": (2, 2, 8, 2),
                        "num_heads": (4, 4, 8, 16), "window_size": 4, "mlp_ratio": 4.0,
                        "qkv_bias": True, "out_channels": 2, "feature_size": 48, "encoder5": False}
    path = _reference_json()
    if path is not None:  # shapes alone (the JSON) are enough
        assert S.smit_config_from_state_dict(json.loads(path.read_text())) == inferred


# ------------------------------------------------------------------ non-cubic inputs

def _expected_windows(size, stage, window=4):
    grid = [s // 2 ** (stage + 1) for s in size]
    win = [g if g <= window else window for g in grid]
    return math.prod(math.ceil(g / w) for g, w in zip(grid, win)), math.prod(win), grid


@pytest.mark.parametrize("size", [(128, 128, 64), (96, 128, 64)])
def test_noncubic_inputs_window_counts(tiny_model, size):
    model = tiny_model.eval()
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        if name.endswith("attn.softmax") or isinstance(module, S.SMITBlock):
            handles.append(module.register_forward_hook(
                lambda m, a, o, name=name: seen.__setitem__(name, tuple(o.shape))))
    try:
        with torch.no_grad():
            out = model(torch.randn(1, 1, *size))
    finally:
        for h in handles:
            h.remove()
    assert out.shape == (1, 2, *size)
    adapter = adapter_for(model)
    refs = {ref.name: ref for ref in adapter.blocks(model)}
    geometry = {refs[g.name].block_path: (g, refs[g.name]) for g in adapter.geometry(model, size)}
    assert len(geometry) == 8
    for stage in range(4):
        n_windows, n_tokens, grid = _expected_windows(size, stage)
        for block in range(2):
            path = f"transformer.layers.{stage}.blocks.{block}"
            assert seen[f"{path}.attn.softmax"] == (n_windows, 3, n_tokens, n_tokens), path
            assert seen[path] == (1, *grid, 12 * 2**stage), path
            g, ref = geometry[path]
            assert (g.n_windows, g.n_tokens, list(g.grid)) == (n_windows, n_tokens, grid)
            assert ref.softmax_path == f"{path}.attn.softmax"
            assert model.get_submodule(ref.softmax_path) is model.get_submodule(path).attn.softmax
    last, _ = geometry["transformer.layers.3.blocks.1"]
    if size == (96, 128, 64):  # the grid the public SMIT code crashes on
        assert (last.grid, last.window, last.shift, last.padded, last.n_windows) == (
            (6, 8, 4), (4, 4, 4), (2, 2, 0), (8, 8, 4), 4)
    else:
        assert (last.grid, last.shift, last.n_windows) == ((8, 8, 4), (2, 2, 0), 4)


# ------------------------------------------------------------------ config inference

@pytest.mark.parametrize("depths", [(2, 2, 4, 2), (2, 2, 8, 2), (2, 2, 12, 2)])
def test_config_inference_round_trip(depths):
    model = S.SMIT(embed_dim=12, depths=depths, num_heads=(4, 4, 8, 16), in_channels=2, out_channels=3)
    sd = model.state_dict()
    inferred = S.smit_config_from_state_dict(sd)
    assert inferred["depths"] == depths and inferred["num_heads"] == (4, 4, 8, 16)
    assert S.SMITConfig(**inferred) == model.config
    # self-supervised layout: encoder only, under module.backbone.
    ssl = {"module.backbone." + k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    backbone = S.smit_config_from_state_dict(ssl)
    assert "out_channels" not in backbone and "feature_size" not in backbone
    assert {k: backbone[k] for k in ("embed_dim", "depths", "num_heads", "window_size", "in_channels")} == {
        "embed_dim": 12, "depths": depths, "num_heads": (4, 4, 8, 16), "window_size": 4, "in_channels": 2}


def test_config_inference_window_from_table_length():
    model = S.SMIT(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(3, 3, 3, 3), window_size=3)
    sd = model.state_dict()
    assert sd["transformer.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (125, 3)
    assert S.smit_config_from_state_dict(sd)["window_size"] == 3


def test_config_inference_errors():
    with pytest.raises(CheckpointError, match="patch embedding"):
        S.smit_config_from_state_dict({"encoder1.layer.conv1.conv.weight": torch.zeros(1)})
    sd = dict(S.SMIT(**TINY).state_dict())
    sd["transformer.layers.1.blocks.1.attn.relative_position_bias_table"] = torch.zeros(300, 3)
    with pytest.raises(CheckpointError, match="2w-1"):
        S.smit_config_from_state_dict(sd)


def test_config_validation():
    assert S.SMITConfig(embed_dim=12).feature_size == 12
    assert S.SMITConfig(depths=[2, 2, 4, 2]).depths == (2, 2, 4, 2)
    with pytest.raises(ConfigError, match="divisible"):
        S.SMITConfig(num_heads=(5, 4, 8, 16))
    with pytest.raises(ConfigError, match="four stages"):
        S.SMITConfig(depths=(2, 2, 2), num_heads=(4, 4, 8))
    with pytest.raises(ConfigError, match="decoder width"):
        S.SMITConfig(feature_size=24)
    with pytest.raises(ConfigError):
        S.SMIT(S.SMITConfig(), embed_dim=12)
    with pytest.raises(ConfigError, match="unknown"):
        S.SMIT(bogus=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        S.SMITConfig().embed_dim = 1


def test_input_errors(tiny_model):
    model = tiny_model.eval()
    with pytest.raises(ShapeError, match="divisible by 32"):
        model(torch.zeros(1, 1, 64, 64, 48))
    with pytest.raises(ShapeError, match="channel-first"):
        model(torch.zeros(1, 2, 64, 64, 64))
    with pytest.raises(ShapeError):
        model(torch.zeros(1, 64, 64, 64))
    with pytest.raises(ShapeError, match="channel-last"):
        model.transformer.layers[0].blocks[0](torch.zeros(1, 12, 4, 4, 4))


# ------------------------------------------------------------------ window padding, vs brute force

def _block(shift, *, grid_dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    block = S.SMITBlock(12, 3, (4, 4, 4), shift).to(grid_dtype)
    with torch.no_grad():  # make every parameter matter, norms included
        for p in block.parameters():
            p.normal_(0, 0.3)
        block.attn.relative_position_bias_table.normal_(0, 1.0)
    return block.eval()


def _slot_sources(grid, window, shift):
    """For every window slot (window-major, row-major inside): source coordinate or None."""
    padded = [math.ceil(g / w) * w for g, w in zip(grid, window)]
    counts = [p // w for p, w in zip(padded, window)]
    slots = []
    for wi in range(math.prod(counts)):
        wpos = (wi // (counts[1] * counts[2]), (wi // counts[2]) % counts[1], wi % counts[2])
        row = []
        for n in range(math.prod(window)):
            local = (n // (window[1] * window[2]), (n // window[2]) % window[1], n % window[2])
            rolled = [wp * w + lc for wp, w, lc in zip(wpos, window, local)]
            src = tuple((r + s) % p for r, s, p in zip(rolled, shift, padded))
            real = all(c < g for c, g in zip(src, grid))
            row.append((local, rolled, src if real else None))
        slots.append(row)
    return slots, padded


@pytest.mark.parametrize("shift", [(0, 0, 0), (2, 2, 2)])
def test_padding_tokens_are_zero_before_attention(shift):
    grid = (6, 5, 7)
    block = _block(shift, grid_dtype=torch.float32)
    x = torch.randn(2, *grid, 12)
    captured = {}
    handle = block.attn.register_forward_pre_hook(lambda m, a: captured.__setitem__("w", a[0]))
    try:
        with torch.no_grad():
            block(x)
            normed = block.norm1(x)
    finally:
        handle.remove()
    windows = captured["w"]
    slots, _ = _slot_sources(grid, (4, 4, 4), shift)
    assert windows.shape == (2 * len(slots), 64, 12)
    n_pad = 0
    for b in range(2):
        for wi, row in enumerate(slots):
            for n, (_, _, src) in enumerate(row):
                tok = windows[b * len(slots) + wi, n]
                if src is None:
                    n_pad += 1
                    assert torch.equal(tok, torch.zeros(12)), (b, wi, n)
                else:
                    assert torch.equal(tok, normed[(b, *src)]), (b, wi, n)
    assert n_pad == 2 * (8 * 8 * 8 - 6 * 5 * 7)
    # the shared geometry helper marks the same slots as padding
    idx = _token_positions(grid, (4, 4, 4), shift)
    assert int((idx < 0).sum()) == n_pad // 2
    assert sorted(idx[idx >= 0].tolist()) == list(range(6 * 5 * 7))


def _brute_force_block(block, x, grid, window, shift, full=4):
    """Block output and softmax of every window of sample ``x`` (grid, C) from coordinates."""
    hd = block.dim // block.num_heads
    slots, padded = _slot_sources(grid, window, shift)
    wq, bq = block.attn.qkv.weight, block.attn.qkv.bias
    table = block.attn.relative_position_bias_table
    out = torch.full_like(x, float("nan"))
    probs_all = []
    for row in slots:
        feats = torch.stack([block.norm1(x[src]) if src is not None else torch.zeros(block.dim, dtype=x.dtype)
                             for _, _, src in row])
        qkv = (feats @ wq.T + bq).reshape(len(row), 3, block.num_heads, hd)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (N, heads, hd)
        logits = torch.einsum("ihd,jhd->hij", q, k) * hd**-0.5
        local = torch.tensor([lc for lc, _, _ in row])  # (N, 3) position inside the window
        rolled = torch.tensor([rc for _, rc, _ in row])  # (N, 3) position on the rolled grid
        r = local[:, None, :] - local[None, :, :] + (full - 1)
        logits += table[(r[..., 0] * (2 * full - 1) + r[..., 1]) * (2 * full - 1) + r[..., 2]].permute(2, 0, 1)
        # regions of the rolled grid per shifted axis: [0, P-w), [P-w, P-s), [P-s, P)
        region = torch.zeros_like(rolled)
        for a in range(3):
            if shift[a]:
                region[:, a] = (rolled[:, a] >= padded[a] - window[a]).long() + (
                    rolled[:, a] >= padded[a] - shift[a]).long()
        logits += -100.0 * (region[:, None, :] != region[None, :, :]).any(-1)
        probs = torch.softmax(logits, dim=-1)
        probs_all.append(probs)
        attended = torch.einsum("hij,jhd->ihd", probs, v).reshape(len(row), block.dim)
        attended = attended @ block.attn.proj.weight.T + block.attn.proj.bias
        for n, (_, _, src) in enumerate(row):
            if src is None:
                continue
            y = x[src] + attended[n]
            h = F.gelu(block.norm2(y) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
            out[src] = y + h @ block.mlp.fc2.weight.T + block.mlp.fc2.bias
    return out, torch.stack(probs_all)


@pytest.mark.parametrize(("grid", "shift", "window"), [
    ((6, 5, 7), (2, 2, 2), (4, 4, 4)),   # padding on every axis, shifted
    ((5, 6, 7), (0, 0, 0), (4, 4, 4)),   # padding, not shifted
    ((6, 5, 2), (2, 2, 2), (4, 4, 2)),   # last axis shrinks: window 2, shift 0 there
])
def test_block_equals_brute_force(grid, shift, window):
    block = _block(shift)
    x = torch.randn(2, *grid, 12, dtype=torch.float64)
    eff_window, eff_shift = block.window_for(grid)
    assert eff_window == window
    assert eff_shift == tuple(0 if g <= w else s for g, w, s in zip(grid, (4, 4, 4), shift))
    captured = {}
    handle = block.attn.softmax.register_forward_hook(lambda m, a, o: captured.__setitem__("p", o))
    try:
        with torch.no_grad():
            out = block(x)
            expected, probs = _brute_force_block(block, x[1], grid, eff_window, eff_shift)
    finally:
        handle.remove()
    n_windows = probs.shape[0]
    assert captured["p"].shape == (2 * n_windows, 3, math.prod(window), math.prod(window))
    # rows b*nW + w: sample 1 is the second block of windows
    torch.testing.assert_close(captured["p"][n_windows:], probs, atol=1e-10, rtol=0)
    assert not torch.isnan(expected).any()  # every real token sits in exactly one window
    torch.testing.assert_close(out[1], expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("grid", [(6, 5, 7), (8, 8, 8), (3, 6, 5)])
@pytest.mark.parametrize("shift", [(0, 0, 0), (2, 2, 2)])
def test_block_equals_monai_swin_block(grid, shift):
    from monai.networks.nets.swin_unetr import SwinTransformerBlock, compute_mask, get_window_size

    ours = _block(shift)
    theirs = SwinTransformerBlock(12, 3, (4, 4, 4), shift, mlp_ratio=4.0, qkv_bias=True).double().eval()
    names = {"mlp.fc1.weight": "mlp.linear1.weight", "mlp.fc1.bias": "mlp.linear1.bias",
             "mlp.fc2.weight": "mlp.linear2.weight", "mlp.fc2.bias": "mlp.linear2.bias"}
    result = theirs.load_state_dict({names.get(k, k): v for k, v in ours.state_dict().items()}, strict=True)
    assert not result.missing_keys
    window, eff_shift = get_window_size(grid, (4, 4, 4), shift)
    padded = [math.ceil(g / w) * w for g, w in zip(grid, window)]
    mask = compute_mask(padded, window, eff_shift, "cpu").double() if any(eff_shift) else None
    x = torch.randn(2, *grid, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x, mask), atol=1e-6, rtol=0)


# ------------------------------------------------------------------ geometry helpers

def test_effective_window_rule():
    assert S.effective_window((8, 4, 2), 4, 2) == ((4, 4, 2), (2, 0, 0))
    assert S.effective_window((6, 5, 7), (4, 4, 4), (0, 0, 0)) == ((4, 4, 4), (0, 0, 0))
    assert S.padded_grid((6, 5, 7), (4, 4, 4)) == (8, 8, 8)
    assert S.window_padding((6, 8, 4), (4, 4, 4)) == (2, 0, 0)


@pytest.mark.parametrize(("grid", "shift"), [((6, 5, 7), (2, 2, 2)), ((8, 4, 12), (2, 0, 2))])
def test_to_from_windows_round_trip(grid, shift):
    x = torch.randn(2, *grid, 5)
    windows, padded = S.to_windows(x, (4, 4, 4), shift)
    assert padded == S.padded_grid(grid, (4, 4, 4))
    assert windows.shape == (2 * math.prod(p // 4 for p in padded), 64, 5)
    assert torch.equal(S.from_windows(windows, (4, 4, 4), shift, batch=2, grid=grid), x)
    # integer label grids go through the same path (geometry code pads with its own value)
    labels = torch.zeros(1, *grid, 1, dtype=torch.uint8)
    lw, _ = S.to_windows(labels, (4, 4, 4), shift, pad_value=2)
    assert int((lw == 2).sum()) == math.prod(padded) - math.prod(grid)


def _token_positions(grid, window, shift):
    """Flat grid index of every window slot (-1 for padding) from the shared geometry API."""
    geom = BlockGeometry(stage=0, block=1, grid=grid, window=window, shift=shift, heads=3, channels=12)
    return token_positions(get_adapter("smit"), geom)


def test_token_positions_match_brute_force():
    grid, window, shift = (6, 5, 7), (4, 4, 4), (2, 2, 2)
    idx = _token_positions(grid, window, shift)
    slots, _ = _slot_sources(grid, window, shift)
    expected = [[-1 if src is None else (src[0] * grid[1] + src[1]) * grid[2] + src[2] for _, _, src in row]
                for row in slots]
    assert idx.tolist() == expected


@pytest.mark.parametrize(("padded", "window", "shift"), [
    ((8, 8, 12), (4, 4, 4), (2, 2, 2)), ((8, 4, 8), (4, 4, 4), (2, 0, 2)), ((4, 8, 2), (4, 4, 2), (0, 2, 0))])
def test_shifted_window_mask_matches_monai(padded, window, shift):
    from monai.networks.nets.swin_unetr import compute_mask

    ours = S.shifted_window_mask(padded, window, shift)
    assert torch.equal(ours, compute_mask(list(padded), window, shift, "cpu"))
    assert S.shifted_window_mask(padded, window, (0, 0, 0)) is None


def test_relative_position_index_and_shrunk_windows():
    from monai.networks.nets.swin_unetr import WindowAttention

    full = S.relative_position_index((4, 4, 4))
    assert torch.equal(full, WindowAttention(12, 3, (4, 4, 4)).relative_position_index)
    attn = S.WindowAttention(12, 3, (4, 4, 4))
    assert attn.use_flash_attention is False
    assert isinstance(attn.softmax, torch.nn.Softmax) and attn.softmax.dim == -1
    assert torch.equal(attn.bias_index((4, 4, 4)), full)
    # a shrunk window uses the offsets of the full table: same rows as any full-window pair
    # with the same offset
    small = attn.bias_index((4, 4, 2))
    coords = [(a, b, c) for a in range(4) for b in range(4) for c in range(2)]
    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            r = [p - q + 3 for p, q in zip(ci, cj)]
            assert small[i, j] == (r[0] * 7 + r[1]) * 7 + r[2]


def test_merge_patches_order():
    x = torch.arange(2 * 4 * 4 * 4 * 3, dtype=torch.float32).reshape(2, 4, 4, 4, 3)
    merged = S.merge_patches(x)
    assert merged.shape == (2, 2, 2, 2, 24)
    order = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)]
    for slot, (i, j, k) in enumerate(order):
        assert torch.equal(merged[..., 3 * slot:3 * slot + 3], x[:, i::2, j::2, k::2]), slot


def test_stage_grids_and_geometry_paths(tiny_model):
    assert tiny_model.stage_grids((96, 128, 64)) == ((48, 64, 32), (24, 32, 16), (12, 16, 8), (6, 8, 4))
    with pytest.raises(ShapeError):
        tiny_model.stage_grids((96, 128, 60))
    adapter = adapter_for(tiny_model)
    geo = adapter.geometry(tiny_model, (64, 64, 32))
    assert adapter.blocks(tiny_model)[-1].block_path == "transformer.layers.3.blocks.1"
    assert geo[-1].name == "stage3.block1" and geo[-1].window == (4, 4, 2)
    assert geo[-1].shift == (0, 0, 0) and geo[-1].n_tokens == 32
