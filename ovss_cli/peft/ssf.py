"""SSF: y <- gamma * y + beta after linear layers and LayerNorms, folded as W <- gamma W, b <- gamma b + beta.

gamma starts at 1 and beta at 0, so the model is unchanged at initialisation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ovss_cli.errors import UsageError
from ovss_cli.peft.blocks import encoder_blocks
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.peft.handle import Attachment


class ScaleShiftBias(nn.Module):
    """bias -> gamma * bias + beta; owns gamma and beta for the layer."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.scale = nn.Parameter(torch.ones_like(bias.detach()))
        self.shift = nn.Parameter(torch.zeros_like(bias.detach()))

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        return bias * self.scale + self.shift


class ScaleWeightRows(nn.Module):
    """weight -> gamma * weight (row-wise), reading gamma from the layer's ScaleShiftBias."""

    def __init__(self, owner: ScaleShiftBias):
        super().__init__()
        object.__setattr__(self, "owner", owner)  # gamma is registered once, on the bias side

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.owner.scale.reshape(-1, *([1] * (weight.dim() - 1)))


def _targets(block: nn.Module, names: list[str]) -> list[tuple[nn.Module, str, str]]:
    """(module, weight name, bias name) for each SSF target of one block."""
    table = {
        "qkv": (block.attn, "in_proj_weight", "in_proj_bias"),
        "out": (block.attn.out_proj, "weight", "bias"),
        "mlp_fc": (block.mlp.c_fc, "weight", "bias"),
        "mlp_proj": (block.mlp.c_proj, "weight", "bias"),
        "ln_1": (block.ln_1, "weight", "bias"),
        "ln_2": (block.ln_2, "weight", "bias"),
    }
    return [table[name] for name in names]


def apply_ssf(model: nn.Module, cfg: FinetuneConfig) -> Attachment:
    attachment = Attachment()
    blocks = encoder_blocks(model)
    for encoder in cfg.encoders:
        for block in blocks[encoder]:
            for module, weight_name, bias_name in _targets(block, cfg.ssf_targets):
                if getattr(module, bias_name, None) is None or getattr(module, weight_name, None) is None:
                    raise UsageError(
                        "finetune mode 'ssf' needs a weight and a bias on every target; "
                        "remove targets whose layers have none from finetune.ssf_targets"
                    )
                owner = ScaleShiftBias(getattr(module, bias_name))
                parametrize.register_parametrization(module, bias_name, owner)
                parametrize.register_parametrization(module, weight_name, ScaleWeightRows(owner))
                attachment.parametrized += [(module, weight_name), (module, bias_name)]
    return attachment
