"""What every converter receives."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Context:
    root: Path  # the data root (design.md: --data-root, $OVSS_DATASETS, $DETECTRON2_DATASETS, ./datasets)
    workers: int = 1
    progress: bool = True
