"""Deep visual prompt tuning: learnable tokens inserted after CLS before a vision block, removed after it.

Every prompted block gets its own `vpt_length` prompts (the VPT-deep scheme: the prompts a
block outputs are discarded and the next block gets fresh ones). By default every vision
block except the last is prompted: the backbone evaluates the last block in CAT-Seg's dense
form (each token attends only to itself, via block.attn directly), where prompts could not
influence the patch tokens and the block hooks do not run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ovss_cli.errors import UsageError
from ovss_cli.peft.blocks import block_width, encoder_blocks
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.peft.handle import Attachment

PARAM_NAME = "vpt_prompt"


def _token_axis(block: nn.Module) -> int:
    return 1 if block.attn.batch_first else 0


def _insert_hook(block: nn.Module):
    axis = _token_axis(block)

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        if kwargs.get("attn_mask") is not None:
            raise ValueError("visual prompts cannot be combined with an attention mask on a vision block")
        x = args[0] if args else kwargs.pop("q_x")
        prompts = getattr(module, PARAM_NAME).to(x.dtype)
        shape = [-1, -1, -1]
        shape[1 - axis] = x.shape[1 - axis]
        prompts = prompts.unsqueeze(1 - axis).expand(*shape)
        cls, patches = x.narrow(axis, 0, 1), x.narrow(axis, 1, x.shape[axis] - 1)
        return (torch.cat([cls, prompts, patches], dim=axis), *args[1:]), kwargs

    return hook


def _strip_hook(block: nn.Module, length: int):
    axis = _token_axis(block)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        kept = output.shape[axis] - 1 - length
        return torch.cat([output.narrow(axis, 0, 1), output.narrow(axis, 1 + length, kept)], dim=axis)

    return hook


def apply_vpt(model: nn.Module, cfg: FinetuneConfig) -> Attachment:
    blocks = encoder_blocks(model)["vision"]
    depth = len(blocks) - 1 if cfg.vpt_depth is None else cfg.vpt_depth
    if not 1 <= depth <= len(blocks):
        raise UsageError(f"finetune.vpt_depth={cfg.vpt_depth} must be between 1 and the {len(blocks)} vision blocks")
    patch = model.visual.patch_size
    patch_area = patch[0] * patch[1] if isinstance(patch, (tuple, list)) else patch * patch
    width = block_width(blocks[0])
    bound = math.sqrt(6.0 / (3 * patch_area + width))  # VPT's Xavier-style uniform init
    reference = blocks[0].attn.in_proj_weight
    attachment = Attachment(details={"prompted_blocks": depth})
    for block in blocks[:depth]:
        prompt = torch.empty(cfg.vpt_length, width, device=reference.device, dtype=reference.dtype)
        prompt.uniform_(-bound, bound)
        block.register_parameter(PARAM_NAME, nn.Parameter(prompt))
        attachment.hooks.append(block.register_forward_pre_hook(_insert_hook(block), with_kwargs=True))
        attachment.hooks.append(block.register_forward_hook(_strip_hook(block, cfg.vpt_length), with_kwargs=True))
    return attachment
