"""CAT-Seg's attention fine-tuning: only the q and v rows of every fused in_proj_weight train."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ovss_cli.peft.blocks import encoder_blocks
from ovss_cli.peft.handle import Attachment


class TrainableQV(nn.Module):
    """in_proj_weight = [q; k_frozen; v] with q and v trainable copies of the pretrained rows."""

    def __init__(self, in_proj_weight: torch.Tensor):
        super().__init__()
        q, _, v = in_proj_weight.detach().chunk(3, dim=0)
        self.q = nn.Parameter(q.clone())
        self.v = nn.Parameter(v.clone())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        k = weight.chunk(3, dim=0)[1]
        return torch.cat([self.q, k, self.v], dim=0)


def apply_attention(model: nn.Module, encoders: list[str]) -> Attachment:
    attachment = Attachment()
    blocks = encoder_blocks(model)
    for encoder in encoders:
        for block in blocks[encoder]:
            parametrize.register_parametrization(block.attn, "in_proj_weight", TrainableQV(block.attn.in_proj_weight))
            attachment.parametrized.append((block.attn, "in_proj_weight"))
    return attachment
