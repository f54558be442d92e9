"""Zero-shot dense CLIP: patch features of the dense last block against text embeddings.

The baseline `ovss evaluate` uses without a checkpoint, so evaluation works before any training.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ovss_cli.clip.dense import DenseCLIP
from ovss_cli.clip.text import TextEncoder


class ZeroShotSegmenter(nn.Module):
    def __init__(self, dense_clip: DenseCLIP, text: TextEncoder):
        super().__init__()
        self.dense = dense_clip
        self.text = text
        self.window = dense_clip.image_size
        self._class_embeddings: torch.Tensor | None = None

    @property
    def image_norm(self):
        return self.dense.norm

    @torch.no_grad()
    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        embeddings = self.text.embed_classes(self.dense, list(class_names))  # [T, P, C]
        # Template ensemble: average the normalised template embeddings, then renormalise.
        embeddings = F.normalize(F.normalize(embeddings, dim=-1).mean(dim=1), dim=-1)
        self._class_embeddings = embeddings

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        if self._class_embeddings is None:
            raise RuntimeError("call set_vocabulary() before scores()")
        tokens = F.normalize(self.dense.encode_image_dense(images).tokens, dim=1)  # [B, C, h, w]
        logits = torch.einsum("bchw,tc->bthw", tokens, self._class_embeddings.to(tokens.dtype))
        logit_scale = self.dense.clip.logit_scale.exp().clamp(max=100)
        probabilities = (logit_scale * logits).float().softmax(dim=1)
        return F.interpolate(probabilities, size=images.shape[-2:], mode="bilinear", align_corners=False)
