"""Edits of the forward: key masks and token replacement, against brute force and hand-built tensors."""

from __future__ import annotations

import pytest
import torch

from attnprobe.capture import Probe
from attnprobe.capture.edits import (
    Intervention,
    MaskKeys,
    ReplaceTokens,
    key_mask,
    mask_logits,
    replace_tokens,
)
from attnprobe.capture.geometry import grid_token_kinds, token_kinds
from attnprobe.capture.intervene import Intervene
from attnprobe.errors import ConfigError, ShapeError, TapError
from attnprobe.metrics.reducers import FlowReducer
from attnprobe.models import build_model, get_adapter
from attnprobe.tokens import INPUT_PAD, REAL, WINDOW_PAD
from tests.helpers import assert_message

pytestmark = pytest.mark.usefixtures("one_thread")

ARCHS = ["swin_unetr", "smit"]
SHAPE = (64, 64, 32)


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def models():
    out = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        out[arch] = build_model(arch, preset="tiny").eval()
    return out


def padded_input(real_z: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """An input whose first ``real_z`` slices on z are real, the rest zero padding."""
    torch.manual_seed(seed)
    mask = torch.zeros(1, 1, *SHAPE, dtype=torch.bool)
    mask[..., :real_z] = True
    return torch.randn(1, 1, *SHAPE) * mask, mask


# --- the pure functions, on hand-built tensors -------------------------------------------------


def test_key_mask_selects_kinds_and_spares_windows_without_a_key_left():
    kinds = torch.tensor([[[REAL, INPUT_PAD, WINDOW_PAD, REAL],
                           [INPUT_PAD, INPUT_PAD, WINDOW_PAD, WINDOW_PAD],
                           [INPUT_PAD, INPUT_PAD, INPUT_PAD, WINDOW_PAD]]], dtype=torch.uint8)
    assert key_mask(kinds, "input").tolist() == [[[False, True, False, False], [True, True, False, False],
                                                  [True, True, True, False]]]
    assert key_mask(kinds, "window").tolist() == [[[False, False, True, False], [False, False, True, True],
                                                   [False, False, False, True]]]
    # windows 1 and 2 hold padding only: masking them whole would give NaN rows, so they stay
    assert key_mask(kinds, "all").tolist() == [[[False, True, True, False], [False] * 4, [False] * 4]]


def test_mask_logits_is_minus_inf_on_masked_keys_and_the_softmax_renormalises():
    logits = torch.randn(2 * 3, 2, 4, 4)  # sample 2, window 3, heads 2, N 4
    masked = torch.zeros(2, 3, 4, dtype=torch.bool)
    masked[1, 2, [0, 3]] = True
    out = mask_logits(logits, masked)
    assert torch.equal(out[:5], logits[:5]) and torch.isneginf(out[5, :, :, [0, 3]]).all()
    probs = torch.softmax(out, -1)
    expected = torch.softmax(logits[5][..., [1, 2]], -1)  # a softmax over the kept keys only
    assert torch.allclose(probs[5][..., [1, 2]], expected, atol=1e-7) and (probs[5][..., [0, 3]] == 0).all()
    with pytest.raises(ShapeError):
        mask_logits(logits, masked[:, :2])


def test_replace_tokens_by_zero_mean_and_patch():
    x = torch.arange(2 * 2 * 1 * 2 * 3, dtype=torch.float32).reshape(2, 2, 1, 2, 3)
    kinds = torch.tensor([[[[REAL, INPUT_PAD]], [[REAL, INPUT_PAD]]],
                          [[[INPUT_PAD, INPUT_PAD]], [[INPUT_PAD, INPUT_PAD]]]], dtype=torch.uint8)
    pad = (kinds == INPUT_PAD)[..., None]
    zero = replace_tokens(x, kinds, kind="input", value="zero")
    assert torch.equal(zero, torch.where(pad, 0.0, x))
    mean = replace_tokens(x, kinds, kind="input", value="mean-real")
    # sample 0: real tokens at (0,0,0) = [0,1,2] and (1,0,0) = [6,7,8] -> mean [3,4,5]
    expected0 = x[0].clone()
    expected0[0, 0, 1] = expected0[1, 0, 1] = torch.tensor([3.0, 4.0, 5.0])
    assert torch.equal(mean[0], expected0)
    assert torch.equal(mean[1], x[1])  # no real token in sample 1: nothing to average, left as is
    source = -x - 100
    patched = replace_tokens(x, kinds, kind="input", value="patch", source=source)
    assert torch.equal(patched, torch.where(pad, source, x))
    real = replace_tokens(x, kinds, kind="real", value="patch", source=source)
    assert torch.equal(real, torch.where(pad, x, source))
    with pytest.raises(ShapeError, match="patch source"):
        replace_tokens(x, kinds, kind="input", value="patch", source=source[:1])
    with pytest.raises(ShapeError, match="kinds do not fit"):
        replace_tokens(x, kinds[:1], kind="input", value="zero")


def test_edit_specs_check_their_options():
    with pytest.raises(ConfigError) as err:
        MaskKeys(blocks="*", kind="padding")  # type: ignore[arg-type]
    assert_message(err, "'padding'")
    with pytest.raises(ConfigError) as err:
        ReplaceTokens(value="patch")
    assert_message(err, "source")
    with pytest.raises(ConfigError):
        ReplaceTokens(value="zero", source={})
    with pytest.raises(ConfigError):
        ReplaceTokens(kind="window")  # type: ignore[arg-type]  # no window padding on the grid
    with pytest.raises(ConfigError):
        Intervention(name="")


# --- on the models -----------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_no_edit_is_bit_identical(models, arch):
    model = models[arch]
    x, mask = padded_input()
    with torch.no_grad():
        plain = model(x)
        with Intervene(model, Intervention(name="none")) as edit:
            empty = edit.run(x, mask=mask)
        # edits that select nothing: no input padding without a mask
        nothing = Intervention(name="nothing", edits=(MaskKeys(kind="input"), ReplaceTokens(kind="input")))
        with Intervene(model, nothing) as edit:
            noop = edit.run(x)
    assert torch.equal(plain, empty) and torch.equal(plain, noop)
    assert hook_count(model) == 0


def _logits_of(model, adapter, block: str, x: torch.Tensor) -> torch.Tensor:
    """The pre-softmax logits of one block in a plain forward, read by a hook of the test's own."""
    ref = next(r for r in adapter.blocks(model) if r.name == block)
    seen = []
    handle = model.get_submodule(ref.softmax_path).register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("block", ["stage0.block1", "stage1.block0", "stage2.block1"])
@pytest.mark.parametrize("arch", ARCHS)
def test_masked_block_equals_brute_force_softmax_over_real_keys(models, arch, block):
    model, adapter = models[arch], get_adapter(arch)
    x, mask = padded_input(real_z=20)
    logits = _logits_of(model, adapter, block, x)  # the edit is in this block only: upstream is unchanged
    geometry, kinds = token_kinds(model, mask)
    geom, k = geometry[block], kinds[block][0]  # (window, token)
    reducer = FlowReducer(padding_kinds=("all", "input"))
    iv = Intervention(name="m", edits=(MaskKeys(blocks=block, kind="all"),))
    with torch.no_grad(), Probe(model, [f"{block}.attn"], sinks=[reducer]) as probe, Intervene(model, iv) as edit:
        edit.run(x, mask=mask, probe=probe)
    probs = probe.cache[f"{block}.attn"][0]  # (window, head, query, key)
    assert torch.isfinite(probs).all()
    n_checked = 0
    for w in range(geom.n_windows):
        keep = (k[w] == REAL).nonzero().flatten()
        if keep.numel() == 0:  # a window of padding only is left unmasked: the plain softmax
            assert torch.allclose(probs[w], torch.softmax(logits[w], -1), atol=1e-6)
            continue
        brute = torch.zeros_like(logits[w])
        brute[..., keep] = torch.softmax(logits[w][..., keep], -1)
        assert torch.allclose(probs[w], brute, atol=1e-6), w
        n_checked += int(keep.numel() < geom.n_tokens)
    assert n_checked > 0  # some windows had padding keys to mask
    frame = reducer.frame()
    adi = frame[frame["metric"] == "adi"].set_index("kind")["value"]
    assert adi["all"] == 0.0 and adi["input"] == 0.0


@pytest.mark.parametrize("arch", ARCHS)
def test_masking_gives_adi_zero_only_where_masked_and_no_nan(models, arch):
    model = models[arch]
    x, mask = padded_input(real_z=4)  # most windows hold padding only
    iv = Intervention(name="m", edits=(MaskKeys(blocks="stage1.*", kind="all"),))
    plain, edited = FlowReducer(), FlowReducer()
    with torch.no_grad():
        with Probe(model, ["*.attn"], sinks=[plain], keep=False) as probe:
            probe.run(x, mask=mask)
        with Intervene(model, iv, measure_moved=True) as edit, Probe(model, ["*"], sinks=[edited]) as probe:
            out = edit.run(x, mask=mask, probe=probe)
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(v).all() for v in probe.cache.values())
    a, b = plain.frame(), edited.frame()
    key = ["stage", "block", "kind", "metric"]
    a = a[a["metric"] == "adi"].set_index(key)["value"]
    b = b[b["metric"] == "adi"].set_index(key)["value"]
    assert (b.xs(1, level="stage") == 0).all()
    assert (a.xs((1, "all"), level=["stage", "kind"]) > 0).all()
    assert torch.equal(torch.tensor(a.xs(0, level="stage").to_numpy()), torch.tensor(b.xs(0, level="stage").to_numpy()))
    assert set(edit.moved) == {"stage1.block0", "stage1.block1"}
    assert all(0 < float(v) < 1 for v in edit.moved.values())


@pytest.mark.parametrize("arch", ARCHS)
def test_mean_ablation_and_patching_of_a_block_output(models, arch):
    model = models[arch]
    x, mask = padded_input(real_z=20)
    other, _ = padded_input(real_z=20, seed=1)
    block = "stage1.block0"
    with torch.no_grad(), Probe(model, [f"{block}.out"]) as probe:
        probe.run(x, mask=mask)
        plain = probe.cache[f"{block}.out"]
        probe.run(other)
        source = dict(probe.cache)
    grid = grid_token_kinds(model, mask)[1]
    pad = (grid == INPUT_PAD)[..., None]
    assert pad.any() and (~pad).any()
    real = ~pad
    mean = (plain * real).sum(dim=(1, 2, 3), keepdim=True) / real.sum()
    cases = {"mean-real": torch.where(pad, mean, plain), "zero": torch.where(pad, 0.0, plain),
             "patch": torch.where(pad, source[f"{block}.out"], plain)}
    for value, expected in cases.items():
        edit_spec = ReplaceTokens(blocks=block, kind="input", value=value,  # type: ignore[arg-type]
                                  source=source if value == "patch" else None)
        # the probe is entered first: the edit still runs ahead of its out tap
        with torch.no_grad(), Probe(model, [f"{block}.out"]) as probe, Intervene(model, [edit_spec]) as edit:
            edit.run(x, mask=mask, probe=probe)
        assert torch.allclose(probe.cache[f"{block}.out"], expected, atol=1e-6), value
    assert hook_count(model) == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_are_removed_and_flash_restored_after_an_exception(models, arch):
    model, adapter = models[arch], get_adapter(arch)
    attn = adapter.attention_modules(model)
    for m in attn:
        m.use_flash_attention = True
    iv = Intervention(name="both", edits=(MaskKeys(blocks="*"), ReplaceTokens(blocks="*")))
    try:
        with pytest.raises(RuntimeError, match="boom"), Intervene(model, iv) as edit:
            assert not any(m.use_flash_attention for m in attn)
            x, mask = padded_input()
            with torch.no_grad():
                edit.run(x, mask=mask)
            raise RuntimeError("boom")
        assert hook_count(model) == 0 and all(m.use_flash_attention for m in attn)
        with pytest.raises(ShapeError, match="not divisible"), Intervene(model, iv) as edit:
            edit.run(torch.randn(1, 1, 64, 64, 40))
        assert hook_count(model) == 0
    finally:
        for m in attn:
            m.use_flash_attention = False


def test_errors_name_the_block_and_the_forward(models):
    model = models["swin_unetr"]
    with pytest.raises(TapError, match="did you mean stage1"):
        Intervene(model, [MaskKeys(blocks="stage1.blok0")])
    iv = Intervention(name="p", edits=(ReplaceTokens(blocks="stage0.block0", value="patch", source={}),))
    x, mask = padded_input()
    with pytest.raises(ConfigError, match="no values for stage0.block0"), torch.no_grad(), Intervene(model, iv) as e:
        e.run(x, mask=mask)
    assert hook_count(model) == 0
    with pytest.raises(TapError, match="not active"):
        Intervene(model, iv).run(torch.zeros(1, 1, *SHAPE))
    with pytest.raises(TapError, match="mask does not match"), Intervene(model, [MaskKeys()]) as e:
        e.run(x, mask=mask[..., :16])
