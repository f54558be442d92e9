"""CLIP weights in every published form -> an open_clip state dict, plus what the weights record about themselves.

Accepted forms:
  - OpenAI's TorchScript archives (`ViT-B-16.pt`): read with `torch.jit.load`, which builds modules from
    the archive's TorchScript code and unpickles no arbitrary Python objects; the archive's module
    types tell the activation (OpenAI's are `QuickGELU`).
  - open_clip / timm `.safetensors` files.
  - plain state dicts (`.pt/.pth/.bin`, optionally under 'state_dict'), read with weights_only=True.
  - Hugging Face hub folders: `open_clip_config.json` (model and preprocess config) beside
    `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`; a weights file inside such a
    folder (a hub cache snapshot) reads the config beside it too.
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ovss_cli.errors import OvssError
from ovss_cli.textutil import first_line

FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                  "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
# Entries of some state dicts that are no tensors of open_clip's CLIP: OpenAI's hyper-parameters and
# the causal text mask (a traced archive keeps it, open_clip rebuilds it).
NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size", "attn_mask")
TORCHSCRIPT_ACTIVATIONS = {"QuickGELU": True, "GELU": False}


@dataclass
class ClipWeights:
    state: dict[str, torch.Tensor]
    form: str  # 'torchscript', 'safetensors', 'state dict', 'folder'
    quick_gelu: bool | None  # the activation the weights record; None: they record none
    preprocess: dict | None  # open_clip preprocess config stored beside the weights (mean, std, interpolation)


def is_local_weights(pretrained: str) -> bool:
    """A path (a weights file or a folder, written with a '/'), not an open_clip pretrained tag."""
    return pretrained.endswith(WEIGHT_SUFFIXES) or "/" in pretrained or os.sep in pretrained


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip holding `constants.pkl` (torch.save's zips do not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name == "constants.pkl" or name.endswith("/constants.pkl") for name in archive.namelist())


def _folder_config(directory: Path) -> dict | None:
    config = directory / FOLDER_CONFIG
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise OvssError(f"{config} is unreadable ({err}); download the folder again") from None


def folder_weights(directory: Path) -> Path:
    for name in FOLDER_WEIGHTS:
        if (directory / name).is_file():
            return directory / name
    raise OvssError(f"{directory} holds no CLIP weights; expected one of {', '.join(FOLDER_WEIGHTS)}")


def _read_torchscript(path: Path) -> tuple[dict[str, torch.Tensor], bool | None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch marks torch.jit deprecated; the archive format stays
        module = torch.jit.load(str(path), map_location="cpu")
    kinds = {TORCHSCRIPT_ACTIVATIONS[m.original_name] for _, m in module.named_modules()
             if getattr(m, "original_name", None) in TORCHSCRIPT_ACTIVATIONS}
    return dict(module.state_dict()), (kinds.pop() if len(kinds) == 1 else None)


def _read_plain(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not payload:
        raise ValueError("the file holds no state dict")
    if all(str(key).startswith("module.") for key in payload):  # saved from a DistributedDataParallel wrapper
        payload = {key[len("module."):]: value for key, value in payload.items()}
    return payload


def read_clip_weights(path: Path) -> ClipWeights:
    """The tensors of a CLIP weights file or hub folder, with the activation and preprocessing it records."""
    path = Path(path).expanduser()
    if not path.exists():
        raise OvssError(f"CLIP weights file not found: {path}")
    # a hub folder, or one of its weight files (a hub cache snapshot): the config beside it describes it
    config = _folder_config(path if path.is_dir() else path.parent) if path.is_dir() or path.name in FOLDER_WEIGHTS else None
    weights = folder_weights(path) if path.is_dir() else path
    try:
        if is_torchscript(weights):
            state, quick_gelu = _read_torchscript(weights)
            form = "torchscript"
        else:
            state, quick_gelu = _read_plain(weights), None
            form = "safetensors" if weights.suffix == ".safetensors" else "state dict"
    except OvssError:
        raise
    except pickle.UnpicklingError:  # torch's weights_only refusal: not a plain state dict
        raise OvssError(f"cannot read CLIP weights {weights}: neither a TorchScript archive nor a state dict of "
                        "tensors (corrupt, or it pickles other Python objects); pass an OpenAI TorchScript .pt, "
                        "an open_clip .safetensors/.bin state dict or a hub folder with open_clip_config.json") from None
    except Exception as err:  # corrupt or truncated
        reason = first_line(err)
        raise OvssError(f"cannot read CLIP weights {weights} ({reason}); pass an OpenAI TorchScript .pt, "
                        "an open_clip .safetensors/.bin state dict or a hub folder with open_clip_config.json") from None
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise OvssError(f"CLIP weights {weights} hold entries that are not tensors; pass a plain state dict")
    preprocess = None
    if config is not None:
        model_cfg = config.get("model_cfg", config)
        if "quick_gelu" in model_cfg:  # some older hub configs omit it: then they record nothing
            quick_gelu = bool(model_cfg["quick_gelu"])
        preprocess = config.get("preprocess_cfg") or None
        form = "folder"
    return ClipWeights(state=state, form=form, quick_gelu=quick_gelu, preprocess=preprocess)
