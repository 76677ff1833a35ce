"""Adapter for attnprobe's own SMIT implementation (:mod:`attnprobe.models.smit`).

Checkpoint layouts (docs/definitions.md): fine-tuned models keep ``transformer.*`` and decoder keys under
``state_dict`` (possibly with a DataParallel ``module.`` prefix); self-supervised ones keep
the encoder under ``student`` with the prefix ``module.backbone.`` (no decoder).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from attnprobe.models import smit
from attnprobe.models.adapter import Adapter, BlockRef, Triple, unwrap_state_dict
from attnprobe.models.registry import register_adapter

_CONFIG_FIELDS = {f.name for f in dataclasses.fields(smit.SMITConfig)}

_BASE = {
    "in_channels": 1,
    "out_channels": 2,
    "embed_dim": 48,
    "depths": (2, 2, 8, 2),
    "num_heads": (4, 4, 8, 16),
    "window_size": 4,
    "patch_size": 2,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "norm_name": "instance",
    "encoder5": False,
    "roi": (128, 128, 128),
}

SSL_PREFIX = "module.backbone."
#: Heads of SMIT's self-supervised student that a segmentation model has no place for.
SSL_HEADS = ("head.", "head_cls.", "head_group.", "module.head.", "module.head_cls.", "module.head_group.")


@register_adapter
class SMITAdapter(Adapter):
    name = "smit"
    default_preset = "smit"
    compat_modes = ("original", "current")
    presets = {
        # The rectal-MRI configuration of docs/definitions.md (pretraining input 128^3).
        "smit": dict(_BASE),
        # Small enough for CPU tests.
        "tiny": {**_BASE, "embed_dim": 12, "depths": (2, 2, 2, 2), "num_heads": (3, 3, 3, 3),
                 "roi": (64, 64, 32)},
    }

    def recognizes(self, model: nn.Module) -> bool:
        return isinstance(model, smit.SMIT)

    def _construct(self, config: Mapping[str, Any]) -> nn.Module:
        kwargs = {k: v for k, v in config.items() if k in _CONFIG_FIELDS}
        return smit.SMIT(smit.SMITConfig(**kwargs))

    # ---- checkpoints ----------------------------------------------------------------
    def normalize_state_dict(self, raw: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
        if isinstance(raw.get("student"), Mapping):
            # self-supervised: encoder only, under module.backbone.
            sd = {}
            for key, value in raw["student"].items():
                if isinstance(value, torch.Tensor):
                    sd["transformer." + key[len(SSL_PREFIX):] if key.startswith(SSL_PREFIX) else key] = value
            return sd, "smit_ssl"
        return unwrap_state_dict(raw)

    def infer_config(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        encoder = {k: v for k, v in state_dict.items() if k.startswith("transformer.")}
        inferred = smit.smit_config_from_state_dict(encoder or state_dict)
        out = state_dict.get("out.conv.conv.weight")
        if out is not None:
            inferred["out_channels"] = int(out.shape[0])
        inferred.pop("feature_size", None)  # always equals embed_dim in this architecture
        # the paper's SMIT_3D_Seg adds encoder5 on the stage-3 skip; the reference layout has none
        inferred["encoder5"] = any(k.startswith("encoder5.") for k in state_dict)
        return inferred

    def is_backbone_key(self, key: str) -> bool:
        return key.startswith("transformer.")

    def is_known_extra_key(self, key: str) -> bool:
        # self-supervised (iBOT-style) heads and the masked-image token of the SSL student
        return key.startswith(SSL_HEADS) or key in ("transformer.mask_token", "mask_token")

    # ---- structure ------------------------------------------------------------------
    def blocks(self, model: nn.Module) -> list[BlockRef]:
        refs = []
        # an SMIT (attnprobe's module tree; nn.Module attributes are untyped)
        for s, stage in enumerate(cast(Any, model).transformer.layers):
            for b, _ in enumerate(stage.blocks):
                path = f"transformer.layers.{s}.blocks.{b}"
                refs.append(BlockRef(s, b, path, f"{path}.attn.softmax", f"{path}.attn"))
        return refs

    def shrink_window(self, grid: Triple, window: Triple, shift: Triple) -> tuple[Triple, Triple]:
        return smit.effective_window(grid, window, shift)

    def block_window(self, model: nn.Module, ref: BlockRef, grid: Triple) -> tuple[Triple, Triple]:
        # the block's own rule: it depends on the compat mode the model was built with
        return cast(smit.SMITBlock, model.get_submodule(ref.block_path)).window_for(grid)

    def window_partition(self, x: torch.Tensor, window: Triple) -> torch.Tensor:
        return smit.window_partition(x, window)

    def pad_to_window(self, x: torch.Tensor, window: Triple, value: float = 0.0) -> torch.Tensor:
        return smit.pad_to_window(x, window, value=value)
