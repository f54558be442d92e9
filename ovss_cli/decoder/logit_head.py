"""CAT-Seg's logit head, a 3x3 conv to one channel per class map, computed as a matmul over the nine taps.

A convolution with a single output channel runs at a small fraction of the matmul rate on CPUs
(oneDNN blocks over output channels). The same conv is: project every pixel onto the nine taps
([C] -> [9] per pixel, one matmul over all pixels), then add the nine tap maps shifted by their
offsets. Both steps read the input once, and the backward is again one shifted gather and two
matmuls. The weights keep nn.Conv2d's layout, so checkpoints are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TAPS = [(dy, dx) for dy in range(3) for dx in range(3)]  # tap k of a 3x3 kernel, row-major


def _tap_matrix(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[O, C, 3, 3] -> [9 * O, C], row (tap k, output o)."""
    return weight.to(dtype).permute(2, 3, 0, 1).reshape(-1, weight.shape[1])


def _pixel_rows(x: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N * H * W, C], a view when x is channels-last."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


class _TapConv3x3(torch.autograd.Function):
    """y = conv2d(x, weight, bias, padding=1) for weight [O, C, 3, 3], in x's dtype with autocast off."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = weight.shape[0]
        projected = _tap_matrix(weight, x.dtype) @ _pixel_rows(x).t()
        # tap maps [9, O, N, H, W], zero-padded by one pixel: tap (dy, dx) of output (i, j) reads (i + dy, j + dx)
        tap_maps = F.pad(projected.view(9, out, n, h, w), (1, 1, 1, 1))
        y = tap_maps[0, :, :, :h, :w] + bias.to(x.dtype).view(out, 1, 1, 1)
        for k, (dy, dx) in enumerate(TAPS[1:], start=1):
            y += tap_maps[k, :, :, dy : dy + h, dx : dx + w]
        ctx.save_for_backward(x, weight)
        return y.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        out = weight.shape[0]
        padded = F.pad(grad_y.transpose(0, 1), (1, 1, 1, 1))  # [O, N, H + 2, W + 2]
        grad_taps = grad_y.new_empty(9, out, n, h, w)
        for k, (dy, dx) in enumerate(TAPS):
            grad_taps[k] = padded[:, :, 2 - dy : 2 - dy + h, 2 - dx : 2 - dx + w]
        grad_taps = grad_taps.view(9 * out, n * h * w)
        grad_x = (grad_taps.t() @ _tap_matrix(weight, x.dtype)).view(n, h, w, c).permute(0, 3, 1, 2)
        grad_weight = (grad_taps @ _pixel_rows(x)).view(3, 3, out, c).permute(2, 3, 0, 1)
        return grad_x, grad_weight.to(weight.dtype), grad_y.sum(dim=(0, 2, 3)).to(weight.dtype)


class LogitHead(nn.Conv2d):
    """nn.Conv2d(width, 1, 3, padding=1); on CPU it runs as `_TapConv3x3` (same values, about half the time
    forward and backward for CAT-Seg's 2 x 171 class maps), on other devices and in a traced export as the
    library conv."""

    def __init__(self, width: int) -> None:
        super().__init__(width, 1, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or torch.jit.is_tracing():  # a traced export keeps the one Conv node
            return super().forward(x)
        with torch.autocast(device_type="cpu", enabled=False):
            return _TapConv3x3.apply(x, self.weight, self.bias)
