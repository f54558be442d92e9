"""DCRC (dual cross-relation communication): mixing of the H-CLIP tensor across blocks and layers.

The tensor T has shape [q, q, S, B]: S = 4 * layers slices (projection p of layer l at
slice 4l + p) and B block slots (text blocks first, then vision blocks).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ReleasedDCRC(nn.Module):
    """The released form: T <- (T x_S M_layer) x_B M_block(slice), identity-initialised, linear.

    `layer_mixing` [S, S] mixes slices; `block_mixing` [G, B, B] mixes the block slots of every
    output slice with the matrix of its group: G = layers (one matrix per layer, shared by its
    q, k, v and out slices, as released) or G = S (one per slice). The two products act on
    different axes, so applying the block mixing before or after the layer mixing gives the
    same result once each output slice picks its own block matrix.
    """

    def __init__(self, slices: int, slots: int, per_slice: bool):
        super().__init__()
        groups = slices if per_slice else slices // 4
        self.layer_mixing = nn.Parameter(torch.eye(slices))
        self.block_mixing = nn.Parameter(torch.eye(slots).repeat(groups, 1, 1))
        group_of_slice = torch.arange(slices) // (1 if per_slice else 4)
        self.register_buffer("group_of_slice", group_of_slice, persistent=False)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        mixed = torch.einsum("pqsb,ms->pqmb", tensor, self.layer_mixing)
        block = self.block_mixing[self.group_of_slice]  # [S, B, B], rows = output slot
        return torch.einsum("pqmb,mcb->pqmc", mixed, block)


class PaperDCRC(nn.Module):
    """The paper's form: T <- T + alpha * f_S(f_B(T)), f_* two-layer MLPs (GELU) along one axis.

    alpha [S, B] starts at 0, so T is unchanged at initialisation; the MLP matrices use
    nn.Linear's default initialisation and receive gradients once alpha moves.
    """

    def __init__(self, slices: int, slots: int):
        super().__init__()
        self.block_in = nn.Parameter(_linear_init(slots))
        self.block_out = nn.Parameter(_linear_init(slots))
        self.layer_in = nn.Parameter(_linear_init(slices))
        self.layer_out = nn.Parameter(_linear_init(slices))
        self.alpha = nn.Parameter(torch.zeros(slices, slots))

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        act = nn.functional.gelu
        hidden = torch.einsum("pqsb,cb->pqsc", tensor, self.block_in)
        hidden = torch.einsum("pqsb,cb->pqsc", act(hidden), self.block_out)
        hidden = torch.einsum("pqsb,ms->pqmb", hidden, self.layer_in)
        hidden = torch.einsum("pqsb,ms->pqmb", act(hidden), self.layer_out)
        return tensor + self.alpha * hidden


def _linear_init(size: int) -> torch.Tensor:
    weight = torch.empty(size, size)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return weight


def build_dcrc(kind: str, slices: int, slots: int, block_mixing: str) -> nn.Module | None:
    if kind == "released":
        return ReleasedDCRC(slices, slots, per_slice=block_mixing == "per_slice")
    if kind == "paper":
        return PaperDCRC(slices, slots)
    return None
