"""Pseudo-label PNGs written atomically, so that a run can be stopped and resumed at any time.

Each label is encoded in memory, written to a hidden temporary file in the output folder and
renamed onto `<id>.png`: a file with the final name is always complete, so a resumed run skips
exactly the finished images. Temporaries left by a killed run never match `<id>.png` and are
removed at the next start.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ovss_cli.errors import OvssError

TEMP_MARK = ".partial-"


def label_path(out_dir: Path, image_id: str) -> Path:
    return out_dir / f"{image_id}.png"


def is_finished(out_dir: Path, image_id: str) -> bool:
    return label_path(out_dir, image_id).is_file()


def write_label_atomic(out_dir: Path, image_id: str, label: np.ndarray) -> Path:
    """Palette-free uint8 PNG `<out_dir>/<image_id>.png`, via a temporary file and a rename."""
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(label, dtype=np.uint8))
    if not ok:
        raise OvssError(f"cannot encode the pseudo-label of {image_id} as PNG")
    target = label_path(out_dir, image_id)
    temporary = out_dir / f".{image_id}{TEMP_MARK}{os.getpid()}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(encoded.tobytes())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporaries of earlier, interrupted runs (call while no writer runs); returns how many."""
    stale = [p for p in out_dir.glob(f".*{TEMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)
