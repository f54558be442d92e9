"""The runtime's setting choices, torch-free so that the recipe schema can name them."""

from __future__ import annotations

from typing import Literal, get_args

Precision = Literal["bf16-mixed", "fp16-mixed", "fp32"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
