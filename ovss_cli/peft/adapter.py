"""Bottleneck adapters (Houlsby / AdaptFormer style) on the attention and/or MLP output of each block.

h <- h + scale * up(gelu(down(h))); `up` starts at zero, so the model is unchanged at
initialisation. The adapters are forward hooks on `attn` / `mlp`, so they also run when the
last vision block is evaluated in the dense form (which calls block.attn and block.mlp directly).
"""

from __future__ import annotations

import torch
from torch import nn

from ovss_cli.peft.blocks import block_width, encoder_blocks
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.peft.handle import Attachment


class BottleneckAdapter(nn.Module):
    def __init__(self, width: int, bottleneck: int, scale: float):
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scale = scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.scale * self.up(nn.functional.gelu(self.down(hidden)))


def _attn_hook(adapter: BottleneckAdapter):
    def hook(module: nn.Module, args: tuple, output: tuple) -> tuple:
        return (adapter(output[0]), *output[1:])  # nn.MultiheadAttention returns (output, weights)

    return hook


def _mlp_hook(adapter: BottleneckAdapter):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return adapter(output)

    return hook


def apply_adapter(model: nn.Module, cfg: FinetuneConfig) -> Attachment:
    attachment = Attachment()
    blocks = encoder_blocks(model)
    reference = blocks["vision"][0].attn.in_proj_weight
    for encoder in cfg.encoders:
        for block in blocks[encoder]:
            for target in cfg.adapter_targets:
                adapter = BottleneckAdapter(block_width(block), cfg.adapter_bottleneck, cfg.adapter_scale)
                adapter.to(device=reference.device, dtype=reference.dtype)
                block.add_module(f"adapter_{target}", adapter)
                hook = _attn_hook(adapter) if target == "attn" else _mlp_hook(adapter)
                attachment.hooks.append(getattr(block, target).register_forward_hook(hook))
                attachment.added_modules.append((block, f"adapter_{target}"))
    return attachment
