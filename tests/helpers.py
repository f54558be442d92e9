"""Shared test helpers: a per-pixel oracle segmenter and synthetic prepared benchmarks."""

from __future__ import annotations

import numpy as np
import torch

from ovss_cli.data.transforms import CLIP_MEAN, CLIP_STD


def encode_classes_as_pixels(prediction: np.ndarray) -> np.ndarray:
    """An RGB image whose pixels spell the class id (R = id % 256, G = id // 256)."""
    image = np.zeros((*prediction.shape, 3), dtype=np.uint8)
    image[..., 0] = prediction % 256
    image[..., 1] = prediction // 256
    return image


class PixelOracle:
    """A per-pixel 'model': reads the class id spelled by each pixel and scores it 1, all others 0."""

    def __init__(self, window: int):
        self.window = window
        self.num_classes = 0

    def set_vocabulary(self, class_names):
        self.num_classes = len(class_names)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255
        pixels = (images * std + mean).round().long()
        ids = (pixels[:, 0] + 256 * pixels[:, 1]).clamp(0, self.num_classes - 1)
        return torch.nn.functional.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float()
