"""Parameter-efficient fine-tuning of open_clip CLIP models (H-CLIP, CAT-Seg attention, PEFT baselines).

    handle = apply_finetune(clip_model, FinetuneConfig(mode="hclip"))
    handle.refresh()        # at the start of every forward pass (or: `with handle.scope(): ...`)
    handle.merge()          # fold into plain open_clip weights (all modes but vpt and adapter)

Checkpoints: the adapted model's `state_dict()` holds the new parameters; to restore one, call
apply_finetune with the same config on a freshly built model, then `load_state_dict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ovss_cli.errors import UsageError
from ovss_cli.peft.config import FinetuneConfig

if TYPE_CHECKING:
    from torch import nn

    from ovss_cli.peft.handle import FinetuneHandle

__all__ = ["FinetuneConfig", "FinetuneHandle", "apply_finetune"]


def apply_finetune(clip_model: "nn.Module", cfg: FinetuneConfig) -> "FinetuneHandle":
    """Freeze `clip_model` and attach the fine-tuning `cfg.mode` describes; returns its handle.

    Afterwards exactly the parameters that should train have requires_grad=True, and every new
    parameter is registered inside `clip_model`.
    """
    from ovss_cli.peft import adapter, attention_qv, hclip, lora, oft, ssf, vpt
    from ovss_cli.peft.blocks import encoder_blocks, freeze
    from ovss_cli.peft.handle import MARKER, Attachment, FinetuneHandle

    cfg.validate()
    if MARKER in clip_model.__dict__:
        mode = clip_model.__dict__[MARKER]
        raise UsageError(f"this CLIP model is already fine-tuned with mode '{mode}'; build a fresh one")
    encoder_blocks(clip_model)  # fail early on models without the expected blocks
    clip_parameters = sum(p.numel() for p in clip_model.parameters())
    freeze(clip_model)
    if cfg.mode in ("frozen", "full"):
        attachment = Attachment()
        if cfg.mode == "full":
            for param in clip_model.parameters():
                param.requires_grad_(True)
    elif cfg.mode == "attention":
        attachment = attention_qv.apply_attention(clip_model, cfg.encoders)
    else:
        builders = {
            "hclip": hclip.apply_hclip,
            "lora": lora.apply_lora,
            "oft": oft.apply_oft,
            "vpt": vpt.apply_vpt,
            "adapter": adapter.apply_adapter,
            "ssf": ssf.apply_ssf,
        }
        attachment = builders[cfg.mode](clip_model, cfg)
    clip_model.__dict__[MARKER] = cfg.mode
    return FinetuneHandle(clip_model, cfg.mode, attachment, clip_parameters)


def __getattr__(name: str):
    if name == "FinetuneHandle":  # imported lazily: it needs torch
        from ovss_cli.peft.handle import FinetuneHandle

        return FinetuneHandle
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
