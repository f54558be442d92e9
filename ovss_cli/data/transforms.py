"""Image tensors in the form CLIP expects."""

from __future__ import annotations

import numpy as np
import torch

# OpenAI CLIP's pixel statistics (open_clip.constants.OPENAI_DATASET_MEAN / _STD), in 0..1 units.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8-range float images [..., 3, H, W] (0..255) -> CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(3, 1, 1) * 255
    std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(3, 1, 1) * 255
    return (images - mean) / std


def to_clip_tensor(image: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> CLIP-normalised float [3, H, W]."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device).permute(2, 0, 1).float()
    return normalize(tensor)
