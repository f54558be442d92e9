"""Reading images and label maps in the prepared formats, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ovss_cli.errors import OvssError
from ovss_cli.textutil import first_line


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3]; a missing or unreadable file raises OvssError naming it."""
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OvssError(f"cannot read image {path} (missing or corrupt); re-extract it or remove it from the dataset")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: Path) -> np.ndarray:
    """Label map as int64 [H, W]: uint8 PNG or uint16 TIFF, values kept as stored."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            label = tifffile.imread(str(path))
        else:
            import cv2

            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if label is None:
                raise ValueError("unreadable")
    except Exception as err:
        raise OvssError(f"cannot read label map {path} (missing or corrupt): {first_line(err)}") from None
    if label.ndim != 2:
        raise OvssError(f"label map {path} has shape {label.shape}; expected a single-channel [H, W] map of class ids")
    return label.astype(np.int64)


def write_label_png(path: Path, label: np.ndarray) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), label.astype(np.uint8)):
        raise OvssError(f"cannot write {path}")
