"""The built-in synthetic benchmark `toy`: deterministic scenes of coloured, textured regions.

Each image is a Voronoi partition of a few random seeds; every region takes one of five
classes with its own colour and texture, region borders are marked ignore (255). It needs
no download, so every command (quickstart, tests) can run on it.
"""

from __future__ import annotations

import numpy as np

TOY_CLASSES = ("sky", "grass", "sand", "water", "brick")
_COLOURS = np.array([[135, 190, 235], [60, 150, 50], [220, 195, 140], [20, 50, 120], [170, 60, 45]], dtype=np.float32)
TOY_IGNORE = 255
TOY_SPLITS = {"train": (0, 64), "val": (100_000, 24)}  # (seed offset, number of images)


def toy_sample(index: int, split: str = "val", size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Image (uint8 [size, size, 3]) and label (int64 [size, size]) number `index` of a split."""
    offset, _ = TOY_SPLITS[split]
    rng = np.random.default_rng(offset + index)
    num_regions = int(rng.integers(3, 6))
    seeds = rng.uniform(0, size, size=(num_regions, 2))
    classes = rng.integers(0, len(TOY_CLASSES), size=num_regions)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dist = np.sqrt((yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2)
    order = np.sort(dist, axis=0)
    region = dist.argmin(axis=0)
    label = classes[region].astype(np.int64)
    label[(order[1] - order[0]) < 1.0] = TOY_IGNORE  # borders: ambiguous, ignored
    colour = _COLOURS[classes[region]]
    # Per-class texture: stripes of class-specific frequency, plus pixel noise.
    frequency = (classes[region] + 1).astype(np.float32) * 0.35
    texture = 18.0 * np.sin(frequency * (xx + yy))[..., None]
    noise = rng.normal(0, 8, size=(size, size, 3))
    image = np.clip(colour + texture + noise, 0, 255).astype(np.uint8)
    return image, label


def toy_length(split: str) -> int:
    return TOY_SPLITS[split][1]
