"""Turning a per-window scorer into full-image predictions: CAT-Seg's sliding window and a whole-image mode.

A scorer maps CLIP-normalised images [B, 3, S, S] (S = the model's window size) to class
probabilities [B, T, S, S]; images are normalised with the segmenter's `image_norm` (its CLIP's statistics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SlidingWindow:
    """CAT-Seg's protocol: resize to `resize`, `window` crops every `stride` plus one global view.

    Defaults follow the official ViT-B/16 setting (640 / 384 / 256 = int(384 * (1 - 0.333))).
    """

    window: int = 384
    stride: int = 256
    resize: int = 640

    @classmethod
    def for_window(cls, window: int) -> "SlidingWindow":
        """The official geometry scaled to another window size: stride = int(window * 0.667), 2 x 2 crops."""
        stride = int(window * (1 - 0.333))
        return cls(window=window, stride=stride, resize=window + stride)

    def validate(self) -> None:
        if self.resize < self.window or (self.resize - self.window) % self.stride:
            raise ValueError(f"windows of {self.window} every {self.stride} do not tile {self.resize}")


def sliding_window_scores(image: torch.Tensor, scorer: Scorer, geometry: SlidingWindow,
                          output_size: tuple[int, int]) -> torch.Tensor:
    """Scores [T, H, W] for one CLIP-normalised image [3, h, w] (any size), resized to `output_size`."""
    geometry.validate()
    size, window, stride = geometry.resize, geometry.window, geometry.stride
    resized = F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False)
    crops = F.unfold(resized, kernel_size=window, stride=stride)  # [1, 3*window*window, L]
    num_crops = crops.shape[-1]
    crops = crops[0].T.reshape(num_crops, 3, window, window)
    global_view = F.interpolate(image[None], size=(window, window), mode="bilinear", align_corners=False)
    scores = scorer(torch.cat([crops, global_view], dim=0)).float()  # [L + 1, T, window, window]
    num_classes = scores.shape[1]
    local = scores[:-1].reshape(num_crops, num_classes * window * window).T[None]
    ones = torch.ones(1, window * window, num_crops, device=scores.device)
    folded = F.fold(local, (size, size), kernel_size=window, stride=stride)
    coverage = F.fold(ones, (size, size), kernel_size=window, stride=stride)
    local_mean = folded / coverage  # fold-averaged windows [1, T, size, size]
    global_up = F.interpolate(scores[-1:], size=(size, size), mode="bilinear", align_corners=False)
    merged = (local_mean + global_up) / 2
    return F.interpolate(merged, size=output_size, mode="bilinear", align_corners=False)[0]


def whole_image_scores(image: torch.Tensor, scorer: Scorer, window: int, output_size: tuple[int, int]) -> torch.Tensor:
    """Scores [T, H, W]: the whole image resized to one window, scored, resized back."""
    view = F.interpolate(image[None], size=(window, window), mode="bilinear", align_corners=False)
    scores = scorer(view).float()
    return F.interpolate(scores, size=output_size, mode="bilinear", align_corners=False)[0]


def predict_scores(image: torch.Tensor, scorer: Scorer, mode: Literal["sliding", "whole"], window: int,
                   output_size: tuple[int, int]) -> torch.Tensor:
    if mode == "sliding":
        return sliding_window_scores(image, scorer, SlidingWindow.for_window(window), output_size)
    return whole_image_scores(image, scorer, window, output_size)
