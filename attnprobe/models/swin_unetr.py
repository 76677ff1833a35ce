"""Adapter for MONAI's SwinUNETR (v1 and ``use_v2=True``).

Facts this adapter relies on (docs/definitions.md): blocks live at
``swinViT.layers{s+1}.0.blocks.{b}``, attention probabilities come out of
``...attn.softmax``, block outputs are channel-last ``(B, X, Y, Z, C)``, and window
padding / shrinking / partition are MONAI's own functions, which we call rather than copy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from monai.networks.nets import swin_unetr as monai_swin
from torch import nn

from attnprobe.errors import CheckpointError
from attnprobe.models.adapter import Adapter, BlockRef, Triple, unwrap_state_dict
from attnprobe.models.compat import check_compat
from attnprobe.models.registry import register_adapter

_MODEL_KEYS = (
    "in_channels", "out_channels", "feature_size", "depths", "num_heads", "window_size",
    "use_v2", "norm_name", "downsample", "patch_norm", "use_checkpoint", "qkv_bias",
)

_BASE = {
    "in_channels": 1,
    "out_channels": 2,
    "feature_size": 48,
    "depths": (2, 2, 2, 2),
    "num_heads": (3, 6, 12, 24),
    "window_size": 7,
    "use_v2": False,
    "norm_name": "instance",
    "downsample": "merging",
    "patch_norm": False,
    "use_checkpoint": False,
    "qkv_bias": True,
    "roi": (96, 96, 96),
}

#: Sub-voxel offsets (x, y, z) that MONAI < 1.5's ``PatchMerging`` concatenated: (0,1,0) and (0,0,1)
#: twice, (1,1,0) and (0,1,1) never (MONAI issue #8284, fixed in 1.5). Every Swin UNETR checkpoint
#: trained before 1.5 needs it (docs/compat.md).
LEGACY_MERGE_OFFSETS: tuple[Triple, ...] = (
    (0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 0), (0, 0, 1), (1, 1, 1),
)

#: Heads of MONAI's self-supervised model that a segmentation model has no place for.
SSL_HEADS = ("rotation_pre.", "rotation_head.", "contrastive_pre.", "contrastive_head.", "conv.")


class LegacyPatchMerging(monai_swin.PatchMergingV2):
    """MONAI's 3D ``PatchMerging`` as it computed before 1.5 (``compat="original"``).

    Same parameters (``norm``, ``reduction``) as MONAI's, so checkpoints load unchanged; only the
    concatenation order differs: :data:`LEGACY_MERGE_OFFSETS`.
    """

    merge_offsets: tuple[Triple, ...] = LEGACY_MERGE_OFFSETS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            return super().forward(x)
        _, d, h, w, _ = x.shape
        if d % 2 or h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2, 0, d % 2))
        x = torch.cat([x[:, i::2, j::2, k::2, :] for i, j, k in self.merge_offsets], dim=-1)
        return self.reduction(self.norm(x))

_BLOCK_KEY = re.compile(r"^swinViT\.layers(\d)\.0\.blocks\.(\d+)\.")
_TABLE_KEY = re.compile(r"^swinViT\.layers(\d)\.0\.blocks\.0\.attn\.relative_position_bias_table$")


@register_adapter
class SwinUNETRAdapter(Adapter):
    name = "swin_unetr"
    default_preset = "swin_unetr"
    compat_modes = ("original", "current")
    presets = {
        # The CT self-supervised configuration (model_swinvit.pt): feature 48, ROI 96^3.
        "swin_unetr": dict(_BASE),
        "swin_unetr_v2": {**_BASE, "use_v2": True},
        # Small enough for CPU tests: feature 12, 64x64x32 inputs.
        "tiny": {**_BASE, "feature_size": 12, "roi": (64, 64, 32)},
        "tiny_v2": {**_BASE, "feature_size": 12, "roi": (64, 64, 32), "use_v2": True},
    }

    def recognizes(self, model: nn.Module) -> bool:
        return isinstance(model, SwinUNETR)

    def _construct(self, config: Mapping[str, Any]) -> nn.Module:
        kwargs = {k: config[k] for k in _MODEL_KEYS if k in config}
        kwargs["depths"] = tuple(kwargs["depths"])
        kwargs["num_heads"] = tuple(kwargs["num_heads"])
        if check_compat(config.get("compat", "current")) == "original" and kwargs.get("downsample") == "merging":
            kwargs["downsample"] = LegacyPatchMerging  # the order pre-1.5 checkpoints were trained with
        return SwinUNETR(spatial_dims=3, **kwargs)

    # ---- checkpoints ----------------------------------------------------------------
    def normalize_state_dict(self, raw: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
        sd, fmt = unwrap_state_dict(raw)
        if not any(k.startswith("swinViT.") for k in sd) and any(
            k.startswith(("patch_embed.", "layers1.")) for k in sd
        ):
            # MONAI's self-supervised layout (model_swinvit.pt): encoder keys without the
            # ``swinViT.`` prefix and MLP layers named fc1/fc2.
            mapped = {}
            for k, v in sd.items():
                if k.startswith(("patch_embed.", "layers")):
                    k = "swinViT." + k.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
                mapped[k] = v
            return mapped, "monai_ssl"
        return sd, fmt

    def infer_config(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        proj = state_dict.get("swinViT.patch_embed.proj.weight")
        if proj is None:
            raise CheckpointError(
                "cannot infer the SwinUNETR size: no patch embedding in the checkpoint",
                expected="a key 'swinViT.patch_embed.proj.weight' (or 'module.patch_embed.proj.weight')",
                got=f"{len(state_dict)} keys, e.g. {sorted(state_dict)[:3]}",
                fix="check --arch; this may be a checkpoint of another architecture",
            )
        cfg["feature_size"], cfg["in_channels"] = int(proj.shape[0]), int(proj.shape[1])
        blocks: dict[int, set[int]] = {}
        heads: dict[int, int] = {}
        window = None
        for key, value in state_dict.items():
            if m := _BLOCK_KEY.match(key):
                blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
            if m := _TABLE_KEY.match(key):
                heads[int(m.group(1))] = int(value.shape[1])
                side = round(value.shape[0] ** (1 / 3))
                window = (side + 1) // 2
        if sorted(blocks) == [1, 2, 3, 4]:
            cfg["depths"] = tuple(len(blocks[i]) for i in range(1, 5))
        if sorted(heads) == [1, 2, 3, 4]:
            cfg["num_heads"] = tuple(heads[i] for i in range(1, 5))
        if window is not None:
            cfg["window_size"] = window
        cfg["use_v2"] = any(k.startswith("swinViT.layers1c.") for k in state_dict)
        out = state_dict.get("out.conv.conv.weight")
        if out is not None:
            cfg["out_channels"] = int(out.shape[0])
        return cfg

    def is_known_extra_key(self, key: str) -> bool:
        return key.startswith(SSL_HEADS)

    def merge_offsets(self, model: nn.Module, stage: int) -> tuple[Triple, ...] | None:
        # the merging sits beside the stage's blocks: ``...layers{s+1}.0.downsample``
        first = next(ref for ref in self.blocks(model) if ref.stage == stage)
        layer = model.get_submodule(first.block_path.rsplit(".blocks.", 1)[0])
        return getattr(getattr(layer, "downsample", None), "merge_offsets", None)

    def is_backbone_key(self, key: str) -> bool:
        # v2's residual conv blocks (layers{i}c) are new in v2 and absent from CT pretraining.
        return key.startswith("swinViT.") and not re.match(r"swinViT\.layers\dc\.", key)

    # ---- structure ------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> list[BlockRef]:
        vit = model.swinViT
        refs = []
        for s in range(4):
            for b, _ in enumerate(getattr(vit, f"layers{s + 1}")[0].blocks):
                path = f"swinViT.layers{s + 1}.0.blocks.{b}"
                refs.append(BlockRef(s, b, path, f"{path}.attn.softmax", f"{path}.attn"))
        return refs

    def shrink_window(self, grid: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
        return monai_swin.get_window_size(grid, window, shift)

    def window_partition(self, x: torch.Tensor, window: Triple) -> torch.Tensor:
        return monai_swin.window_partition(x, window)
