"""A WeCLIP-style segmentation decoder on frozen CLIP features: multi-layer fusion, a small transformer, a classifier.

Each chosen CLIP block's patch tokens [B, width, h, w] go through their own two-layer MLP
(Linear-ReLU-Linear) to `embed_dim`; the results are concatenated, fused by a 1x1 convolution
and Dropout2d, refined by pre-norm transformer layers over the h*w tokens, and classified by a
1x1 convolution. An optional 1x1 projection maps the refined features into CLIP's joint space,
where VPL's regional semantic contrast compares region embeddings with the vision prototypes.
"""

from __future__ import annotations

import torch
from torch import nn


class FusionDecoder(nn.Module):
    def __init__(self, in_width: int, num_layers: int, embed_dim: int, transformer_layers: int, heads: int,
                 dropout: float, num_classes: int, region_dim: int | None = None):
        super().__init__()
        self.layer_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(in_width, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
            for _ in range(num_layers))
        self.fuse = nn.Conv2d(embed_dim * num_layers, embed_dim, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(embed_dim, heads, dim_feedforward=4 * embed_dim, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(transformer_layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)
        self.region_head = nn.Conv2d(embed_dim, region_dim, kernel_size=1) if region_dim else None

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Block outputs, each [B, width, h, w] -> (logits [B, K, h, w], features [B, embed_dim, h, w])."""
        batch, _, height, width = features[0].shape
        projected = [mlp(f.flatten(2).transpose(1, 2)) for mlp, f in zip(self.layer_mlps, features)]  # [B, hw, E]
        x = torch.cat(projected, dim=-1).transpose(1, 2).reshape(batch, -1, height, width)
        x = self.dropout(self.fuse(x))
        tokens = x.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens)
        x = self.norm(tokens).transpose(1, 2).reshape(batch, -1, height, width)
        return self.classifier(x), x

    def region_features(self, features: torch.Tensor) -> torch.Tensor:
        """Fused features [B, embed_dim, h, w] -> CLIP's joint space [B, C, h, w] (for RSC)."""
        if self.region_head is None:
            raise RuntimeError("this decoder was built without a region head (vpl.rsc_weight is 0)")
        return self.region_head(features)
