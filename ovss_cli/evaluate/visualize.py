"""Pictures of label maps: label PNGs beside colour overlays that carry their legend.

One colour per class id everywhere: the PASCAL VOC palette for ids 0..255 (the colours of the
palette label PNGs, `ovss_cli.data.io.encode_label_png`), golden-ratio hues beyond.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from ovss_cli.data.io import PALETTE_LIMIT, voc_palette, write_label_png, write_png


def palette(num_classes: int) -> np.ndarray:
    """Stable colours [num_classes, 3] uint8: VOC's for ids < 256, then golden-ratio hue steps."""
    colours = [voc_palette(min(num_classes, PALETTE_LIMIT))]
    for index in range(PALETTE_LIMIT, num_classes):
        hue = (index * 0.618033988749895) % 1.0
        value = 0.95 - 0.3 * ((index // 3) % 2)
        colours.append(np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.8, value)]], dtype=np.uint8))
    return np.concatenate(colours)[:num_classes]


def overlay(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the colour-coded label map over the RGB image (ids outside `colours`, e.g. ignore, stay unblended)."""
    known = label < len(colours)
    coloured = colours[np.where(known, label, 0)]
    blended = (alpha * coloured + (1 - alpha) * image).round().clip(0, 255).astype(np.uint8)
    return np.where(known[..., None], blended, image)


def legend(names: list[str], indices: list[int], colours: np.ndarray, row_height: int = 22) -> np.ndarray:
    """An RGB image listing the given classes with their colour swatches."""
    width = 16 + 28 + 9 * max([len(names[i]) for i in indices] + [6])
    canvas = np.full((row_height * max(len(indices), 1) + 8, width, 3), 255, dtype=np.uint8)
    for row, index in enumerate(indices):
        top = 4 + row * row_height
        canvas[top + 3 : top + row_height - 3, 8:30] = colours[index]
        cv2.putText(canvas, names[index], (38, top + row_height - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def overlay_with_legend(image: np.ndarray, label: np.ndarray, names: list[str], colours: np.ndarray) -> np.ndarray:
    """The overlay with a legend of the classes present: in the top-left corner when it fits, else beside it."""
    present = [int(i) for i in np.unique(label) if i < len(names)]
    picture = overlay(image, label, colours)
    key = legend(names, present, colours)
    kh, kw = key.shape[:2]
    height, width = picture.shape[:2]
    if kh <= height and kw <= width:
        picture[:kh, :kw] = (0.8 * key + 0.2 * picture[:kh, :kw]).round().astype(np.uint8)
        return picture
    canvas = np.full((max(height, kh), width + kw, 3), 255, dtype=np.uint8)
    canvas[:height, :width] = picture
    canvas[:kh, width:] = key
    return canvas


def write_label_and_overlay(stem_path, image: np.ndarray, label: np.ndarray, names: list[str],
                            colours: np.ndarray | None = None) -> None:
    """`<stem>_label.png` (palette/uint16 ids) and `<stem>_overlay.png` (overlay + legend) beside each other."""
    stem_path = Path(stem_path)
    colours = palette(len(names)) if colours is None else colours
    write_label_png(stem_path.with_name(f"{stem_path.name}_label.png"), label, len(names))
    write_png(stem_path.with_name(f"{stem_path.name}_overlay.png"), overlay_with_legend(image, label, names, colours))
