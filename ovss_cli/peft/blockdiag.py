"""Block-diagonal transforms: the Cayley map and applying diag(R_1..R_b) without building it."""

from __future__ import annotations

import contextlib

import torch

from ovss_cli.errors import UsageError


def autocast_off(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on `device` (a no-op where autocast does not exist, e.g. meta tensors)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def cayley(skew: torch.Tensor) -> torch.Tensor:
    """Orthogonal (I - S)(I + S)^-1 for a batch of skew-symmetric S [..., n, n], solved in fp32.

    (I - S) and (I + S)^-1 commute, so the product equals solve(I + S, I - S). Autocast is
    switched off: the solve is ill-conditioned in half precision.
    """
    with autocast_off(skew.device):
        skew = skew.float()
        eye = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
        return torch.linalg.solve(eye + skew, eye - skew)


def skew_part(matrix: torch.Tensor) -> torch.Tensor:
    """(A - A^T) / 2 over the last two axes."""
    return 0.5 * (matrix - matrix.transpose(-1, -2))


def skew_from_upper(values: torch.Tensor, size: int) -> torch.Tensor:
    """Skew-symmetric [..., size, size] from its strictly-upper-triangular entries [..., size*(size-1)/2]."""
    rows, cols = torch.triu_indices(size, size, offset=1, device=values.device)
    flat = values.new_zeros(*values.shape[:-1], size * size).index_add(-1, rows * size + cols, values)
    upper = flat.reshape(*values.shape[:-1], size, size)
    return upper - upper.transpose(-1, -2)


def apply_input_side(weight: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """weight @ diag(blocks): weight [..., out, in], blocks [..., b, q, q] with b*q = in."""
    *lead, rows, width = weight.shape
    nb, q = blocks.shape[-3], blocks.shape[-1]
    grouped = weight.reshape(*lead, rows, nb, q)
    return torch.einsum("...obi,...bij->...obj", grouped, blocks.to(weight.dtype)).reshape(*lead, rows, width)


def apply_output_side(weight: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """diag(blocks) @ weight: weight [out, in], blocks [b, q, q] with b*q = out."""
    rows, width = weight.shape
    nb, q = blocks.shape[-3], blocks.shape[-1]
    grouped = weight.reshape(nb, q, width)
    return torch.einsum("bij,bjc->bic", blocks.to(weight.dtype), grouped).reshape(rows, width)


def block_count(width: int, block_size: int, where: str) -> int:
    """Number of blocks of edge `block_size` tiling `width`, or a UsageError saying what to change."""

    if width % block_size:
        fitting = max(d for d in range(1, min(block_size, width) + 1) if width % d == 0)
        raise UsageError(f"finetune.block_size={block_size} does not divide the {where} width {width}; "
                         f"use a divisor of {width}, e.g. finetune.block_size={fitting}")
    return width // block_size
