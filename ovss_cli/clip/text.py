"""Class-name text embeddings: prompts, tokenisation and an on-disk cache.

The cache key is the model identity (name + weights identity, given by the caller) plus the
templates and class names, so a changed vocabulary, prompt or checkpoint never reuses a
stale entry. Randomly initialised models have no identity and are never cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file, save_file

from ovss_cli.clip.prompts import build_prompts
from ovss_cli.clip.zoo import register_ovss_configs
from ovss_cli.fileio import atomic_write


def default_cache_dir() -> Path:
    return Path(os.environ.get("OVSS_CACHE", Path.home() / ".cache" / "ovss")) / "text"


def weights_identity(path: str | Path) -> str:
    """A cheap identity for a weights file (or a hub folder's weights): its resolved path, size and modification time."""
    if Path(path).is_dir():
        from ovss_cli.clip.weights import folder_weights

        path = folder_weights(Path(path))
    stat = Path(path).stat()
    return f"{Path(path).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


class TextEncoder:
    def __init__(self, clip_name: str, templates: list[str], model_id: str | None = None,
                 cache_dir: Path | None = None, join_synonyms: bool = False):
        register_ovss_configs()  # ovss's own model names (ovss-tiny) have tokenizers too
        self.tokenizer = open_clip.get_tokenizer(clip_name)
        self.templates = list(templates)
        self.join_synonyms = join_synonyms
        self.model_id = model_id
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()

    def tokens(self, class_names: list[str]) -> torch.Tensor:
        """Token ids [T * P, context] of the class-major prompts."""
        return self.tokenizer(build_prompts(class_names, self.templates, self.join_synonyms))

    def _cache_path(self, class_names: list[str]) -> Path | None:
        if not self.model_id:
            return None
        key = {"model": self.model_id, "templates": self.templates, "classes": class_names}
        if self.join_synonyms:  # (absent otherwise, so existing cache entries keep their keys)
            key["join_synonyms"] = True
        key = json.dumps(key)
        return self.cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    @torch.no_grad()
    def embed_classes(self, dense_clip, class_names: list[str]) -> torch.Tensor:
        """[T, P, C] text embeddings (not normalised), from the cache when possible."""

        device = next(dense_clip.parameters()).device
        path = self._cache_path(class_names)
        if path is not None and path.is_file():
            try:
                return load_file(str(path))["embeddings"].to(device)
            except Exception:
                path.unlink(missing_ok=True)  # a corrupt entry is recomputed
        embeddings = dense_clip.class_text_embeddings(self.tokens(class_names).to(device), len(class_names)).float()
        if path is not None:
            tensors = {"embeddings": embeddings.cpu().contiguous()}
            atomic_write(path, lambda temporary: save_file(tensors, str(temporary)), durable=False)
        return embeddings
