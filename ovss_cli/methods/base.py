"""What evaluation and prediction need from any model: a vocabulary and per-window class scores."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch


class Segmenter(Protocol):
    window: int  # the square input size the scorer expects

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Encode (and cache) the text side for these class names."""

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images [B, 3, window, window] -> class probabilities [B, T, window, window]."""
