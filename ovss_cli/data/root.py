"""Where prepared datasets live."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_data_root(explicit: Path | str | None = None) -> Path:
    """`--data-root`, else $OVSS_DATASETS, else $DETECTRON2_DATASETS, else ./datasets."""
    if explicit:
        return Path(explicit).expanduser()
    for variable in ("OVSS_DATASETS", "DETECTRON2_DATASETS"):
        value = os.environ.get(variable)
        if value:
            return Path(value).expanduser()
    return Path("datasets")
