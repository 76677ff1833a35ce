"""``compat``: published checkpoints computed exactly as their training code did.

The references here are written from the published facts (docs/compat.md), in the style of the
original code, and share nothing with attnprobe's own modules except the weights.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import PatchMergingV2

from attnprobe.errors import CheckpointError, ConfigError, ShapeError
from attnprobe.models import CompatNotice, build_model, get_adapter, load_checkpoint
from attnprobe.models.checkpoints import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def moved(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """The model with every float parameter moved well away from its initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return model.eval()


# ---- Swin UNETR: MONAI < 1.5 patch merging -------------------------------------------------

class OldMonaiMerging(PatchMergingV2):
    """MONAI < 1.5's 3D PatchMerging, from the fact: x0..x7 at (0,0,0) (1,0,0) (0,1,0) (0,0,1)
    (1,0,1) (0,1,0) (0,0,1) (1,1,1)."""

    def forward(self, x):
        x0 = x[:, 0::2, 0::2, 0::2, :]
        x1 = x[:, 1::2, 0::2, 0::2, :]
        x2 = x[:, 0::2, 1::2, 0::2, :]
        x3 = x[:, 0::2, 0::2, 1::2, :]
        x4 = x[:, 1::2, 0::2, 1::2, :]
        x5 = x[:, 0::2, 1::2, 0::2, :]
        x6 = x[:, 0::2, 0::2, 1::2, :]
        x7 = x[:, 1::2, 1::2, 1::2, :]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3, x4, x5, x6, x7], -1)))


def monai_swin(downsample) -> SwinUNETR:
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24),
                     window_size=7, downsample=downsample, spatial_dims=3).eval()


@pytest.fixture(scope="module")
def swin_weights():
    torch.manual_seed(0)
    return moved(build_model("swin_unetr", preset="tiny")).state_dict()


