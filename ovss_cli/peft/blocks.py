"""Locate the transformer blocks of an open_clip CLIP and the pieces of their fused projections."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from ovss_cli.errors import UsageError
from ovss_cli.peft.handle import Attachment

# rows of nn.MultiheadAttention.in_proj_weight: [W_q; W_k; W_v]
QKV_INDEX = {"q": 0, "k": 1, "v": 2}


def encoder_blocks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """{'vision': [...], 'text': [...]} residual blocks of a ViT CLIP (plain or custom-text)."""
    visual = getattr(getattr(model, "visual", None), "transformer", None)
    text_owner = model if hasattr(model, "transformer") else getattr(model, "text", None)
    text = getattr(text_owner, "transformer", None)
    if visual is None or not hasattr(visual, "resblocks") or text is None or not hasattr(text, "resblocks"):
        raise UsageError("fine-tuning needs an open_clip ViT CLIP (vision and text transformers with resblocks)")
    blocks = {"vision": list(visual.resblocks), "text": list(text.resblocks)}
    for encoder, items in blocks.items():
        for block in items:
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise UsageError(f"fine-tuning needs fused nn.MultiheadAttention in every {encoder} block")
    return blocks


def block_width(block: nn.Module) -> int:
    return block.attn.embed_dim


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)



def linear_targets(block: nn.Module, targets: list[str]) -> list[tuple[nn.Module, str, list[int], int]]:
    """(module, weight name, selected row groups, row groups in the weight) for each targeted weight.

    q/k/v share the fused in_proj_weight (3 row groups); out, mlp_fc and mlp_proj are whole weights.
    """
    found = []
    fused = [QKV_INDEX[t] for t in ("q", "k", "v") if t in targets]
    if fused:
        found.append((block.attn, "in_proj_weight", fused, 3))
    whole = {"out": block.attn.out_proj, "mlp_fc": block.mlp.c_fc, "mlp_proj": block.mlp.c_proj}
    found += [(whole[t], "weight", [0], 1) for t in ("out", "mlp_fc", "mlp_proj") if t in targets]
    return found


def parametrize_linear_targets(model: nn.Module, cfg, make_transform):
    """Register `make_transform(weight, groups, total)` on every targeted linear weight of the chosen encoders.

    Shared by the weight-transform adapters (LoRA, OFT): they differ only in the transform.
    """

    attachment = Attachment()
    blocks = encoder_blocks(model)
    for encoder in cfg.encoders:
        for block in blocks[encoder]:
            for module, name, groups, total in linear_targets(block, cfg.targets):
                parametrize.register_parametrization(module, name, make_transform(getattr(module, name), groups, total))
                attachment.parametrized.append((module, name))
    return attachment
