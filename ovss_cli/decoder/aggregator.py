"""One aggregator layer: spatial aggregation per class, then class aggregation per pixel."""

from __future__ import annotations

import torch
from torch import nn

from ovss_cli.decoder.class_attention import ClassAggregation
from ovss_cli.decoder.config import DecoderConfig
from ovss_cli.decoder.swin import SpatialAggregation


class AggregatorLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.spatial = SpatialAggregation(cfg.hidden_dim, cfg.appearance_guidance_dim, cfg.heads, cfg.window_size)
        self.classes = ClassAggregation(
            cfg.hidden_dim,
            cfg.text_guidance_dim,
            cfg.heads,
            pad_len=cfg.pad_len,
            pool_size=cfg.class_pool_size,
            pool_in_training=cfg.pool_class_attention_in_training,
            pool_at_test=cfg.pool_class_attention_at_test,
        )

    def forward(
        self, x: torch.Tensor, appearance_guidance: torch.Tensor, text_guidance: torch.Tensor
    ) -> torch.Tensor:
        """x: [B, T, H, W, C]; appearance_guidance: [B, H, W, Ga]; text_guidance: [B, T, Gt]."""
        return self.classes(self.spatial(x, appearance_guidance), text_guidance)
