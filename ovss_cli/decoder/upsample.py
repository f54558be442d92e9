"""Upsampling decoder: x2 stages guided by intermediate CLIP block outputs, then one logit per class.

Stage i doubles the resolution of every class map with a 2x2 stride-2 transposed conv,
concatenates a guidance map made from CLIP block `guidance_layers[i]` (transposed conv by
2^(i+1), 3x3 conv + ReLU), and runs (3x3 conv, GroupNorm, ReLU) twice; the weights are laid out
as in CAT-Seg. Two exact rewrites make the per-class part cheap:

- The first 3x3 conv is linear and bias-free, so on the concatenation it is a conv of the class
  maps plus a conv of the guidance; the latter is the same for every class and runs once per image.
- Nothing non-linear sits between the transposed conv and that conv, so the pair is one linear
  map: a transposed conv with a 4x4 kernel, stride 2 and padding 1 (upsampled row 2r + p, read by
  tap dy of the 3x3 conv, lands on output row 2r + k - 1 with k = p - dy + 2). That is about half
  the multiply-adds of the pair and no 2x upsampled intermediate in memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss_cli.decoder.logit_head import LogitHead


def composition_taps(device=None) -> torch.Tensor:
    """0/1 tensor [k, dy, p]: tap dy of a 3x3 conv (padding 1) on a 2x2 stride-2 upsampled map reads
    sub-pixel p of a coarse pixel through tap k = p - dy + 2 of the composed 4x4 transposed conv."""
    taps = torch.zeros(4, 3, 2, device=device)
    for dy in range(3):
        for p in range(2):
            taps[p - dy + 2, dy, p] = 1
    return taps


def composed_kernel(up_weight: torch.Tensor, conv_weight: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Transposed-conv kernel [C, M, 4, 4] (stride 2, padding 1) equal to conv3x3(convT2x2s2(x)), for
    up_weight [C, O, 2, 2] (ConvTranspose2d layout) and conv_weight [M, O, 3, 3] (padding 1, no biases).
    Composed in the weights' precision (autocast off): the transposed conv that uses it casts once."""
    with torch.autocast(device_type=up_weight.device.type, enabled=False):
        pair = torch.einsum("moyx,copq->cmyxpq", conv_weight, up_weight)
        taps = taps.to(pair.dtype)
        return torch.einsum("cmyxpq,kyp,lxq->cmkl", pair, taps, taps)


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
        self.register_buffer("taps", composition_taps(), persistent=False)

    def upsample_then_conv(self, x: torch.Tensor) -> torch.Tensor:
        """conv1's class-map part applied to up(x) without its bias: [N, width, H, W] -> [N, out, 2H, 2W]."""
        kernel = composed_kernel(self.up.weight, self.conv1.weight[:, : self.up_channels], self.taps)
        return F.conv_transpose2d(x, kernel, stride=2, padding=1)

    def constant_maps(self, guidance: torch.Tensor) -> torch.Tensor:
        """What conv1 adds independently of the class maps: its guidance part plus the transposed conv's bias
        (zero-padded at the border, as conv1 pads the upsampled map): [B, G, 2H, 2W] -> [B, out, 2H, 2W]."""
        bias = self.up.bias.view(1, -1, 1, 1).expand(1, -1, *guidance.shape[-2:])
        from_bias = F.conv2d(bias, self.conv1.weight[:, : self.up_channels], padding=1)
        return F.conv2d(guidance, self.conv1.weight[:, self.up_channels :], padding=1) + from_bias

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B*T, width, H, W]; guidance: [B, guidance_dim, 2H, 2W] -> [B*T, out_dim, 2H, 2W]."""
        x = self.upsample_then_conv(x)
        b = guidance.shape[0]
        # added as [image, class, row, column, channel], the order of channels-last memory, so that the backward's
        # sum over classes reads whole contiguous maps (as [B, T, C, H, W] it is a strided reduction, 5x slower)
        shared = self.constant_maps(guidance).to(x.dtype).permute(0, 2, 3, 1)[:, None]
        x = (x.permute(0, 2, 3, 1).unflatten(0, (b, -1)) + shared).flatten(0, 1).permute(0, 3, 1, 2)
        # in place: GroupNorm's backward needs its input, not its output
        x = F.relu(self.norm1(x), inplace=True)
        return F.relu(self.norm2(self.conv2(x)), inplace=True)


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
        self.head = LogitHead(decoder_dims[-1])

    def forward(self, x: torch.Tensor, clip_blocks: list[torch.Tensor]) -> torch.Tensor:
        """x: [B*T, hidden, h, w]; clip_blocks: [B, vision_width, h, w] each -> [B*T, 1, h*2^n, w*2^n]."""
        x = x.contiguous(memory_format=torch.channels_last)  # as the aggregator leaves it: no copy in training
        for stage, upsampler, projection, block in zip(
            self.stages, self.guidance_upsamplers, self.guidance_projections, clip_blocks
        ):
            x = stage(x, projection(upsampler(block)))
        return self.head(x)
