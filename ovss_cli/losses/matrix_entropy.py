"""Matrix-based Rényi entropy on Gram matrices, and the two InfoCLIP objectives built on it.

For n items x_1..x_n (each flattened and L2-normalised) the linear kernel K = X Xᵀ has a unit
diagonal; A = K / tr(K) is a density matrix (PSD, trace 1) and

    S_α(A) = log2(Σ λ_i(A)^α) / (1 − α),        S_2(A) = −log2 tr(A²) = −log2 ||A||_F²,

so 0 ≤ S_α ≤ log2 n. Joint entropies use the trace-normalised Hadamard product of the Grams.
α = 2 needs no eigendecomposition (O(n²) instead of O(n³)) and is the default everywhere.

Everything runs in fp32 (fp64 inputs stay fp64) with autocast switched off: log2 of a squared
Frobenius norm loses most of its bits in bf16. `eps` guards the L2 and trace normalisations and
every log2.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ovss_cli.errors import UsageError

EPS = 1e-8


@contextmanager
def _fp32(device: torch.device) -> Iterator[None]:
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs to fp32; fp32 and fp64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def gram(items: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Linear-kernel Gram matrix [n, n] of `items` [n, ...]: each item flattened and L2-normalised (unit diagonal)."""
    with _fp32(items.device):
        flat = F.normalize(_wide(items.reshape(items.shape[0], -1)), dim=1, eps=eps)
        return flat @ flat.T


def batched_gram(items: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per-group Grams [B, n, n] of `items` [B, n, ...]: the n items of each group flattened and L2-normalised."""
    with _fp32(items.device):
        flat = F.normalize(_wide(items.reshape(*items.shape[:2], -1)), dim=-1, eps=eps)
        return flat @ flat.transpose(-1, -2)


def _trace(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.diagonal(dim1=-2, dim2=-1).sum(-1)


def trace_normalize(matrix: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """K / tr(K) for one [n, n] or a batch [..., n, n] of Gram matrices."""
    with _fp32(matrix.device):
        matrix = _wide(matrix)
        return matrix / (_trace(matrix)[..., None, None] + eps)


def joint_gram(*grams: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The joint Gram of several views of the same items: Hadamard product, trace-normalised."""
    if not grams:
        raise ValueError("joint_gram needs at least one Gram matrix")
    with _fp32(grams[0].device):
        product = _wide(grams[0])
        for other in grams[1:]:
            product = product * _wide(other)
        return trace_normalize(product, eps)


def renyi2_entropy(matrix: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """S_2 in bits of a Gram matrix [..., n, n] (trace-normalised here): −log2 ||K / tr K||_F²."""
    with _fp32(matrix.device):
        normalized = trace_normalize(matrix, eps)
        return -torch.log2(normalized.square().sum(dim=(-2, -1)) + eps)


def renyi_entropy(matrix: torch.Tensor, alpha: float, eps: float = EPS) -> torch.Tensor:
    """S_α in bits through the eigenvalues of K / tr K (any α > 0; α = 1 is the von Neumann limit).

    Ablation path: the eigendecomposition costs O(n³), its gradient is ill-conditioned when
    eigenvalues coincide, and for α < 1 the round-off on null eigenvalues (~1e-7 in fp32) adds
    up to ~1e-3 bits; use `renyi2_entropy` for training with α = 2.
    """
    if alpha <= 0:
        raise UsageError(f"the Rényi entropy order alpha must be positive, got {alpha}")
    with _fp32(matrix.device):
        normalized = trace_normalize(matrix, eps)
        symmetric = 0.5 * (normalized + normalized.transpose(-1, -2))
        eigenvalues = torch.linalg.eigvalsh(symmetric).clamp(min=0.0)
        if alpha == 1:
            return -torch.special.xlogy(eigenvalues, eigenvalues).sum(-1) / math.log(2.0)  # 0·log 0 = 0
        return torch.log2(eigenvalues.pow(alpha).sum(-1) + eps) / (1.0 - alpha)


def matrix_entropy(matrix: torch.Tensor, alpha: float = 2.0, eps: float = EPS) -> torch.Tensor:
    """S_α of a Gram matrix: the closed form for α = 2, eigenvalues otherwise."""
    if alpha == 2:
        return renyi2_entropy(matrix, eps)
    return renyi_entropy(matrix, alpha, eps)


def compression_loss(g_v: torch.Tensor | None, g_l: torch.Tensor | None, g_r: torch.Tensor,
                     alpha: float = 2.0, eps: float = EPS) -> torch.Tensor:
    """Information-bottleneck loss L_c = S(R) − S(V, L, R) = I(V, L; R) − S(V, L).

    S(V, L) has no trainable input (frozen teacher), so minimising L_c minimises I(V, L; R).
    A Gram given as None is a view that does not vary over the items (an all-ones Gram),
    e.g. the text when every image shares one vocabulary; it drops out of the joint entropy.
    """
    context = [g for g in (g_v, g_l) if g is not None]
    return matrix_entropy(g_r, alpha, eps) - matrix_entropy(joint_gram(*context, g_r, eps=eps), alpha, eps)


def mutual_information(g_x: torch.Tensor, g_y: torch.Tensor, alpha: float = 2.0, eps: float = EPS) -> torch.Tensor:
    """I_α(X; Y) = S(X) + S(Y) − S(X, Y) in bits.

    With unit-diagonal kernels |K_ij| ≤ 1, so the joint entropy is at least each marginal one and
    I ≤ min(S(X), S(Y)) (for α = 2 directly: ||K∘L||_F ≤ ||K||_F). I ≥ 0 is not guaranteed: for
    some linear kernels it is slightly negative, so L_d = −I is bounded below by −log2 n only.
    """
    return (matrix_entropy(g_x, alpha, eps) + matrix_entropy(g_y, alpha, eps)
            - matrix_entropy(joint_gram(g_x, g_y, eps=eps), alpha, eps))


def mi_distillation_loss(g_t: torch.Tensor, g_s: torch.Tensor, alpha: float = 2.0, eps: float = EPS) -> torch.Tensor:
    """L_d = S(T, S) − S(T) − S(S) = −I(R^T; R^S): minimising it maximises the teacher-student information."""
    return -mutual_information(g_t, g_s, alpha, eps)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the incoming gradient over ranks and keeps this rank's slice.

    Every rank computes the same global-batch loss, so after DDP averages the parameter
    gradients over ranks each parameter receives exactly the gradient of that loss, as on one
    device holding the whole batch.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        sizes = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.long, device=local.device))
        sizes = [int(s.item()) for s in sizes]
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded.contiguous())
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([piece[:size] for piece, size in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop]


def gather_with_grad(items: torch.Tensor) -> torch.Tensor:
    """Items [b, ...] of this rank -> items [B, ...] of every rank in rank order (identity without a process group).

    Gradients flow back to this rank's own items; ranks may hold different numbers of items.
    """

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    return _GatherWithGrad.apply(items)


def global_batch_gram(items: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Gram [B, B] over the GLOBAL batch: items flattened, L2-normalised, gathered from every rank."""
    with _fp32(items.device):
        flat = F.normalize(_wide(items.reshape(items.shape[0], -1)), dim=1, eps=eps)
        everyone = gather_with_grad(flat)
        if everyone.shape[0] < 2:
            raise UsageError("InfoCLIP's batch-axis Gram matrices need a global batch of at least 2 images per "
                             "micro-step (1 makes every entropy 0); raise data.batch_size or set "
                             "infoclip.gram_axis to patch or class")
        return everyone @ everyone.T
