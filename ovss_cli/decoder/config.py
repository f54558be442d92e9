"""Recipe section `decoder:` — the CAT-Seg cost-aggregation decoder's hyper-parameters.

Defaults are the official ViT recipes (`vitb_384.yaml` / `vitl_336.yaml`); only
`guidance_layers` differs between backbones ([3, 7] for ViT-B/16, [7, 15] for ViT-L/14).
This module imports no torch so recipes validate at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovss_cli.errors import UsageError


@dataclass
class DecoderConfig:
    """CAT-Seg aggregator and upsampling decoder."""

    hidden_dim: int = 128
    """Channels of the aggregated cost volume (per class, per pixel)."""
    num_layers: int = 2
    """Aggregator layers; each is spatial aggregation (two Swin blocks) then class aggregation."""
    heads: int = 4
    """Attention heads in both the window attention and the class attention."""
    window_size: int = 12
    """Swin window side in patches; the second block of each layer shifts by half of it."""
    text_guidance_dim: int = 128
    """Projected text embedding concatenated into the class-attention queries/keys."""
    appearance_guidance_dim: int = 128
    """Projected dense image feature concatenated into the window-attention queries/keys."""
    decoder_dims: list[int] = field(default_factory=lambda: [64, 32])
    """Output channels of the upsampling stages (each x2); multiples of 16 (GroupNorm groups of 16)."""
    decoder_guidance_dims: list[int] = field(default_factory=lambda: [256, 128])
    """Channels of the transposed-conv upsampled CLIP block outputs feeding each stage."""
    decoder_guidance_proj_dims: list[int] = field(default_factory=lambda: [32, 16])
    """Channels those guidance maps are projected to before concatenation."""
    guidance_layers: list[int] = field(default_factory=lambda: [3, 7])
    """CLIP vision blocks whose outputs guide the upsampling stages, in stage order."""
    pad_len: int = 256
    """Fixed class-attention length: fewer classes are padded with learnable tokens, more are
    cut to the top pad_len per image by CLIP similarity (the rest get logit -100). 0 disables both."""
    class_pool_size: int = 2
    """Average-pooling factor of the spatial grid inside class aggregation (1 = none)."""
    pool_class_attention_in_training: bool = True
    """Pool the grid for class aggregation in training (official)."""
    pool_class_attention_at_test: bool = True
    """Pool it at evaluation too; the official code pools in both modes."""

    def validate(self) -> None:
        positive = {
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
            "heads": self.heads,
            "window_size": self.window_size,
            "text_guidance_dim": self.text_guidance_dim,
            "appearance_guidance_dim": self.appearance_guidance_dim,
            "class_pool_size": self.class_pool_size,
        }
        for name, value in positive.items():
            if value < 1:
                raise UsageError(f"decoder.{name} must be at least 1, got {value}")
        if self.hidden_dim % self.heads:
            raise UsageError(
                f"decoder.hidden_dim ({self.hidden_dim}) must be divisible by decoder.heads ({self.heads})"
            )
        if self.pad_len < 0:
            raise UsageError(f"decoder.pad_len must be 0 (off) or positive, got {self.pad_len}")
        stages = len(self.decoder_dims)
        lists = {
            "decoder_guidance_dims": self.decoder_guidance_dims,
            "decoder_guidance_proj_dims": self.decoder_guidance_proj_dims,
            "guidance_layers": self.guidance_layers,
        }
        if stages < 1:
            raise UsageError("decoder.decoder_dims needs at least one upsampling stage")
        for name, values in lists.items():
            if len(values) != stages:
                raise UsageError(
                    f"decoder.{name} has {len(values)} entries but decoder.decoder_dims has {stages}; "
                    "give one per upsampling stage"
                )
        for dim in self.decoder_dims:
            if dim < 16 or dim % 16:
                raise UsageError(f"decoder.decoder_dims entries must be multiples of 16, got {dim}")
        if min(self.decoder_guidance_dims) < 1 or min(self.decoder_guidance_proj_dims) < 1:
            raise UsageError("decoder guidance dims must be positive")
        if min(self.guidance_layers) < 0:
            raise UsageError("decoder.guidance_layers are CLIP block indices and must be >= 0")
        stage_inputs = [self.hidden_dim, *self.decoder_dims[:-1]]
        for i, (width, proj) in enumerate(zip(stage_inputs, self.decoder_guidance_proj_dims)):
            # the stage's transposed conv keeps width - proj channels so that the concat is `width` wide
            if proj >= width:
                raise UsageError(
                    f"decoder.decoder_guidance_proj_dims[{i}] ({proj}) must be smaller than the "
                    f"stage's input width ({width})"
                )
