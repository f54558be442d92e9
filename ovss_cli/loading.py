"""The one place trained models are loaded from disk: checkpoints, run folders and export folders.

A checkpoint's model is rebuilt from the recipe stored in its sidecar (with the CLIP activation
and pixel statistics it was trained with; older sidecars: the model config's and OpenAI's) with random CLIP
weights, then every weight (CLIP, adapters, decoder) is loaded from the file, so no
pretrained download is needed. Methods on a frozen CLIP (vpl) keep only what trains in their
checkpoints: they are rebuilt with the recipe's pretrained CLIP, which must match the one they
were trained on. An `ovss export --format open_clip` folder holds plain CLIP
weights + the decoder, read back the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from ovss_cli.clip.config import check_checkpoint_clip, legacy_clip_section
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.methods.registry import METHODS, build_model
from ovss_cli.recipes import recipe_from_dict
from ovss_cli.runtime.checkpoint import load_weights, read_sidecar, resolve_checkpoint
from ovss_cli.textutil import first_line

# The files of an `ovss export --format open_clip` folder.
EXPORT_META = "ovss_export.json"
CLIP_FILE = "open_clip_model.safetensors"
DECODER_FILE = "decoder.safetensors"


def is_export_dir(path: Path) -> bool:
    return path.is_dir() and (path / EXPORT_META).is_file()


def load_segmenter(path: Path | str, device: str = "cpu") -> torch.nn.Module:
    """A trained model from a checkpoint (.safetensors or its .json sidecar), a run folder or an export
    folder, in eval mode on `device`. A run folder resolves to its best checkpoint, else its latest."""
    path = Path(path)
    if is_export_dir(path):
        return load_exported(path, device)
    weights = resolve_checkpoint(path)
    sidecar = read_sidecar(weights)
    try:
        stored = {**sidecar["recipe"], "clip": legacy_clip_section(sidecar["recipe"]["clip"])}
        recipe = recipe_from_dict(stored, "checkpoint recipe", drop_unused_sections=True)
    except (KeyError, TypeError, UsageError) as err:
        raise OvssError(f"checkpoint {weights} has an unusable recipe in its sidecar ({err}); "
                        "was it written by another ovss version?") from None
    model = build_model(recipe, pretrained=not METHODS[recipe.method].checkpoint_holds_clip)
    check_checkpoint_clip(model.dense, sidecar, str(weights))
    load_weights(model, weights)
    return model.to(device).eval()


def load_exported(path: Path, device: str = "cpu") -> torch.nn.Module:
    """The segmenter of an `open_clip` export folder: plain CLIP weights + decoder, in eval mode."""
    try:
        meta = json.loads((path / EXPORT_META).read_text(encoding="utf-8"))
        stored = {**meta["recipe"], "clip": legacy_clip_section(meta["recipe"]["clip"])}
        recipe = recipe_from_dict(stored, "export recipe", drop_unused_sections=True)
    except (ValueError, KeyError, TypeError, UsageError) as err:
        raise OvssError(f"{path / EXPORT_META} is unreadable ({err}); export the checkpoint again") from None
    model = build_model(recipe, pretrained=False)
    for module, name in ((model.dense.clip, CLIP_FILE), (model.decoder, DECODER_FILE)):
        try:
            module.load_state_dict(load_file(str(path / name)), strict=True)
        except Exception as err:
            raise OvssError(f"{path / name} is missing or does not fit ({first_line(err)}); "
                            "export the checkpoint again") from None
    return model.to(device).eval()
