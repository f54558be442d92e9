"""Upsampling decoder: x2 stages guided by intermediate CLIP block outputs, then one logit per class.

Stage i doubles the resolution of every class map and concatenates a guidance map made from
CLIP block `guidance_layers[i]` (transposed conv by 2^(i+1), 3x3 conv + ReLU). The first conv of
the stage acts on that concatenation; being linear and bias-free it splits into a conv of the
class maps plus a conv of the guidance, and the latter is computed once per image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GuidedUpStage(nn.Module):
    """ConvTranspose x2 to (width - guidance) channels, concat guidance, (conv3x3-GN-ReLU) x 2."""

    def __init__(self, width: int, out_dim: int, guidance_dim: int) -> None:
        super().__init__()
        self.up_channels = width - guidance_dim
        self.up = nn.ConvTranspose2d(width, self.up_channels, kernel_size=2, stride=2)
        self.conv1 = nn.Conv2d(width, out_dim, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(out_dim // 16, out_dim)
        self.conv2 = nn.Conv2d(out_dim, out_dim, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(out_dim // 16, out_dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B*T, width, H, W]; guidance: [B, guidance_dim, 2H, 2W] -> [B*T, out_dim, 2H, 2W]."""
        x = F.conv2d(self.up(x), self.conv1.weight[:, : self.up_channels], padding=1)
        from_guidance = F.conv2d(guidance, self.conv1.weight[:, self.up_channels :], padding=1)
        b = guidance.shape[0]
        x = (x.view(b, -1, *x.shape[1:]) + from_guidance[:, None]).flatten(0, 1)
        x = F.relu(self.norm1(x))
        return F.relu(self.norm2(self.conv2(x)))


class GuidedUpsampler(nn.Module):
    """All upsampling stages, their guidance branches, and the per-class logit head."""

    def __init__(
        self,
        hidden_dim: int,
        vision_width: int,
        decoder_dims: list[int],
        guidance_dims: list[int],
        guidance_proj_dims: list[int],
    ) -> None:
        super().__init__()
        # CLIP block outputs at the patch grid -> the resolution of stage i (x 2^(i+1))
        self.guidance_upsamplers = nn.ModuleList(
            [
                nn.ConvTranspose2d(vision_width, dim, kernel_size=2 ** (i + 1), stride=2 ** (i + 1))
                for i, dim in enumerate(guidance_dims)
            ]
        )
        self.guidance_projections = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(dim, proj, kernel_size=3, padding=1), nn.ReLU())
                for dim, proj in zip(guidance_dims, guidance_proj_dims)
            ]
        )
        widths = [hidden_dim, *decoder_dims[:-1]]
        self.stages = nn.ModuleList(
            [GuidedUpStage(w, out, proj) for w, out, proj in zip(widths, decoder_dims, guidance_proj_dims)]
        )
        self.head = nn.Conv2d(decoder_dims[-1], 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, clip_blocks: list[torch.Tensor]) -> torch.Tensor:
        """x: [B*T, hidden, h, w]; clip_blocks: [B, vision_width, h, w] each -> [B*T, 1, h*2^n, w*2^n]."""
        for stage, upsampler, projection, block in zip(
            self.stages, self.guidance_upsamplers, self.guidance_projections, clip_blocks
        ):
            x = stage(x, projection(upsampler(block)))
        return self.head(x)
