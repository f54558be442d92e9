"""Create open_clip models by name with weights from a tag or a local file, failing fast offline."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

from ovss_cli.errors import OvssError, UsageError
from ovss_cli.textutil import did_you_mean, first_line

_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered = False


def register_ovss_configs() -> None:
    """Make ovss's own model configs (e.g. `ovss-tiny`) known to open_clip (idempotent)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered = True


def _is_local_weights(pretrained: str) -> bool:
    return pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.sep in pretrained


def create_clip(name: str, pretrained: str | None = None, random_init_seed: int = 0):
    """Build open_clip model `name` with weights `pretrained` (a tag, a local file, or None for random init).

    A tag that is not in the local cache fails at once (no network retries) with a message
    saying how to pass a local file instead.
    """
    import open_clip
    import torch

    register_ovss_configs()
    if name not in open_clip.list_models():
        raise UsageError(f"unknown CLIP model '{name}'{did_you_mean(name, open_clip.list_models())}; "
                         "see open_clip.list_models()")
    if not pretrained:
        # Seeded so that every rank (and every run) builds the same random model.
        with _quiet_root_logger(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(random_init_seed)
            return open_clip.create_model(name, pretrained=None)
    if _is_local_weights(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise OvssError(f"CLIP weights file not found: {path}")
        try:
            return open_clip.create_model(name, pretrained=str(path))
        except Exception as err:  # corrupt or mismatched checkpoint
            raise OvssError(f"cannot load CLIP weights {path} into {name}: {first_line(err)}") from err
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        raise UsageError(
            f"unknown pretrained tag '{pretrained}' for {name}; known tags: {', '.join(tags) or 'none'}, "
            "or pass a local .pt/.safetensors file"
        )
    try:
        # The local cache first: no network needed, no retries; open_clip's own error log stays quiet.
        with _hub_offline(True), _quiet_root_logger(logging.CRITICAL):
            return open_clip.create_model(name, pretrained=pretrained)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True") or not _hub_reachable():
        raise OvssError(
            f"CLIP weights '{name}/{pretrained}' are not in the local cache and cannot be downloaded "
            f"(offline); download them once elsewhere and pass the file: --pretrained /path/to/{name}.pt "
            f"(in a recipe: clip.pretrained=/path/to/{name}.pt)"
        )
    try:
        return open_clip.create_model(name, pretrained=pretrained)
    except Exception as err:
        raise OvssError(
            f"downloading CLIP weights '{name}/{pretrained}' failed ({first_line(err)}); "
            f"pass a local file instead: --pretrained /path/to/{name}.pt (in a recipe: clip.pretrained=...)"
        ) from err


@contextlib.contextmanager
def _quiet_root_logger(level: int = logging.ERROR):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Temporarily switch huggingface_hub's offline mode (it reads the flag at call time)."""
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """One quick TCP connect, so an offline machine fails in seconds instead of minutes of retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False
