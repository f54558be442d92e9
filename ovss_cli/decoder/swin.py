"""Spatial aggregation: Swin window attention run once per class, guided by the image feature.

The cost volume of every class is an independent image; all B x T of them go through the
window attention as one batch. The appearance guidance (one map per image) joins only the
query/key inputs; its part of q/k is computed once per image (`guided_linear`).

Token sequences are kept in a window order whose position is (token in window) x windows +
window: then the windows of a map fold into the attention's head dimension as a view, so
q, k and v reach `scaled_dot_product_attention` without a copy and one [windows x heads, L, L]
mask serves every map of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss_cli.decoder.guided_linear import guided_linear
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


def window_order(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Raster indices [H*W] of the tokens in window order: `window_partition(roll(grid, -shift), window)`,
    transposed to [window^2, nW] and flattened (position = token in window x nW + window).

    One gather with it does what torch.roll followed by the window partition does, in one copy
    instead of two, in the order that lets windows fold into the head dimension.
    """
    rows = (torch.arange(height, device=device) + shift) % height
    cols = (torch.arange(width, device=device) + shift) % width
    raster = rows[:, None] * width + cols[None, :]
    return window_partition(raster[None, :, :, None], window).squeeze(-1).t().flatten()


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

    def project(self, x: torch.Tensor, guidance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v [B, T, N, dim] of tokens x [B, T, N, dim] with guidance [B, N, G] (shared by the classes)."""
        guidance = guidance[:, None]
        return guided_linear(self.q, x, guidance), guided_linear(self.k, x, guidance), self.v(x)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window_area: int,
               mask: torch.Tensor | None) -> torch.Tensor:
        """q, k, v: [..., L * nW, dim] in window order (L = window_area); mask: [nW, L, L] bool (True = attend)
        or None -> [..., L * nW, dim], still in window order.

        Windows and heads share one dimension of [maps, nW * heads, L, d] views, so both blocks are one
        4-D `scaled_dot_product_attention` call on its fused kernel, without copying q, k or v.
        """
        lead, tokens = q.shape[:-2], q.shape[-2]
        heads = tokens // window_area * self.heads

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(-1, window_area, heads, self.dim // self.heads).transpose(1, 2)

        attn_mask = None if mask is None else mask.repeat_interleave(self.heads, dim=0)[None]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(*lead, tokens, self.dim))


class GuidedSwinBlock(nn.Module):
    """Pre-norm Swin block (no relative position bias, as in CAT-Seg) with appearance guidance.

    It works on token sequences already in its window order (`window_order`); LayerNorm, the
    projections and the MLP act per token, so only the attention needs that order.
    """

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

    def check_grid(self, height: int, width: int) -> tuple[int, int]:
        window, shift = self.window_geometry(height, width)
        if height % window or width % window:
            raise UsageError(
                f"the {height}x{width} feature grid is not divisible by the decoder window size {window}; "
                "use an input size whose patch grid is a multiple of decoder.window_size"
            )
        return window, shift

    def forward_ordered(self, x: torch.Tensor, guidance: torch.Tensor, window: int, mask: torch.Tensor | None) -> torch.Tensor:
        """x: [B, T, N, C] and guidance: [B, N, G] (normalised), both in this block's window order."""
        q, k, v = self.attn.project(self.norm1(x), guidance)
        x = x + self.attn.attend(q, k, v, window * window, mask)
        return x + self.mlp(self.norm2(x))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """x: [B, T, H, W, C] (one map per class); guidance: [B, H, W, G] (normalised)."""
        b, t, h, w, c = x.shape
        window, shift = self.check_grid(h, w)
        order = window_order(h, w, window, shift, device=x.device)
        mask = shifted_window_mask(h, w, window, shift, device=x.device) if shift else None
        out = self.forward_ordered(x.reshape(b, t, h * w, c)[:, :, order], guidance.reshape(b, h * w, -1)[:, order],
                                   window, mask)
        return out[:, :, torch.argsort(order)].view(b, t, h, w, c)


class SpatialAggregation(nn.Module):
    """Two guided Swin blocks (plain, then shifted by half a window) over every class's map.

    The class maps stay in token-sequence form between the blocks: one gather into the first
    block's window order, one from it into the second's, one back to the raster order.
    """

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
        b, t, h, w, c = x.shape
        guidance = self.guidance_norm(guidance).reshape(b, h * w, -1)
        x = x.reshape(b, t, h * w, c)
        current = torch.arange(h * w, device=x.device)  # raster index held at each sequence position
        for block in self.blocks:
            window, shift = block.check_grid(h, w)
            order = window_order(h, w, window, shift, device=x.device)
            x = x.index_select(2, torch.argsort(current)[order])
            mask = shifted_window_mask(h, w, window, shift, device=x.device) if shift else None
            x = block.forward_ordered(x, guidance.index_select(1, order), window, mask)
            current = order
        return x.index_select(2, torch.argsort(current)).view(b, t, h, w, c)
