"""The `finetune:` recipe section: which CLIP parameters train and how they are parameterised.

Parameter counts quoted below are for CLIP ViT-B/16 (vision width 768, text width 512,
12 + 12 layers); docs/peft.md lists ViT-L/14 as well. The paper's counts (H-CLIP Table 3)
are in units of 2^20 ("Mi"): 7,864,320 values print as "7.5M" there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from ovss_cli.errors import UsageError

FinetuneMode = Literal["frozen", "attention", "full", "hclip", "lora", "oft", "vpt", "adapter", "ssf"]

ENCODERS = ("vision", "text")
LINEAR_TARGETS = ("q", "k", "v", "out", "mlp_fc", "mlp_proj")
SSF_TARGETS = ("qkv", "out", "mlp_fc", "mlp_proj", "ln_1", "ln_2")
ADAPTER_TARGETS = ("attn", "mlp")


@dataclass
class FinetuneConfig:
    """How CLIP is fine-tuned. Every option not used by `mode` is ignored.

    mode:
      frozen     nothing in CLIP trains (0 parameters).
      attention  CAT-Seg: the q and v rows of every fused in_proj_weight train
                 (12*2*768^2 + 12*2*512^2 = 20,447,232 on ViT-B/16).
      full       every CLIP parameter trains.
      hclip      H-CLIP POP + DCRC. POP tensor [q, q, 4L, b_text + b_vision] =
                 128x128x48x10 = 7,864,320 values on ViT-B/16 (block_size 128), plus DCRC
                 ("released", per_layer: 12*10*10 + 48*48 = 3,504).
      lora       W + (alpha/rank) B A on `targets`; rank 64 on q,k,v,out of both encoders:
                 12*4*2*64*(768+512) = 7,864,320 (the paper's "LoRA 7.5M").
      oft        W R with R block-diagonal orthogonal (Cayley), block `block_size`, on the input
                 side of `targets`; stored as the free upper-triangular entries, 128*127/2 = 8,128
                 per block, 480 blocks: 3,901,440 (the paper's "OFT 3.8M" counts q^2/2 per block).
      vpt        deep visual prompts: `vpt_length` tokens per vision block, inserted after CLS;
                 250 * 768 * 11 = 2,112,000 (the paper's "VPT 2.2M" is not specified further).
      adapter    bottleneck adapters after attention and/or MLP outputs; bottleneck 128 after both
                 in both encoders: 24*(2*768*128+768+128) + 24*(2*512*128+512+128) = 7,901,184
                 (the paper's "Adapter 7.5M").
      ssf        per-channel scale and shift after `ssf_targets` (foldable into weights):
                 276,480 + 61,440 = 337,920 with all linears and LayerNorms of both encoders
                 (the paper's "SSF 0.6M" configuration is not specified).
    """

    mode: FinetuneMode = "attention"
    # encoders adapted by attention / lora / oft / adapter / ssf (hclip always adapts both; vpt is vision-only)
    encoders: list[str] = field(default_factory=lambda: ["vision", "text"])

    # hclip and oft: edge of each diagonal block (must divide the widths it is applied to)
    block_size: int = 128
    # hclip
    pop: bool = True  # false: the POP tensor stays at identity and only DCRC trains ("DCRC only")
    dcrc: Literal["released", "paper", "none"] = "released"
    # the released code mixes the raw tensor first and applies the Cayley map afterwards, which
    # keeps the text blocks exactly orthogonal; cayley_first mixes the orthogonal blocks instead
    dcrc_order: Literal["cayley_first", "mixing_first"] = "mixing_first"
    # released DCRC: one block-axis mixing matrix per layer (as released) or per (layer, projection) slice
    dcrc_block_mixing: Literal["per_layer", "per_slice"] = "per_layer"
    text_orthogonal: bool = True
    vision_orthogonal: bool = False

    # lora and oft
    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "out"])
    lora_rank: int = 64
    lora_alpha: float = 64.0

    # vpt
    vpt_length: int = 250
    vpt_depth: Optional[int] = None  # None: every vision block except the last (run densely)

    # adapter
    adapter_bottleneck: int = 128
    adapter_targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])
    adapter_scale: float = 1.0

    # ssf
    ssf_targets: list[str] = field(default_factory=lambda: list(SSF_TARGETS))

    def validate(self) -> None:
        _check_subset("finetune.encoders", self.encoders, ENCODERS)
        _check_subset("finetune.targets", self.targets, LINEAR_TARGETS)
        _check_subset("finetune.adapter_targets", self.adapter_targets, ADAPTER_TARGETS)
        _check_subset("finetune.ssf_targets", self.ssf_targets, SSF_TARGETS)
        for name in ("block_size", "lora_rank", "vpt_length", "adapter_bottleneck"):
            if getattr(self, name) < 1:
                raise UsageError(f"finetune.{name} must be a positive integer, got {getattr(self, name)}")
        if self.vpt_depth is not None and self.vpt_depth < 1:
            raise UsageError(
                f"finetune.vpt_depth must be positive or null (all blocks but the last), got {self.vpt_depth}"
            )
        if self.mode == "hclip" and not self.pop and self.dcrc == "none":
            raise UsageError("finetune: hclip with pop=false and dcrc=none trains nothing; enable pop or choose a dcrc")


def _check_subset(where: str, values: list[str], allowed: tuple[str, ...]) -> None:
    if not values:
        raise UsageError(f"{where} must not be empty; choose from {', '.join(allowed)}")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise UsageError(f"{where}: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise UsageError(f"{where} lists an entry twice: {values}")
