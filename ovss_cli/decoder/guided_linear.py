"""A Linear layer on the concatenation [x, guidance] where one guidance serves many x (every class).

CAT-Seg concatenates a guidance feature to the per-class stream before the attention's q/k
projections: the appearance feature of a pixel (shared by all classes) or the text feature of a
class (shared by all pixels). A linear map of a concatenation is the sum of linear maps of its
parts, so the guidance part is computed once and broadcast instead of concatenating copies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def guided_linear(layer: nn.Linear, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
    """layer([x, guidance]) for x [..., D] and guidance [..., G] broadcastable against x's leading dims;
    `layer` holds the weights of the concatenated input ([D + G] columns, x's first)."""
    dim = x.shape[-1]
    return F.linear(x, layer.weight[:, :dim]) + F.linear(guidance, layer.weight[:, dim:], layer.bias)
