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


def load_segmenter(path: Path | str, device: str = "cpu"):
    """A trained model from a checkpoint (.safetensors or its .json sidecar) or a run folder, in eval mode on `device`.

    A run folder resolves to its best checkpoint, else its latest; an `ovss export --format open_clip`
    folder loads its plain CLIP + decoder weights. The model is rebuilt from the
    recipe stored in the sidecar with random CLIP weights, then every weight (CLIP, adapters,
    decoder) is loaded from the file: no pretrained download is needed.
    """
    from ovss_cli.engine.checkpoint import load_weights, read_sidecar, resolve_checkpoint
    from ovss_cli.export import is_export_dir, load_exported
    from ovss_cli.recipes import recipe_from_dict

    if is_export_dir(Path(path)):
        return load_exported(Path(path), device)
    weights = resolve_checkpoint(Path(path))
    sidecar = read_sidecar(weights)
    try:
        recipe = recipe_from_dict(sidecar["recipe"], "checkpoint recipe")
    except (KeyError, UsageError) as err:
        raise OvssError(f"checkpoint {weights} has an unusable recipe in its sidecar ({err}); "
                        "was it written by another ovss version?") from None
    model = build_model(recipe, pretrained=False)
    load_weights(model, weights)
    return model.to(device).eval()
