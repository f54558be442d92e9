"""Method registry: which recipe sections each method reads, and how its model is built.

A training model built here is an nn.Module with
  - `forward(batch)` / `training_loss(batch)` -> dict of scalar tensors with a 'loss' key,
  - `param_groups(optim_cfg)` -> optimizer parameter groups,
  - `enable_activation_checkpointing()`,
  - the Segmenter protocol (`window`, `image_norm`, `set_vocabulary`, `scores`) for evaluation,
  - `train_classes` (the training vocabulary, recorded in checkpoints).
The engine only ever talks to that interface. This module imports no torch at import time
(recipes validate against it at start-up); a builder imports its method when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _build_catseg(recipe, pretrained: bool):
    from ovss_cli.methods.catseg import build_catseg

    return build_catseg(recipe, pretrained=pretrained)


def _build_infoclip(recipe, pretrained: bool):
    from ovss_cli.methods.infoclip import build_infoclip

    return build_infoclip(recipe, pretrained=pretrained)


def _build_vpl(recipe, pretrained: bool):
    from ovss_cli.methods.vpl import build_vpl

    return build_vpl(recipe, pretrained=pretrained)


def _prepare_vpl(recipe, model) -> None:
    from ovss_cli.methods.vpl import load_training_prototypes

    load_training_prototypes(recipe, model)


@dataclass(frozen=True)
class MethodSpec:
    build: Callable  # (recipe, pretrained: bool) -> model
    sections: tuple[str, ...]  # recipe sections this method reads beyond the common ones
    summary: str
    distills: bool = False  # trained with `ovss distill`: a frozen teacher guides the student
    checkpoint_holds_clip: bool = True  # False: checkpoints keep only what trains; loading builds the pretrained CLIP
    prepare_training: Callable | None = None  # (recipe, model): inputs read once before training (checkpoints keep them)


METHODS: dict[str, MethodSpec] = {
    "catseg": MethodSpec(_build_catseg, ("finetune", "decoder", "loss"),
                         "CAT-Seg cost aggregation on CLIP; with finetune.mode hclip it is H-CLIP"),
    "infoclip": MethodSpec(_build_infoclip, ("finetune", "decoder", "loss", "infoclip"),
                           "InfoCLIP: CAT-Seg distilled from the frozen pretrained CLIP", distills=True),
    "vpl": MethodSpec(_build_vpl, ("clip_es", "prototypes", "vpl"),
                      "VPL (WSSS): a decoder on frozen CLIP trained from pseudo-labels with regional semantic contrast",
                      checkpoint_holds_clip=False, prepare_training=_prepare_vpl),
}


def build_model(recipe, pretrained: bool = True):
    """The recipe's model (CPU, training mode). pretrained=False: random CLIP weights (no download)."""
    return METHODS[recipe.method].build(recipe, pretrained)
