"""OFT: W <- W R, R = diag(R_1..R_b) orthogonal via the Cayley map, acting on the input side.

Each R_i comes from a skew-symmetric S_i stored as its q(q-1)/2 free (strictly upper) entries,
initialised to 0, so R = I at the start.
"""

from __future__ import annotations

import torch
from torch import nn

from ovss_cli.peft.blockdiag import apply_input_side, block_count, cayley, skew_from_upper
from ovss_cli.peft.blocks import parametrize_linear_targets
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.peft.handle import Attachment


class BlockOrthogonalInput(nn.Module):
    """Rotates the input side of each selected row group of a (possibly fused) weight."""

    def __init__(self, weight: torch.Tensor, groups: list[int], total_groups: int, block_size: int):
        super().__init__()
        blocks = block_count(weight.shape[1], block_size, "OFT input")
        self.groups, self.total_groups, self.block_size = groups, total_groups, block_size
        free = block_size * (block_size - 1) // 2
        self.skew = nn.Parameter(torch.zeros(len(groups), blocks, free, device=weight.device))

    def rotations(self) -> torch.Tensor:
        return cayley(skew_from_upper(self.skew, self.block_size))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rotations = self.rotations()
        parts = list(weight.chunk(self.total_groups, dim=0))
        for i, group in enumerate(self.groups):
            parts[group] = apply_input_side(parts[group], rotations[i])
        return torch.cat(parts, dim=0)


def apply_oft(model: nn.Module, cfg: FinetuneConfig) -> Attachment:
    return parametrize_linear_targets(
        model, cfg, lambda weight, groups, total: BlockOrthogonalInput(weight, groups, total, cfg.block_size))
