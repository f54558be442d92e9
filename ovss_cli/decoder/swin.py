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


def window_order(height: int, width: int, window: int, shift: int, device=None) -> torch.Tensor:
    """Raster indices [H*W] of the tokens in window order: `window_partition(roll(grid, -shift), window)` flattened.

    Gathering the raster token sequence with it lays out every window contiguously, which is
    what torch.roll followed by the window partition produces, in one copy instead of two.
    """
    rows = (torch.arange(height, device=device) + shift) % height
    cols = (torch.arange(width, device=device) + shift) % width
    raster = rows[:, None] * width + cols[None, :]
    return window_partition(raster[None, :, :, None], window).flatten()


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

    def attend(self, qkv: torch.Tensor, window_area: int, mask: torch.Tensor | None) -> torch.Tensor:
        """qkv: [..., nW * L, 3 * dim] in window order (L = window_area); mask: [nW, L, L] bool
        (True = attend) or None -> [..., nW * L, dim], still in window order.

        Without a mask, q, k and v are strided views of qkv, each window a batch entry. With one,
        the windows of a map are folded into the head dimension so that a single [1, nW * heads, L, L]
        mask broadcasts over all maps (B x T of them); both stay 4-D, which keeps
        scaled_dot_product_attention on its fused kernels.
        """
        lead, tokens = qkv.shape[:-2], qkv.shape[-2]
        windows = tokens // window_area
        head_dim = self.dim // self.heads
        if mask is None:
            split = qkv.reshape(-1, window_area, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(*split.unbind(0))  # [maps * nW, heads, L, d]
            out = out.transpose(1, 2)
        else:
            split = qkv.reshape(-1, windows, window_area, 3, self.heads, head_dim).permute(3, 0, 1, 4, 2, 5)
            q, k, v = split.reshape(3, -1, windows * self.heads, window_area, head_dim).unbind(0)
            attn_mask = mask.repeat_interleave(self.heads, dim=0)[None]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # [maps, nW * heads, L, d]
            out = out.view(-1, windows, self.heads, window_area, head_dim).transpose(2, 3)
        return self.proj(out.reshape(*lead, tokens, self.dim))


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
        c = x.shape[-1]
        qkv = self.attn.project_tokens(self.norm1(x))
        # in place is safe: a linear layer's backward does not need its output
        qkv[..., : 2 * c] += self.attn.project_guidance(guidance)[:, None]  # shared by all classes
        x = x + self.attn.attend(qkv, window * window, mask)
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
