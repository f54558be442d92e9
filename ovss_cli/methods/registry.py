"""Method registry: recipe -> model, and checkpoint -> ready-to-use segmenter.

A training model built here is an nn.Module with
  - `forward(batch)` / `training_loss(batch)` -> dict of scalar tensors with a 'loss' key,
  - `param_groups(optim_cfg)` -> optimizer parameter groups,
  - `enable_activation_checkpointing()`,
  - the Segmenter protocol (`window`, `set_vocabulary`, `scores`) for evaluation,
  - `train_classes` (the training vocabulary, recorded in checkpoints).
The engine only ever talks to that interface.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ovss_cli.errors import OvssError, UsageError


def _build_catseg(recipe, pretrained: bool):
    from ovss_cli.methods.catseg import build_catseg

    return build_catseg(recipe, pretrained=pretrained)


def _build_infoclip(recipe, pretrained: bool):
    from ovss_cli.methods.infoclip import build_infoclip

    return build_infoclip(recipe, pretrained=pretrained)


BUILDERS: dict[str, Callable] = {"catseg": _build_catseg, "infoclip": _build_infoclip}


def build_model(recipe, pretrained: bool = True):
    """The recipe's model (CPU, training mode). pretrained=False: random CLIP weights (no download)."""
    if recipe.method not in BUILDERS:
        raise UsageError(f"method '{recipe.method}' has no model builder; known: {', '.join(BUILDERS)}")
    return BUILDERS[recipe.method](recipe, pretrained)
