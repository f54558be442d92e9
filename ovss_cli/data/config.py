"""Recipe section `data:` — the training images and their augmentation.

No torch here: recipes validate at start-up, before any heavy import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from ovss_cli.data.benchmarks import PSEUDO_LABEL_SETS, TRAIN_SETS
from ovss_cli.errors import UsageError

# The choices of `data.benchmark`, derived from the training-set table so they never drift apart.
TrainSetName = Literal[tuple(TRAIN_SETS)]


@dataclass
class DataConfig:
    """Training images and their augmentation (CAT-Seg's: shortest edge, random crop, SSD colour jitter, flip)."""

    benchmark: TrainSetName = "coco-stuff"
    """Training set: 'coco-stuff' (prepared COCO-Stuff-171 train2017), 'toy' (built-in synthetic), or images with
    the pseudo-labels of data.pseudo_labels: 'voc-pseudo', 'coco-pseudo', 'toy-pseudo'."""
    pseudo_labels: str = ""
    """For the *-pseudo sets: the folder `ovss pseudolabel --out` wrote (<id>.png, 255 = ignore, pseudolabel.json)."""
    data_root: str = ""
    """Prepared datasets folder; '' = $OVSS_DATASETS, $DETECTRON2_DATASETS, then ./datasets."""
    crop_size: int = 384
    """Side of the square training crops (and of the evaluation windows)."""
    batch_size: int = 4
    """GLOBAL batch per optimizer step, summed over all processes and accumulation steps."""
    workers: int = 4
    """Data-loader worker processes per training process."""
    resize_shortest_edge: bool = True
    """Resize each image so its shorter side equals crop_size before cropping."""
    random_crop: bool = True
    """Random crop_size crop (false: centre crop)."""
    cat_max_ratio: float = 1.0
    """Retry a crop (up to 10 times) while one class covers more than this share of its labelled pixels; 1.0 = off."""
    color_jitter: bool = True
    """SSD-style photometric distortion (brightness, contrast, saturation, hue)."""
    flip: bool = True
    """Random horizontal flip."""
    limit: Optional[int] = None
    """Use only the first N training images (smoke tests)."""

    def validate(self) -> None:
        for name in ("crop_size", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"data.{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise UsageError(f"data.workers must be 0 or more, got {self.workers}")
        if not 0.0 < self.cat_max_ratio <= 1.0:
            raise UsageError(f"data.cat_max_ratio must lie in (0, 1], got {self.cat_max_ratio}")
        if self.pseudo_labels and self.benchmark not in PSEUDO_LABEL_SETS:
            raise UsageError(f"data.pseudo_labels is set but data.benchmark '{self.benchmark}' does not read "
                             f"pseudo-labels; use one of {', '.join(PSEUDO_LABEL_SETS)}")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"data.limit must be positive or null, got {self.limit}")
