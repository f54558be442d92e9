"""Permutohedral lattice (Adams, Baek & Davis 2010): Gaussian filtering in a d-dimensional feature space in O(N d^2).

The same construction pydensecrf (Krähenbühl's densecrf) uses for its kernels: features
scaled by sqrt(2/3) (d + 1) / sqrt((i + 1)(i + 2)) are lifted onto the plane sum = 0 of
Z^(d+1); each point splats its value onto the d + 1 vertices of its enclosing simplex with
barycentric weights, the lattice is blurred with [1/2, 1, 1/2] along each of its d + 1
directions, and every point reads its vertices back (slice). The result approximates
sum_j exp(-|f_i - f_j|^2 / 2) v_j up to a constant factor, which symmetric normalisation
cancels. Splat, blur and slice are sparse matrices built once per feature set, so a filter call
is d + 3 sparse-dense products (CSR on CPU and GPU), vertices numbered by first use so that
neighbouring pixels touch neighbouring rows.
"""

from __future__ import annotations

import math
import warnings

import torch


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """[N, d] features -> [N, d + 1] points on the plane sum = 0, scaled so that the blur is a unit Gaussian."""
    d = features.shape[1]
    index = torch.arange(1, d + 1, dtype=torch.float64, device=features.device)
    scaled = features.double() * ((d + 1) * math.sqrt(2 / 3) / torch.sqrt(index * (index + 1)))
    lift = torch.zeros(d, d + 1, dtype=torch.float64, device=features.device)
    for k in range(d):  # feature k adds to coordinates 0..k and subtracts (k + 1) times itself from coordinate k + 1
        lift[k, :k + 1] = 1
        lift[k, k + 1] = -(k + 1)
    return scaled @ lift


def _simplices(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(vertex keys [N, d + 1, d] (last coordinate implied), barycentric weights [N, d + 1]) of each point's simplex."""
    n, dp1 = elevated.shape
    d = dp1 - 1
    down = torch.floor(elevated / dp1) * dp1
    up = down + dp1
    rem0 = torch.where(up - elevated < elevated - down, up, down)  # nearest remainder-0 lattice point
    offset = torch.div(rem0.sum(dim=1), dp1, rounding_mode="floor").long()
    diff = elevated - rem0
    later = torch.triu(torch.ones(dp1, dp1, dtype=torch.bool, device=elevated.device), 1)
    # rank_i = #{j > i: diff_j > diff_i} + #{j < i: diff_j >= diff_i} (ties broken by position, as densecrf)
    larger, not_smaller = diff[:, None, :] > diff[:, :, None], diff[:, None, :] >= diff[:, :, None]
    rank = (larger & later).sum(2) + (not_smaller & later.T).sum(2) + offset[:, None]
    rem0 = rem0 + dp1 * ((rank < 0).double() - (rank > d).double())  # back onto the plane
    rank = rank % dp1
    share = (elevated - rem0) / dp1
    barycentric = torch.zeros(n, dp1 + 1, dtype=torch.float64, device=elevated.device)
    barycentric.scatter_add_(1, d - rank, share).scatter_add_(1, d + 1 - rank, -share)
    barycentric[:, 0] += 1 + barycentric[:, dp1]
    remainder = torch.arange(dp1, device=elevated.device)[None, :, None]
    canonical = torch.where(rank[:, None, :] <= d - remainder, remainder, remainder - dp1)  # [N, d + 1, d + 1]
    keys = rem0.round().long()[:, None, :] + canonical
    return keys[..., :d], barycentric[:, :dp1].float()


class PermutohedralLattice:
    """Approximate Gaussian filter over fixed per-point features [N, d]: lattice(values [N, L]) -> [N, L]."""

    def __init__(self, features: torch.Tensor):
        n, d = features.shape
        device = features.device
        keys, weights = _simplices(_elevate(features))
        keys = keys.reshape(-1, d)
        # Integer keys (and their blur neighbours, at most d + 1 away) as one int64 code each.
        low = keys.min(dim=0).values - (d + 1)
        span = keys.max(dim=0).values + (d + 1) - low + 1
        if float(torch.log2(span.double()).sum()) > 62:
            raise ValueError("features span too many lattice cells to index; use larger kernel widths")
        radix = torch.cumprod(torch.cat([span.new_ones(1), span[:-1]]), 0)
        codes, inverse = torch.unique(((keys - low) * radix).sum(1), return_inverse=True)
        vertices = codes.numel()
        # Renumber vertices by first use, so that neighbouring pixels (and blur partners) share cache lines.
        first = torch.full((vertices,), n * (d + 1), dtype=torch.long, device=device)
        first.scatter_reduce_(0, inverse, torch.arange(inverse.numel(), device=device), reduce="amin")
        renumber = torch.empty_like(first)
        renumber[torch.argsort(first)] = torch.arange(vertices, device=device)
        self.num_vertices = vertices
        columns = renumber[inverse].view(n, d + 1)
        self.slice = csr_from_rows(columns, weights, vertices)
        # The splat is the slice's transpose: pixels regrouped by vertex (stable, so pixels stay sorted in a row).
        by_vertex = torch.argsort(columns.flatten(), stable=True)
        counts = torch.bincount(columns.flatten(), minlength=vertices)
        self.splat = csr(counts, by_vertex // (d + 1), weights.flatten()[by_vertex], (vertices, n))
        order = torch.argsort(renumber)  # old vertex id of each new id
        coordinates = (codes[:, None] // radix) % span + low  # in code order: the look-ups below stay cache-friendly
        self.blurs = []
        for direction in range(d + 1):
            step = torch.full((d,), -1, dtype=torch.long, device=device)
            if direction < d:
                step[direction] = d
            partners = [renumber]
            for sign in (1, -1):
                neighbour = ((coordinates + sign * step - low) * radix).sum(1)
                position = torch.searchsorted(codes, neighbour).clamp_max(vertices - 1)
                partners.append(torch.where(codes[position] == neighbour, renumber[position], -1))
            partners = torch.stack(partners, dim=1)[order]  # [M, 3] by new id: itself, its two neighbours (-1: none)
            values = torch.tensor([1.0, 0.5, 0.5], device=device).expand(vertices, 3)
            self.blurs.append(csr_from_rows(partners, values, vertices))

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        lattice = self.splat @ values
        for blur in self.blurs:
            lattice = blur @ lattice
        return self.slice @ lattice


def csr(counts: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    rows = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    with torch.sparse.check_sparse_tensor_invariants(False), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(rows, columns, values, size)


def csr_from_rows(columns: torch.Tensor, values: torch.Tensor, width: int, ascending: bool = False) -> torch.Tensor:
    """CSR [R, width] from at most k entries per row: columns [R, k] (-1: no entry) and values [R, k]
    (`ascending`: each row's present columns are already in ascending order)."""
    if not ascending:
        columns, order = torch.sort(columns, dim=1)  # CSR wants each row's columns ascending
        values = torch.gather(values, 1, order)
    present = columns >= 0
    return csr(present.sum(1), columns[present], values[present], (columns.shape[0], width))
