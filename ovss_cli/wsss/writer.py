"""Where pseudo-labels go, so that a run can be stopped and resumed at any time.

Each label is written atomically as a palette PNG (`data.io.write_label_png`) onto `<id>.png`: a file with the final
name is always complete, so a resumed run skips exactly the finished images. Temporaries left
by a killed run never match `<id>.png` and are removed at the next start (`fileio.remove_temporaries`).
"""

from __future__ import annotations

from pathlib import Path


def label_path(out_dir: Path, image_id: str) -> Path:
    return out_dir / f"{image_id}.png"


def is_finished(out_dir: Path, image_id: str) -> bool:
    return label_path(out_dir, image_id).is_file()
