"""The probe: bit-identical forwards, no leaked hooks, loud failures."""

from __future__ import annotations

import pytest
import torch

from attnprobe.capture import Probe
from attnprobe.errors import ShapeError, TapError
from attnprobe.models import build_model, get_adapter


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("compat", ["current", "original"])
@pytest.mark.parametrize(("arch", "preset"), [("swin_unetr", "tiny"), ("swin_unetr", "tiny_v2"), ("smit", "tiny")])
def test_hooked_forward_is_bit_identical(arch, preset, compat):
    torch.manual_seed(0)
    model = build_model(arch, preset=preset, compat=compat).eval()
    # the original SMIT code cannot run 64x64x32 (docs/compat.md); 64x64x64 has the same stage-1 grid in x, y
    x = torch.randn(1, 1, 64, 64, 64 if (arch, compat) == ("smit", "original") else 32)
    with torch.no_grad():
        plain = model(x)
        with Probe(model) as probe:
            hooked = probe.run(x)
        again = model(x)
    assert torch.equal(plain, hooked) and torch.equal(plain, again)
    assert hook_count(model) == 0
    geom = probe.context.geometry["stage0.block1"]
    assert probe.cache["stage0.block1.attn"].shape == (1, geom.n_windows, 3, geom.n_tokens, geom.n_tokens)
    assert probe.cache["stage1.block0.out"].shape == (1, 16, 16, x.shape[-1] // 4, 24)
    assert len(probe.cache) == 2 * sum(1 for _ in probe.adapter.blocks(model))
    # probabilities: every row sums to one
    rows = probe.cache["stage0.block0.attn"].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)


def test_flash_attention_is_switched_off_and_restored():
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny").eval()
    attn = get_adapter("swin_unetr").attention_modules(model)
    for m in attn:
        m.use_flash_attention = True
    x = torch.randn(1, 1, 64, 64, 32)
    with torch.no_grad():
        with Probe(model, ["stage0.block0.attn"]) as probe:
            assert not any(m.use_flash_attention for m in attn)
            hooked = probe.run(x)
        assert all(m.use_flash_attention for m in attn)
        for m in attn:
            m.use_flash_attention = False
        explicit = model(x)
    assert torch.equal(hooked, explicit)


def test_a_tap_that_never_fires_is_an_error():
    model = build_model("swin_unetr", preset="tiny").eval()
    adapter = get_adapter("swin_unetr")
    for m in adapter.attention_modules(model):
        m.use_flash_attention = True

    class Blind(type(adapter)):
        def attention_modules(self, model):  # pretend the flag cannot be switched
            return []

    with torch.no_grad(), Probe(model, ["stage0.block0.attn"], adapter=Blind()) as probe:
        with pytest.raises(TapError, match="never fired"):
            probe.run(torch.randn(1, 1, 64, 64, 32))
    assert hook_count(model) == 0


def test_a_tap_that_fires_twice_is_an_error():
    model = build_model("swin_unetr", preset="tiny").eval()
    inner = model.forward
    model.forward = lambda x: inner(x) + inner(x)
    with torch.no_grad(), Probe(model, ["stage3.*"]) as probe:
        with pytest.raises(TapError, match="fired twice"):
            probe.run(torch.randn(1, 1, 64, 64, 32))
    assert hook_count(model) == 0


def test_hooks_are_removed_when_the_forward_raises():
    model = build_model("swin_unetr", preset="tiny").eval()
    with pytest.raises(ShapeError, match="not divisible by 32"):
        with Probe(model) as probe:
            probe.run(torch.randn(1, 1, 64, 64, 40))
    assert hook_count(model) == 0


def test_unknown_tap_pattern_suggests_names():
    model = build_model("swin_unetr", preset="tiny")
    with pytest.raises(TapError, match="did you mean stage0.block1.attn"):
        Probe(model, ["stage0.blok1.attn"])


def test_gradient_checkpointing_recompute_is_not_a_second_firing():
    torch.manual_seed(0)
    model = build_model("swin_unetr", preset="tiny", use_checkpoint=True).train()
    x = torch.randn(1, 1, 64, 64, 32)
    with Probe(model, ["stage0.*"]) as probe:
        probe.run(x).sum().backward()
    assert set(probe.context.fired.values()) == {1}
    assert hook_count(model) == 0


def test_mask_reaches_the_token_kinds():
    model = build_model("swin_unetr", preset="tiny").eval()
    mask = torch.zeros(1, 1, 64, 64, 32, dtype=torch.bool)
    mask[..., :16] = True
    with torch.no_grad(), Probe(model, ["stage0.block0.attn"]) as probe:
        probe.run(torch.randn(1, 1, 64, 64, 32) * mask, mask=mask)
    kinds = probe.context.kinds["stage0.block0"]
    assert set(kinds.unique().tolist()) == {0, 1, 2}
    with pytest.raises(TapError, match="mask does not match"), torch.no_grad(), Probe(model) as probe:
        probe.run(torch.randn(1, 1, 64, 64, 32), mask=mask[..., :16])
