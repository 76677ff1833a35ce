"""Register a new architecture: MONAI's bare SwinTransformer encoder (no decoder).

    python examples/custom_adapter.py

An adapter tells attnprobe where a model's blocks are and which window functions the model
uses; everything else (taps, geometry, capture, stores, ADI) then works unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.networks.nets import swin_unetr as monai_swin
from torch import nn

from attnprobe.capture import Probe
from attnprobe.metrics.flow import attention_flow
from attnprobe.models import BlockRef, build_model, register_adapter
from attnprobe.models.swin_unetr import SwinUNETRAdapter


class SwinEncoder(nn.Module):
    """A classification-style backbone: MONAI's SwinTransformer plus a pooled linear head."""

    def __init__(self, *, feature_size: int = 12, classes: int = 2, window_size: int = 7) -> None:
        super().__init__()
        self.vit = monai_swin.SwinTransformer(
            in_chans=1, embed_dim=feature_size, window_size=(window_size,) * 3, patch_size=(2, 2, 2),
            depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24))
        self.head = nn.Linear(feature_size * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit(x)[-1].mean(dim=(2, 3, 4)))


@register_adapter
class SwinEncoderAdapter(SwinUNETRAdapter):
    """Same blocks and window functions as Swin UNETR, under ``vit.`` instead of ``swinViT.``."""

    name = "swin_encoder"
    default_preset = "tiny"
    presets = {"tiny": {"feature_size": 12, "classes": 2, "window_size": 7, "roi": (64, 64, 32)}}
    # _construct below builds installed MONAI's encoder only: no 'original' mode to offer
    compat_modes = ("current",)

    def _construct(self, config: Mapping[str, Any]) -> nn.Module:
        return SwinEncoder(feature_size=config["feature_size"], classes=config["classes"],
                           window_size=config["window_size"])

    def blocks(self, model: nn.Module) -> list[BlockRef]:
        refs = []
        for s in range(4):
            for b, _ in enumerate(getattr(model.vit, f"layers{s + 1}")[0].blocks):
                path = f"vit.layers{s + 1}.0.blocks.{b}"
                refs.append(BlockRef(s, b, path, f"{path}.attn.softmax", f"{path}.attn"))
        return refs

    def is_backbone_key(self, key: str) -> bool:
        return key.startswith("vit.")


def main() -> float:
    torch.manual_seed(0)
    model = build_model("swin_encoder").eval()
    mask = torch.zeros(1, 1, 64, 64, 32, dtype=torch.bool)
    mask[..., :20] = True  # the last 12 axial voxels are input padding
    with torch.no_grad(), Probe(model, ["stage0.*.attn"]) as probe:
        probe.run(torch.randn(1, 1, 64, 64, 32) * mask, mask=mask)
    flow = attention_flow(probe.cache["stage0.block0.attn"], probe.context.kinds["stage0.block0"],
                          padding="input")
    adi = float(flow.adi[0])
    print(f"swin_encoder stage0.block0: ADI (input padding) = {adi:.3f}, SFR = {float(flow.sfr[0]):.3f}")
    return adi


if __name__ == "__main__":
    main()
