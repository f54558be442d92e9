"""Reading and writing images and label maps in the prepared formats, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ovss_cli.errors import OvssError
from ovss_cli.fileio import write_bytes
from ovss_cli.textutil import first_line


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3], decoded in full: a missing, truncated or non-image file raises OvssError naming it.

    (cv2.imread fills the missing part of a truncated JPEG with grey and only warns.) The EXIF
    orientation is applied, as cv2.imread does."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated file fails here
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))  # writable, as cv2 gave
    except FileNotFoundError:
        raise OvssError(f"image {path} is missing; re-extract it or remove it from the dataset") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise OvssError(f"cannot read image {path} ({first_line(err)}); it is truncated or not an image, "
                        "re-extract it or remove it from the dataset") from None


def read_split_ids(path: Path) -> list[str]:
    """Image ids of a split list (the first word of each line). An id is a file name without folders:
    one holding a path separator or '..' would read, or write outputs, outside the dataset's folders."""
    ids = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if "/" in words[0] or "\\" in words[0] or words[0] in (".", ".."):
            raise OvssError(f"split list {path} line {number} holds the id {words[0]!r}; ids are file names "
                            "without folders - restore the official list (re-run `ovss prepare`)")
        ids.append(words[0])
    return ids


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


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 [H, W] map or an RGB [H, W, 3] image."""
    import cv2

    array = np.ascontiguousarray(array)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", array)
    if not ok:
        raise OvssError(f"cannot encode a {array.dtype} array of shape {array.shape} as PNG")
    return encoded.tobytes()


def write_png(path: Path, array: np.ndarray) -> None:
    """`encode_png(array)` written atomically to `path`."""
    write_bytes(path, encode_png(array), durable=False)


def write_label(path: Path, label: np.ndarray) -> None:
    """The formats read_label reads: uint8 PNG, or uint16 TIFF for a .tif/.tiff path; written atomically."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, np.ascontiguousarray(label, dtype=np.uint16))
        write_bytes(path, buffer.getvalue(), durable=False)
    else:
        write_png(path, np.asarray(label).astype(np.uint8, copy=False))
