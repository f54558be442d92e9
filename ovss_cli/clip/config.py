"""The `clip:` recipe section."""

from __future__ import annotations

from dataclasses import dataclass

from ovss_cli.errors import UsageError


@dataclass
class ClipConfig:
    name: str = "ViT-B-16"
    """open_clip model name (`ovss-tiny` is ovss's random tiny CLIP for tests and the quickstart)."""
    pretrained: str = "openai"
    """open_clip pretrained tag, a local .pt/.safetensors file, or '' for random initialisation."""
    image_size: int = 384
    """Input resolution of the CLIP image encoder (384 for ViT-B/16, 336 for ViT-L/14: a 24x24 grid)."""
    templates: str | list[str] = "single"
    """'single' (CAT-Seg's 'A photo of a {} in the scene'), 'imagenet80', 'imagenet7', or a list of templates."""

    def validate(self) -> None:
        if self.image_size <= 0:
            raise UsageError(f"clip.image_size must be positive, got {self.image_size}")
        from ovss_cli.clip.prompts import resolve_templates

        resolve_templates(self.templates)


def build_dense_clip(cfg: ClipConfig):
    """DenseCLIP + TextEncoder for a `clip:` section (weights loaded, positional embeddings resized)."""
    from ovss_cli.clip.dense import DenseCLIP
    from ovss_cli.clip.prompts import resolve_templates
    from ovss_cli.clip.text import TextEncoder, weights_identity
    from ovss_cli.clip.zoo import create_clip

    model = create_clip(cfg.name, cfg.pretrained or None)
    dense = DenseCLIP(model, cfg.image_size)
    if not cfg.pretrained:
        model_id = None  # random weights: nothing to cache
    elif "/" in cfg.pretrained or cfg.pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        model_id = f"{cfg.name}|{weights_identity(cfg.pretrained)}"
    else:
        model_id = f"{cfg.name}|{cfg.pretrained}"
    return dense, TextEncoder(cfg.name, resolve_templates(cfg.templates), model_id=model_id)
