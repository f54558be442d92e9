"""The `clip:` recipe section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

from ovss_cli.errors import UsageError

# OpenAI CLIP's pixel statistics (open_clip.constants.OPENAI_DATASET_MEAN / _STD), in 0..1 units.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@dataclass
class ClipConfig:
    name: str = "ViT-B-16"
    """open_clip model name (`ovss-tiny` is ovss's random tiny CLIP for tests and the quickstart)."""
    pretrained: str = "openai"
    """open_clip pretrained tag, a local file (OpenAI TorchScript .pt, .safetensors, state-dict .bin/.pt) or hub folder, or '' for random initialisation."""
    quick_gelu: Union[Literal["auto"], bool] = "auto"
    """MLP activation: auto = the one the weights were trained with (tag config, TorchScript archive, hub config), else the model config's; true = QuickGELU, false = GELU."""
    image_mean: list[float] | None = None
    """Pixel mean (0..1, RGB) CLIP sees; null = the weights' pretrained config (OpenAI's when it records none)."""
    image_std: list[float] | None = None
    """Pixel std (0..1, RGB); null = the weights' pretrained config."""
    image_interpolation: str | None = None
    """Interpolation of resizes made only to feed CLIP (CLIP-ES); null = the weights' pretrained config."""
    image_size: int = 384
    """Input resolution of the CLIP image encoder (384 for ViT-B/16, 336 for ViT-L/14: a 24x24 grid)."""
    templates: str | list[str] = "single"
    """'single' (CAT-Seg's 'A photo of a {} in the scene'), 'imagenet80', 'imagenet7', or a list of templates."""

    def validate(self) -> None:
        if self.image_size <= 0:
            raise UsageError(f"clip.image_size must be positive, got {self.image_size}")
        for key in ("image_mean", "image_std"):
            value = getattr(self, key)
            if value is not None and (len(value) != 3 or (key == "image_std" and min(value) <= 0)):
                raise UsageError(f"clip.{key} needs 3 values (RGB, 0..1 units{', positive' if key == 'image_std' else ''}), got {value}")
        if self.image_interpolation is not None and self.image_interpolation not in INTERPOLATIONS:
            raise UsageError(f"clip.image_interpolation must be one of {', '.join(INTERPOLATIONS)} or null, "
                             f"got '{self.image_interpolation}'")
        from ovss_cli.clip.prompts import resolve_templates

        resolve_templates(self.templates)


def build_dense_clip(cfg: ClipConfig, load_weights: bool = True, image_size: int | None = None,
                     join_synonyms: bool = False):
    """DenseCLIP + TextEncoder for a `clip:` section (weights loaded, positional embeddings resized to
    `image_size`, by default the section's; 0 keeps the model's native size, as CLIP-ES wants).

    load_weights=False builds the network the weights would make (activation, normalisation) with
    random weights, for a checkpoint to fill. join_synonyms: prompts keep whole class names (CLIP-ES).
    """
    from ovss_cli.clip.dense import DenseCLIP
    from ovss_cli.clip.prompts import resolve_templates
    from ovss_cli.clip.text import TextEncoder, weights_identity
    from ovss_cli.clip.weights import is_local_weights
    from ovss_cli.clip.zoo import activation_name, create_clip

    norm = {"mean": cfg.image_mean, "std": cfg.image_std, "interpolation": cfg.image_interpolation}
    model = create_clip(cfg.name, cfg.pretrained or None, quick_gelu=cfg.quick_gelu, norm=norm,
                        load_weights=load_weights)
    size = cfg.image_size if image_size is None else image_size or int(model.visual.image_size[0])
    dense = DenseCLIP(model, size)
    if not cfg.pretrained or not load_weights:
        model_id = None  # random weights: nothing to cache
    elif is_local_weights(cfg.pretrained):
        model_id = f"{cfg.name}|{weights_identity(cfg.pretrained)}"
    else:
        model_id = f"{cfg.name}|{cfg.pretrained}"
    if model_id is not None:  # the same weights give other text embeddings under the other activation
        model_id += f"|{activation_name(dense.quick_gelu)}"
    return dense, TextEncoder(cfg.name, resolve_templates(cfg.templates), model_id=model_id,
                              join_synonyms=join_synonyms)


def pinned_clip_section(section: dict, dense) -> dict:
    """A `clip:` recipe section with the activation and normalisation `dense` was built with, so that
    rebuilding it without weights (checkpoints, exports) gives the same network wherever it runs."""
    norm = dense.norm
    return {**section, "quick_gelu": dense.quick_gelu, "image_mean": list(norm.mean), "image_std": list(norm.std),
            "image_interpolation": norm.interpolation}


def legacy_clip_section(section: dict) -> dict:
    """A stored `clip:` section from before ovss recorded activation and normalisation: such checkpoints
    were trained with the model config's activation and OpenAI's statistics."""
    from ovss_cli.clip.zoo import model_quick_gelu

    if "quick_gelu" in section:
        return section
    return {**section, "quick_gelu": model_quick_gelu(section.get("name", ClipConfig.name)),
            "image_mean": list(OPENAI_MEAN), "image_std": list(OPENAI_STD), "image_interpolation": "bicubic"}


def check_checkpoint_clip(dense, sidecar: dict, source: str) -> None:
    """Refuse a checkpoint whose CLIP ran another activation than the model it is loaded into."""
    from ovss_cli.clip.zoo import check_activation

    record = sidecar.get("clip") or {}
    if "quick_gelu" not in record:  # written before ovss recorded it
        record = legacy_clip_section((sidecar.get("recipe") or {}).get("clip") or {})
    check_activation(dense.clip, record["quick_gelu"], f"checkpoint {source}")
