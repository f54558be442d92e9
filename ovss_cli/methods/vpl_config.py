"""Recipe section `vpl:` — VPL's second phase: a decoder trained on a frozen CLIP from pseudo-labels, with
regional semantic contrast (RSC) against the vision prototypes. No torch here.

VPL's code is not public: every choice below is ovss's reconstruction (docs/wsss.md), each a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovss_cli.errors import UsageError


@dataclass
class VplTrainConfig:
    """Frozen CLIP + WeCLIP-style multi-layer fusion decoder; loss CE(pseudo-labels) + rsc_weight x L_RSC."""

    prototypes: str = ""
    """Vision prototypes written by `ovss prototypes` (`ovss train --prototypes FILE` sets it); needed when rsc_weight > 0."""
    layers: list[int] = field(default_factory=list)
    """CLIP vision blocks (0-based) whose outputs the decoder fuses; [] = every block but the last (WeCLIP)."""
    embed_dim: int = 256
    """Width of the fused features (WeCLIP: 256)."""
    transformer_layers: int = 3
    """Transformer layers over the fused patch tokens (WeCLIP: 3)."""
    heads: int = 8
    dropout: float = 0.1
    """Dropout2d after the fusion (WeCLIP: 0.1)."""
    head_lr_multiplier: float = 10.0
    """The decoder trains at optim.lr x this (WeCLIP: the head at 10x the base rate; CLIP itself is frozen)."""
    rsc_weight: float = 0.1
    """Weight of L_RSC [D] (0.2 is a common alternative; 0 = plain CE, CLIP-ES's decoder setting)."""
    rsc_tau: float = 0.1
    """Temperature of the RSC softmax over cos(region, prototype) [D]."""

    def validate(self) -> None:
        if self.embed_dim < 1 or self.transformer_layers < 0 or self.heads < 1 or self.embed_dim % self.heads:
            raise UsageError(f"vpl.embed_dim ({self.embed_dim}) must be a positive multiple of vpl.heads "
                             f"({self.heads}) and vpl.transformer_layers >= 0")
        if not 0 <= self.dropout < 1:
            raise UsageError(f"vpl.dropout must lie in [0, 1), got {self.dropout}")
        if self.head_lr_multiplier <= 0 or self.rsc_weight < 0 or self.rsc_tau <= 0:
            raise UsageError("vpl.head_lr_multiplier and vpl.rsc_tau must be positive, vpl.rsc_weight >= 0")
        if any(layer < 0 for layer in self.layers) or len(set(self.layers)) != len(self.layers):
            raise UsageError(f"vpl.layers must be distinct block indices >= 0, got {self.layers}")
