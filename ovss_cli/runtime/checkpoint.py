"""Checkpoints: safetensors weights + JSON sidecar, and a separate training-state file.

Layout inside a run folder's `checkpoints/`:
    step_00005000.safetensors   every weight of the model (CLIP, adapters, decoder)
    step_00005000.state.pt      optimizer, scaler, scheduler, step, RNG states (tensors and plain types only)
    step_00005000.json          sidecar: method, CLIP name/weights source/image size, classes, recipe, step
    best.safetensors + best.json   the best-by-mIoU weights (no training state)
Every file is written to a temporary name, fsynced and renamed; the sidecar goes last, so a
checkpoint whose sidecar exists is complete. Training state is read with
torch.load(weights_only=True): nothing is ever unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ovss_cli.errors import OvssError
from ovss_cli.fileio import atomic_write, write_json
from ovss_cli.textutil import first_line

STEP_PATTERN = re.compile(r"^step_(\d{8})\.json$")
BEST = "best"


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file of CPU copies of `tensors`, written atomically."""

    # clones: safetensors refuses tensors that share storage, and the file must not alias live parameters
    tensors = {key: value.detach().to("cpu", copy=True).contiguous() for key, value in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))


def save_weights(model: torch.nn.Module, path: Path) -> None:
    save_tensors(model.state_dict(), path)


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load every weight of `model` from a safetensors file (strict); a bad file gives one clear line."""

    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise OvssError(f"checkpoint {path} is corrupt or truncated ({first_line(err)}); "
                        "delete it and resume from an earlier checkpoint") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise OvssError(f"checkpoint {path} does not fit this model ({first[-1].strip() if first else err}); "
                        "was it trained with a different recipe?") from None


def read_sidecar(weights: Path) -> dict:
    sidecar = weights.with_suffix(".json")
    try:
        payload = json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OvssError(f"checkpoint sidecar {sidecar} is missing; a checkpoint needs its .safetensors and .json") from None
    except (OSError, ValueError) as err:
        raise OvssError(f"checkpoint sidecar {sidecar} is corrupt ({first_line(err)}); delete the checkpoint") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("recipe"), dict):
        raise OvssError(f"checkpoint sidecar {sidecar} is not an ovss sidecar (expected an object with a 'recipe'); "
                        "delete the checkpoint or restore its .json")
    return payload


def save_training_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise OvssError(f"training state {path} is missing; resume needs a step checkpoint (not best.*)") from None
    except Exception as err:
        raise OvssError(f"training state {path} is corrupt or truncated ({first_line(err)}); "
                        "delete that checkpoint and resume from an earlier one") from None


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(directory: Path, name: str, model: torch.nn.Module, sidecar: dict,
                    training_state: dict | None = None) -> Path:
    """Write <name>.safetensors (+ .state.pt) and finally <name>.json; returns the weights path."""
    weights = directory / f"{name}.safetensors"
    save_weights(model, weights)
    if training_state is not None:
        save_training_state(directory / f"{name}.state.pt", training_state)
    write_json(directory / f"{name}.json", sidecar)
    return weights


def step_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete step checkpoints (sidecar, weights and state present), oldest first, as (step, weights path)."""
    found = []
    if directory.is_dir():
        for sidecar in directory.iterdir():
            match = STEP_PATTERN.match(sidecar.name)
            weights = sidecar.with_suffix(".safetensors")
            if match and weights.is_file() and sidecar.with_suffix(".state.pt").is_file():
                found.append((int(match.group(1)), weights))
    return sorted(found)


def training_state_path(weights: Path) -> Path:
    return weights.with_suffix(".state.pt")


def prune_checkpoints(directory: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (sidecar first, so none is ever half-listed)."""
    for _, weights in step_checkpoints(directory)[:-keep_last]:
        for path in (weights.with_suffix(".json"), weights, training_state_path(weights)):
            path.unlink(missing_ok=True)


def resolve_checkpoint(path: Path) -> Path:
    """A weights file from a .safetensors/.json path or a run folder (its best checkpoint, else the latest)."""
    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        best = directory / f"{BEST}.safetensors"
        if best.is_file() and best.with_suffix(".json").is_file():
            return best
        steps = step_checkpoints(directory)
        if not steps:
            raise OvssError(f"no checkpoint in {directory}; pass a run folder with checkpoints/ or a .safetensors file")
        return steps[-1][1]
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.name.endswith(".state.pt"):
        path = path.with_name(path.name[: -len(".state.pt")] + ".safetensors")
    if not path.is_file():
        raise OvssError(f"checkpoint {path} not found; pass a run folder or a .safetensors checkpoint file")
    return path
