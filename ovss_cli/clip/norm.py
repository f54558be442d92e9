"""Image tensors in the form a CLIP expects: its pixel statistics and resize interpolation.

Each CLIP's weights were trained with their own statistics (OpenAI's for OpenAI and most LAION
weights, 0.5 for some others), so the statistics travel with the model (`DenseCLIP.norm`, the
checkpoint sidecar, the ONNX metadata) instead of being a global.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ovss_cli.clip.config import INTERPOLATIONS, OPENAI_MEAN, OPENAI_STD
from ovss_cli.errors import UsageError


@dataclass(frozen=True)
class ImageNorm:
    """Per-channel mean and std (0..1 units) and the resize interpolation a CLIP was pre-trained with."""

    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"

    def __post_init__(self):
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise UsageError(f"image normalisation needs 3 means and 3 positive stds, got mean={list(mean)} std={list(std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"image interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range float images [..., 3, H, W] (0..255) -> CLIP-normalised."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(3, 1, 1) * 255
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(3, 1, 1) * 255
        return (images - mean) / std

    def to_tensor(self, image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        """RGB uint8 [H, W, 3] -> CLIP-normalised float [3, H, W]."""
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
        return self.normalize(tensor)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, data: dict | None) -> "ImageNorm":
        """From to_dict() or an open_clip preprocess config; missing entries (older files) are OpenAI's."""
        data = data or {}
        return cls(mean=tuple(data.get("mean", OPENAI_MEAN)), std=tuple(data.get("std", OPENAI_STD)),
                   interpolation=data.get("interpolation", "bicubic"))


OPENAI_NORM = ImageNorm()