@pytest.mark.parametrize("compat", ["original", "current"])
def test_swin_logits_equal_the_monai_of_its_mode(swin_weights, compat):
    ours = build_model("swin_unetr", preset="tiny", compat=compat).eval()
    ours.load_state_dict(swin_weights)
    reference = monai_swin(OldMonaiMerging if compat == "original" else "merging")
    reference.load_state_dict(swin_weights)
    x = torch.randn(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_swin_modes_differ_after_the_first_merge(swin_weights):
    x = torch.randn(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(3))
    outs = {}
    for compat in ("original", "current"):
        model = build_model("swin_unetr", preset="tiny", compat=compat).eval()
        model.load_state_dict(swin_weights)
        with torch.no_grad():
            outs[compat] = model.swinViT(x, normalize=False)
    assert torch.equal(outs["original"][0], outs["current"][0])  # before any merge
    for stage in (1, 2, 3):
        a, b = outs["original"][stage], outs["current"][stage]
        assert (a - b).norm() / b.norm() > 0.05, stage


# ---- SMIT: the original block ---------------------------------------------------------------

def original_smit_block(block, x: torch.Tensor):
    """One SMIT block as the original code computes it, from the facts alone.

    ``x`` is ``(B, H, W, T, C)``. Window 4 and shift 2 always (no shrinking); padding with the
    first and last axes' amounts swapped; partition ``view(B, H/w, w, W/w, w, T/w, w, C)`` ->
    permute (0,1,3,5,2,4,6,7); merge-back ``view(B, H/w, W/w, T/w, w, w, w, C)`` -> permute
    (0,1,3,5,2,4,6,7) -> ``view(B, H, W, T, C)``. Returns (output, attention probabilities).
    """
    B, H, W, T, C = x.shape
    w = block.window_size[0]
    s = w // 2 if block.shift_size[0] else 0
    heads = block.num_heads
    shortcut = x
    h = block.norm1(x)
    pad_h, pad_w, pad_t = (-H) % w, (-W) % w, (-T) % w
    h = F.pad(h, (0, 0, 0, pad_h, 0, pad_w, 0, pad_t))  # the swap: T gets H's amount, H gets T's
    _, Hp, Wp, Tp, _ = h.shape
    if s:
        h = torch.roll(h, shifts=(-s, -s, -s), dims=(1, 2, 3))
    win = h.view(B, Hp // w, w, Wp // w, w, Tp // w, w, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    win = win.contiguous().view(-1, w * w * w, C)
    # attention with the relative position bias and, shifted, the -100 region mask
    attn_mod = block.attn
    qkv = attn_mod.qkv(win).reshape(win.shape[0], w**3, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * attn_mod.scale, qkv[1], qkv[2]
    logits = q @ k.transpose(-2, -1)
    coords = torch.stack(torch.meshgrid(*[torch.arange(w)] * 3, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)
    index = rel[..., 0] * (2 * w - 1) ** 2 + rel[..., 1] * (2 * w - 1) + rel[..., 2]
    bias = attn_mod.relative_position_bias_table[index.reshape(-1)].view(w**3, w**3, -1).permute(2, 0, 1)
    logits = logits + bias[None]
    if s:
        Hm, Wm, Tm = (-(-g // w) * w for g in (H, W, T))
        img = torch.zeros(1, Hm, Wm, Tm, 1)
        cnt = 0
        cuts = (slice(0, -w), slice(-w, -s), slice(-s, None))
        for a, b, c in itertools.product(cuts, cuts, cuts):
            img[:, a, b, c, :] = cnt
            cnt += 1
        mw = img.view(1, Hm // w, w, Wm // w, w, Tm // w, w, 1).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, w**3)
        mask = (mw[:, None, :] - mw[:, :, None]).ne(0).float() * -100.0
        nw = mask.shape[0]
        logits = (logits.view(-1, nw, heads, w**3, w**3) + mask[None, :, None]).view(-1, heads, w**3, w**3)
    probs = logits.softmax(-1)
    out = attn_mod.proj((probs @ v).transpose(1, 2).reshape(win.shape[0], w**3, C))
    merged = out.view(B, Hp // w, Wp // w, Tp // w, w, w, w, C).permute(0, 1, 3, 5, 2, 4, 6, 7)
    merged = merged.contiguous().view(B, Hp, Wp, Tp, C)
    if s:
        merged = torch.roll(merged, shifts=(s, s, s), dims=(1, 2, 3))
    merged = merged[:, :H, :W, :T]
    y = shortcut + merged
    return y + block.mlp(block.norm2(y)), probs


@pytest.fixture(scope="module")
def smit_original():
    torch.manual_seed(0)
    return moved(build_model("smit", preset="tiny", compat="original"), seed=2)


def run_blocks(model, x):
    """Every block's input, output and attention from one forward of the full model."""
    adapter = get_adapter("smit")
    seen, handles = {}, []
    for ref in adapter.blocks(model):
        block = model.get_submodule(ref.block_path)

        def hook(module, args, output, name=ref.name):
            seen[name] = {"in": args[0], "out": output}

        def soft(module, args, output, name=ref.name):
            seen.setdefault(name + ".attn", output)

        handles += [block.register_forward_hook(hook), model.get_submodule(ref.softmax_path).register_forward_hook(soft)]
    try:
        with torch.no_grad():
            model.transformer(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_smit_original_blocks_equal_the_original_code_at_128x128x64(smit_original):
    x = torch.randn(1, 1, 128, 128, 64, generator=torch.Generator().manual_seed(4))
    seen = run_blocks(smit_original, x)
    adapter = get_adapter("smit")
    for ref in adapter.blocks(smit_original):
        block = smit_original.get_submodule(ref.block_path)
        with torch.no_grad():
            expected, probs = original_smit_block(block, seen[ref.name]["in"])
        torch.testing.assert_close(seen[ref.name]["out"], expected, rtol=1e-5, atol=1e-5, msg=ref.name)
        torch.testing.assert_close(seen[ref.name + ".attn"], probs, rtol=1e-5, atol=1e-6, msg=ref.name)
    # stage 3 (grid 8x8x4): the original keeps the shift on z, MONAI's rule drops it
    geom = {g.name: g for g in adapter.geometry(smit_original, (128, 128, 64))}
    assert geom["stage3.block1"].shift == (2, 2, 2)
    current = build_model("smit", preset="tiny", compat="current")
    assert {g.name: g for g in adapter.geometry(current, (128, 128, 64))}["stage3.block1"].shift == (2, 2, 0)


def test_smit_original_at_96x96x64_fails_where_the_original_code_fails(smit_original):
    """Stage 3's grid (6, 6, 4) needs padding 2 on the first axis and 0 on the last: the original
    code swaps them and its window partition fails; attnprobe says so instead of computing anything."""
    x = torch.randn(1, 1, 96, 96, 64, generator=torch.Generator().manual_seed(5))
    with pytest.raises(ShapeError, match="original SMIT code cannot run"):
        run_blocks(smit_original, x)
    stage3 = smit_original.transformer.layers[3].blocks[0]
    with pytest.raises(RuntimeError):  # the reference fails there too
        original_smit_block(stage3, torch.randn(1, 6, 6, 4, stage3.dim))
    # stages 0-2 equal the original code (run them alone)
    enc = smit_original.transformer
    with torch.no_grad():
        h = enc.patch_embed(x)
        for stage in enc.layers[:3]:
            for block in stage.blocks:
                expected, _ = original_smit_block(block, h)
                h = block(h)
                torch.testing.assert_close(h, expected, rtol=1e-5, atol=1e-5)
            h = stage.downsample(h)
    with pytest.raises(ShapeError, match="original SMIT code"):
        get_adapter("smit").geometry(smit_original, (96, 96, 64))


def test_the_original_merge_scrambles_most_tokens():
    from attnprobe.models.smit import window_partition, window_reverse

    grid = torch.arange(8**3, dtype=torch.float32).reshape(1, 8, 8, 8, 1)
    windows = window_partition(grid, (4, 4, 4))
    back = window_reverse(windows, (4, 4, 4), batch=1, padded=(8, 8, 8), compat="original")
    assert torch.equal(window_reverse(windows, (4, 4, 4), batch=1, padded=(8, 8, 8)), grid)
    # independent: where the original view/permute/view sends each token, in plain Python
    w, n = 4, 2
    moved_tokens = 0
    flat = np.arange(8**3).reshape(8, 8, 8)
    order = []
    for nd, nh, nw_ in itertools.product(range(n), repeat=3):  # partition: windows, then offsets
        for a, b, c in itertools.product(range(w), repeat=3):
            order.append(flat[nd * w + a, nh * w + b, nw_ * w + c])
    as_view = np.array(order).reshape(n, n, n, w, w, w)  # read back as (nd, nh, nw, wd, wh, ww)
    scrambled = as_view.transpose(0, 2, 4, 1, 3, 5).reshape(8, 8, 8)  # permute (0,1,3,5,2,4,6,7) sans batch/C
    np.testing.assert_array_equal(back[0, ..., 0].numpy(), scrambled)
    moved_tokens = int((scrambled != flat).sum())
    assert moved_tokens / 8**3 > 0.9  # ~97 % of the tokens end up elsewhere


# ---- SMIT: the paper's decoder with encoder5 -------------------------------------------------

def test_encoder5_layout_is_inferred_and_computed(tmp_path):
    torch.manual_seed(0)
    source = moved(build_model("smit", preset="tiny", encoder5=True), seed=6)
    path = tmp_path / "paper.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    model, report = load_checkpoint(path, "smit", compat="current")
    assert report.config["encoder5"] is True and not report.unexpected and not report.missing
    x = torch.randn(1, 1, 64, 64, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        h0, h1, h2, h3, h4 = model.transformer(x)
        dec = model.decoder5(model.encoder10(h4), model.encoder5(h3))  # x4 = encoder5(skip4)
        dec = model.decoder4(dec, model.encoder4(h2))
        dec = model.decoder3(dec, model.encoder3(h1))
        dec = model.decoder2(dec, model.encoder2(h0))
        expected = model.out(model.decoder1(dec, model.encoder1(x)))
        assert torch.equal(model(x), expected)
        assert torch.equal(model(x), source(x))
    # the reference layout has no encoder5
    plain = build_model("smit", preset="tiny")
    torch.save({"state_dict": plain.state_dict()}, tmp_path / "ref.pt")
    _, report = load_checkpoint(tmp_path / "ref.pt", "smit", compat="current")
    assert report.config["encoder5"] is False


# ---- defaults, notices, refusals ---------------------------------------------------------------

def test_compat_defaults_follow_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("smit", preset="tiny")
    assert model.attnprobe_config["compat"] == "current"  # built without a checkpoint
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": model.state_dict()}, foreign)
    with pytest.warns(CompatNotice, match="compat='original'.*--compat current"):
        loaded, report = load_checkpoint(foreign, "smit")
    assert report.compat == "original" and loaded.attnprobe_config["compat"] == "original"
    assert loaded.transformer.layers[0].blocks[0].compat == "original"
    assert report.notice and "compat=original" in report.summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an explicit choice or a recorded one gives no notice
        assert load_checkpoint(foreign, "smit", compat="current")[1].compat == "current"
        mine = save_checkpoint(loaded, tmp_path / "mine.pt")
        assert load_checkpoint(mine)[1].compat == "original"  # recorded
        assert load_checkpoint(mine)[1].compat_reason == "recorded in the checkpoint"
        # attnprobe checkpoints saved before compat was recorded computed 'current'
        raw = torch.load(mine, weights_only=True)
        del raw["attnprobe"]["config"]["compat"]
        torch.save(raw, tmp_path / "old.pt")
        assert load_checkpoint(tmp_path / "old.pt")[1].compat == "current"
        # files made by an attnprobe function (the demo's fixtures) say so in their info
        torch.save({"state_dict": model.state_dict(), "info": {"made_by": "attnprobe.demo.pipeline.x"}},
                   tmp_path / "made.pt")
        assert load_checkpoint(tmp_path / "made.pt", "smit")[1].compat == "current"
    with pytest.raises(ConfigError, match="unknown compat mode"):
        load_checkpoint(foreign, "smit", compat="legacy")
    with pytest.raises(ConfigError, match="unknown compat mode"):
        build_model("swin_unetr", preset="tiny", compat="old")


def test_unexpected_keys_are_an_error_unless_allowed(tmp_path):
    model = build_model("swin_unetr", preset="tiny")
    sd = dict(model.state_dict())
    sd["encoder5.layer.conv1.conv.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError, match="no place") as info:
        load_checkpoint(path, "swin_unetr", compat="current")
    assert "encoder5.layer.conv1.conv.weight" in str(info.value) and "--allow-partial" in str(info.value)
    _, report = load_checkpoint(path, "swin_unetr", compat="current", allow_partial=True)
    assert report.unexpected == ("encoder5.layer.conv1.conv.weight",)


def test_crop_recommendation_leaves_out_crops_the_original_code_cannot_run():
    import numpy as np

    from attnprobe.data.preprocess import PreprocessConfig, prepare_array
    from attnprobe.workflows.extent import extent_and_efficiency

    case = prepare_array(np.ones((40, 40, 20), np.float32), case_id="c",
                         config=PreprocessConfig(roi="full", spacing=None, crop_foreground=False))
    crops = [(128, 128, 96), (128, 128, 64)]  # stage-3 grids (8,8,6) and (8,8,4)
    with pytest.warns(UserWarning, match="left out crop"):
        _, eff = extent_and_efficiency([case], crops, arch="smit", model_preset="tiny", compat="original")
    assert set(eff["candidate"]) == {"128x128x64"}
    _, eff = extent_and_efficiency([case], crops, arch="smit", model_preset="tiny")
    assert set(eff["candidate"]) == {"128x128x96", "128x128x64"}


def test_an_adapter_without_original_mode():
    from examples.custom_adapter import SwinEncoderAdapter  # registers 'swin_encoder'

    with pytest.raises(ConfigError, match="no compat mode 'original'"):
        build_model(SwinEncoderAdapter.name, preset="tiny", compat="original")
    assert build_model(SwinEncoderAdapter.name, preset="tiny").attnprobe_config["compat"] == "current"
