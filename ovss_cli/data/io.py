"""Reading and writing images and label maps in the prepared formats, with errors that name the file,
and label maps as PNGs that image viewers show in colour (`write_label_png`).

Label PNGs with at most 255 classes (+ the ignore id 255) are palette ('P') PNGs with the PASCAL
VOC colours: a viewer shows colours, PIL (and `read_label`) reads back the ids. More classes
need uint16 grayscale PNGs (a PNG palette has at most 256 entries).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from ovss_cli.errors import OvssError
from ovss_cli.fileio import write_bytes
from ovss_cli.textutil import first_line

PALETTE_LIMIT = 256  # entries of a PNG palette


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 [H, W, 3], decoded in full: a missing, truncated or non-image file raises OvssError naming it.

    (cv2.imread fills the missing part of a truncated JPEG with grey and only warns.) The EXIF
    orientation is applied, as cv2.imread does."""

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


def read_indexed_png(path: Path) -> np.ndarray:
    """Class ids of a PNG: palette PNGs (VOC's SegmentationClass, ovss's label outputs) give their
    indices, not colours (cv2 would expand the palette); grayscale 8/16-bit PNGs give their values."""

    with Image.open(path) as image:
        if image.mode not in ("P", "L", "I", "I;16"):
            raise OvssError(f"{path} is a {image.mode} image; expected a single-channel or palette label PNG")
        return np.array(image)


def read_label(path: Path) -> np.ndarray:
    """Label map as int64 [H, W]: palette or grayscale PNG, or uint16 TIFF, values kept as stored."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            label = tifffile.imread(str(path))
        elif path.suffix.lower() == ".png":
            label = read_indexed_png(path)
        else:
            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if label is None:
                raise ValueError("unreadable")
    except OvssError:
        raise
    except Exception as err:
        raise OvssError(f"cannot read label map {path} (missing or corrupt): {first_line(err)}") from None
    if label.ndim != 2:
        raise OvssError(f"label map {path} has shape {label.shape}; expected a single-channel [H, W] map of class ids")
    return label.astype(np.int64)


def encode_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8/uint16 [H, W] map or an RGB [H, W, 3] image."""

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


def voc_palette(size: int = PALETTE_LIMIT) -> np.ndarray:
    """The PASCAL VOC colour map [size, 3] uint8: the bits of the id spread over R, G, B from the top bit down."""
    ids = np.arange(size)
    colours = np.zeros((size, 3), dtype=np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (ids >> (3 * shift + channel)) & 1
            colours[:, channel] |= bit << (7 - shift)
    return colours.astype(np.uint8)


def encode_label_png(label: np.ndarray, num_classes: int) -> bytes:
    """PNG bytes of a label map of ids (255 = ignore where there are at most 255 classes).

    <= 255 classes: a palette PNG holding the ids; more: uint16 grayscale (ids as stored).
    """

    label = np.asarray(label)
    buffer = io.BytesIO()
    if num_classes < PALETTE_LIMIT:
        image = Image.fromarray(label.astype(np.uint8), mode="P")
        image.putpalette(voc_palette().reshape(-1).tolist())
    else:
        image = Image.fromarray(label.astype(np.uint16))
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_label_png(path: Path, label: np.ndarray, num_classes: int) -> None:
    """`encode_label_png(label, num_classes)` written atomically to `path` (outputs: predictions, pseudo-labels)."""
    write_bytes(path, encode_label_png(label, num_classes), durable=False)
