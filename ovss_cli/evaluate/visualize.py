"""Colour overlays and legends for predicted label maps."""

from __future__ import annotations

import colorsys

import numpy as np


def palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic RGB colours [num_classes, 3] (golden-ratio hue steps)."""
    colours = []
    for index in range(num_classes):
        hue = (index * 0.618033988749895) % 1.0
        saturation = 0.65 + 0.35 * ((index // 7) % 2)
        value = 0.95 - 0.25 * ((index // 3) % 2)
        colours.append([int(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return np.array(colours, dtype=np.uint8)


def overlay(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the colour-coded label map over the RGB image."""
    coloured = colours[label]
    return (alpha * coloured + (1 - alpha) * image).round().clip(0, 255).astype(np.uint8)


def legend(names: list[str], indices: list[int], colours: np.ndarray, row_height: int = 22) -> np.ndarray:
    """An RGB image listing the given classes with their colour swatches."""
    import cv2

    width = 16 + 28 + 9 * max([len(names[i]) for i in indices] + [6])
    canvas = np.full((row_height * max(len(indices), 1) + 8, width, 3), 255, dtype=np.uint8)
    for row, index in enumerate(indices):
        top = 4 + row * row_height
        canvas[top + 3 : top + row_height - 3, 8:30] = colours[index]
        cv2.putText(canvas, names[index], (38, top + row_height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas
