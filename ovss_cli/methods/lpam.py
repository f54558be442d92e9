"""LPAM, InfoCLIP's Learnable Pixel-Text Alignment Module.

Per image, from dense patch embeddings D_V [HW, d] and class text embeddings D_L [N_C, d]:

    Ẑ_V = LN_V(D_V),  Ẑ_L = LN_L(D_L)
    Q = Ẑ_L W_q + b_q   (queries from the text),   K = Ẑ_V W_k + b_k   (keys from the patches)
    S = Q Kᵀ / √d + Ẑ_L Ẑ_Vᵀ        [N_C, HW]

The residual term keeps the (LayerNorm'd) raw pixel-text similarity, so the learnt projections
only refine it. The alignment vector of the paper is r = vec(S)/||vec(S)||; the Gram matrices
of `ovss_cli.losses` L2-normalise every item, so the module returns S itself.
2d² + 6d parameters: 527,360 for d = 512 (ViT-B), 1,184,256 for d = 768 (ViT-L).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PixelTextAlignment(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm_patches = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """patches [B, HW, d], text [N_C, d] (shared) or [B, N_C, d] -> alignment scores S [B, N_C, HW]."""
        patches = self.norm_patches(patches)
        text = self.norm_text(text)
        if text.dim() == 2:
            text = text.expand(patches.shape[0], -1, -1)
        learnt = self.query(text) @ self.key(patches).transpose(1, 2) * self.scale
        return learnt + text @ patches.transpose(1, 2)
