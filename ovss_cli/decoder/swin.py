"""Spatial aggregation: Swin window attention run once per class, guided by the image feature.

The cost volume of every class is an independent image; all B x T of them go through the
window attention as one batch. The appearance guidance (one map per image) joins only the
query/key inputs. Because a linear layer on a concatenation is the sum of linear maps of its
parts, the guidance's contribution to q/k is computed once per image and broadcast over the
classes instead of concatenating T copies of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss_cli.errors import UsageError


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[N, H, W, C] -> [N * (H/window) * (W/window), window * window, C], windows in row-major order."""
    n, h, w, c = x.shape
    x = x.view(n, h // window, window, w // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: [N * nW, window * window, C] -> [N, H, W, C]."""
    c = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, c)


def shifted_window_mask(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Boolean [nW, window^2, window^2] mask (True = may attend) for windows of the rolled grid.

    After rolling by -shift, the last row/column of windows mixes tokens from opposite image
    borders; tokens may only attend within the same contiguous region of the original image.
    """

    def region_ids(size: int) -> torch.Tensor:
        ids = torch.zeros(size, dtype=torch.long, device=device)
        ids[size - window : size - shift] = 1
        ids[size - shift :] = 2
        return ids

    regions = region_ids(height)[:, None] * 3 + region_ids(width)[None, :]
    windows = window_partition(regions[None, :, :, None], window).squeeze(-1)  # [nW, window^2]
    return windows[:, :, None] == windows[:, None, :]


class GuidedWindowAttention(nn.Module):
    """Multi-head attention inside windows; q/k see [x, guidance], v sees x only."""

    def __init__(self, dim: int, guidance_dim: int, heads: int) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        # q/k act on the concatenation [x, guidance] (weights laid out as one Linear each)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def project_guidance(self, guidance: torch.Tensor) -> torch.Tensor:
        """Guidance part of q and k (biases included): [..., G] -> [..., 2 * dim]."""
        weight = torch.cat([self.q.weight[:, self.dim :], self.k.weight[:, self.dim :]], dim=0)
        return F.linear(guidance, weight, torch.cat([self.q.bias, self.k.bias]))

    def project_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Token part of q and k, and v: [..., dim] -> [..., 3 * dim]."""
        weight = torch.cat([self.q.weight[:, : self.dim], self.k.weight[:, : self.dim], self.v.weight], dim=0)
        bias = torch.cat([torch.zeros_like(self.q.bias), torch.zeros_like(self.k.bias), self.v.bias])
        return F.linear(x, weight, bias)

    def attend(self, qkv_windows: torch.Tensor, windows_per_map: int, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv_windows: [N * nW, L, 3 * dim]; mask: [nW, L, L] bool (True = attend) or None -> [N * nW, L, dim].

        The windows of one map are folded into the head dimension, so a single
        [1, nW * heads, L, L] mask broadcasts over all N maps (B x T of them) without copies.
        """
        n_windows, length, _ = qkv_windows.shape
        n_maps = n_windows // windows_per_map
        qkv = qkv_windows.view(n_maps, windows_per_map, length, 3, self.heads, -1).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.reshape(3, n_maps, windows_per_map * self.heads, length, -1)
        attn_mask = None if mask is None else mask.repeat_interleave(self.heads, dim=0)[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = out.view(n_maps, windows_per_map, self.heads, length, -1).transpose(2, 3)
        return self.proj(out.reshape(n_windows, length, self.dim))


class GuidedSwinBlock(nn.Module):
    """Pre-norm Swin block (no relative position bias, as in CAT-Seg) with appearance guidance."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, window: int, shift: int) -> None:
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GuidedWindowAttention(dim, guidance_dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def window_geometry(self, height: int, width: int) -> tuple[int, int]:
        """(window, shift) for this grid: a grid no larger than the window is one unshifted window."""
        if min(height, width) <= self.window:
            return min(height, width), 0
        return self.window, self.shift

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B, T, H, W, C] (one map per class); guidance: [B, H, W, G] (normalised)."""
        b, t, h, w, c = x.shape
        window, shift = self.window_geometry(h, w)
        if h % window or w % window:
            raise UsageError(
                f"the {h}x{w} feature grid is not divisible by the decoder window size {window}; "
                "use an input size whose patch grid is a multiple of decoder.window_size"
            )
        qkv = self.attn.project_tokens(self.norm1(x))
        qk_guidance = self.attn.project_guidance(guidance)  # [B, H, W, 2C], shared by all classes
        # in place is safe: a linear layer's backward does not need its output
        qkv[..., : 2 * c] += qk_guidance[:, None]
        qkv = qkv.view(b * t, h, w, 3 * c)
        mask = None
        if shift:
            qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(h, w, window, shift, device=x.device)
        out = self.attn.attend(window_partition(qkv, window), (h // window) * (w // window), mask)
        out = window_reverse(out, window, h, w)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        x = x + out.view(b, t, h, w, c)
        return x + self.mlp(self.norm2(x))


class SpatialAggregation(nn.Module):
    """Two guided Swin blocks (plain, then shifted by half a window) over every class's map."""

    def __init__(self, dim: int, guidance_dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.guidance_norm = nn.LayerNorm(guidance_dim)
        self.blocks = nn.ModuleList(
            [
                GuidedSwinBlock(dim, guidance_dim, heads, window, shift=0),
                GuidedSwinBlock(dim, guidance_dim, heads, window, shift=window // 2),
            ]
        )

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B, T, H, W, C]; guidance: [B, H, W, G] (projected appearance feature)."""
        guidance = self.guidance_norm(guidance)
        for block in self.blocks:
            x = block(x, guidance)
        return x
