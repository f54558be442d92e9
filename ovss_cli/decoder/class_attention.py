"""Class aggregation: linear attention across the classes at every (pooled) pixel.

Padding: with fewer classes than `pad_len`, CAT-Seg appends `pad_len - T` copies of one
learnable token (and one learnable text-guidance token) to the class sequence, in training and
at test. The padded positions' own outputs are thrown away, so they matter only as keys/values,
and all copies are identical and the same at every pixel: their contribution to the linear
attention sums is `n_pad` times that of one token. Adding it in closed form gives the official
result without materialising the padded sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ovss_cli.decoder.guided_linear import guided_linear

EPS = 1e-6  # denominator guard of the official linear attention


class _EluPlusOne(torch.autograd.Function):
    """elu(x) + 1 as exp(min(x, 0)) + max(x, 0): the same values, from the vectorised exp (CPU's expm1,
    behind F.elu, runs one element at a time); its derivative, 1 above zero and e^x below, is min(y, 1)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x.clamp(max=0)).add_(x.clamp(min=0))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * y.clamp(max=1)


def elu_feature_map(x: torch.Tensor) -> torch.Tensor:
    """The linear attention's feature map elu(x) + 1 (positive, so the normaliser never vanishes)."""
    if torch.jit.is_tracing():  # a traced export keeps the standard operators
        return F.elu(x) + 1
    return _EluPlusOne.apply(x)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    extra_k: torch.Tensor | None = None,
    extra_v: torch.Tensor | None = None,
    extra_count: int = 0,
) -> torch.Tensor:
    """Linear attention ("Transformers are RNNs", elu+1 features) over dim 1.

    q, k, v: [N, S, heads, D]. `extra_count` further keys/values, all equal to extra_k / extra_v
    ([heads, D]), join the sum. Computed in at least fp32 (the normaliser is a sum over all
    classes). Returns [N, S, heads, D] in that precision.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):
        phi_q = elu_feature_map(at_least_fp32(q))
        phi_k = elu_feature_map(at_least_fp32(k))
        v = at_least_fp32(v)
        kv = torch.einsum("nshd,nshe->nhde", phi_k, v)
        k_sum = phi_k.sum(dim=1)
        if extra_count:
            phi_extra = elu_feature_map(at_least_fp32(extra_k))
            kv = kv + extra_count * torch.einsum("hd,he->hde", phi_extra, at_least_fp32(extra_v))
            k_sum = k_sum + extra_count * phi_extra
        numerator = torch.einsum("nshd,nhde->nshe", phi_q, kv)
        denominator = torch.einsum("nshd,nhd->nsh", phi_q, k_sum) + EPS
        return numerator / denominator[..., None]


class ClassAggregation(nn.Module):
    """One class-aggregation layer: pool the grid, attend across classes, MLP, upsample, add."""

    def __init__(
        self,
        dim: int,
        guidance_dim: int,
        heads: int,
        pad_len: int,
        pool_size: int,
        pool_in_training: bool,
        pool_at_test: bool,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.heads = heads
        self.pad_len = pad_len
        self.pool_size = pool_size
        self.pool_in_training = pool_in_training
        self.pool_at_test = pool_at_test
        self.norm1 = nn.LayerNorm(dim)
        # q/k act on [x, text guidance]; no output projection (as in CAT-Seg)
        self.q = nn.Linear(dim + guidance_dim, dim)
        self.k = nn.Linear(dim + guidance_dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Linear(4 * dim, dim))
        if pad_len > 0:
            self.padding_token = nn.Parameter(torch.zeros(dim))
            self.padding_guidance = nn.Parameter(torch.zeros(guidance_dim))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, H, W, C] -> [B, T, H//p, W//p, C], AvgPool2d(p) as the official layer (remainder dropped);
        run on a channels-last view of the maps, whose pooling kernels read memory in order."""
        b, t, h, w, c = x.shape
        grid = F.avg_pool2d(x.reshape(b * t, h, w, c).permute(0, 3, 1, 2), self.pool_size)
        return grid.permute(0, 2, 3, 1).reshape(b, t, *grid.shape[-2:], c)

    def forward(self, x: torch.Tensor, text_guidance: torch.Tensor) -> torch.Tensor:
        """x: [B, T, H, W, C]; text_guidance: [B, T, G] (projected text embedding per class)."""
        b, t, h, w, c = x.shape
        pool = self.pool_size > 1 and (self.pool_in_training if self.training else self.pool_at_test)
        pooled = self._pool(x) if pool else x
        hp, wp = pooled.shape[2:4]

        normed = self.norm1(pooled)
        guidance = text_guidance[:, :, None, None, :]
        q = guided_linear(self.q, normed, guidance)
        k = guided_linear(self.k, normed, guidance)
        v = self.v(normed)
        # classes become the sequence: [B, T, h, w, C] -> [B*h*w, T, heads, D]
        q, k, v = (z.permute(0, 2, 3, 1, 4).reshape(b * hp * wp, t, self.heads, -1) for z in (q, k, v))

        n_pad = self.pad_len - t if self.pad_len > t else 0
        pad_k = pad_v = None
        if n_pad:
            pad_normed = self.norm1(self.padding_token)
            pad_k = guided_linear(self.k, pad_normed, self.padding_guidance).view(self.heads, -1)
            pad_v = self.v(pad_normed).view(self.heads, -1)
        attended = linear_attention(q, k, v, pad_k, pad_v, n_pad).to(pooled.dtype)
        attended = attended.reshape(b, hp, wp, t, c).permute(0, 3, 1, 2, 4)

        pooled = pooled + attended
        pooled = pooled + self.mlp(self.norm2(pooled))
        if pool:
            grid = pooled.reshape(b * t, hp, wp, c).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
            pooled = grid.permute(0, 2, 3, 1).reshape(b, t, h, w, c)
        # The residual adds the updated (pooled) stream to the layer input, so without pooling
        # the input appears twice; this is the official update and trained weights rely on it.
        return x + pooled
