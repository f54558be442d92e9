"""Recipe section `loss:` — the segmentation loss (no torch: recipes validate at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class LossConfig:
    """The segmentation loss of the CAT-Seg family (per-class sigmoid BCE)."""

    ignore: Literal["mask", "zero_target"] = "mask"
    """mask: pixels labelled ignore (255) leave the mean (ovss default); zero_target: they count with an
    all-zero target, as the official CAT-Seg / H-CLIP code does."""
