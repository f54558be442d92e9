"""LoRA: W <- W + (alpha / rank) * B A on the targeted weights, B initialised to zero."""

from __future__ import annotations

import math

import torch
from torch import nn

from ovss_cli.peft.blocks import parametrize_linear_targets
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.peft.handle import Attachment


class LowRankUpdate(nn.Module):
    """Adds a rank-r update to each selected row group of a (possibly fused) weight."""

    def __init__(self, weight: torch.Tensor, groups: list[int], total_groups: int, rank: int, scale: float):
        super().__init__()
        rows, width = weight.shape[0] // total_groups, weight.shape[1]
        self.groups, self.total_groups, self.scale = groups, total_groups, scale
        down = torch.empty(len(groups), rank, width, device=weight.device, dtype=weight.dtype)
        for matrix in down:
            nn.init.kaiming_uniform_(matrix, a=math.sqrt(5))
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(len(groups), rows, rank, device=weight.device, dtype=weight.dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.scale * torch.bmm(self.up, self.down)
        parts = list(weight.chunk(self.total_groups, dim=0))
        for i, group in enumerate(self.groups):
            parts[group] = parts[group] + delta[i]
        return torch.cat(parts, dim=0)


def apply_lora(model: nn.Module, cfg: FinetuneConfig) -> Attachment:
    scale = cfg.lora_alpha / cfg.lora_rank
    return parametrize_linear_targets(
        model, cfg, lambda weight, groups, total: LowRankUpdate(weight, groups, total, cfg.lora_rank, scale))
