"""InfoCLIP maths: matrix-based Rényi entropies, the two losses, the global-batch gather and LPAM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from ovss_cli.errors import UsageError
from ovss_cli.losses.alignment_transfer import alignment_transfer_losses
from ovss_cli.losses.matrix_entropy import (
    batched_gram,
    compression_loss,
    global_batch_gram,
    gram,
    joint_gram,
    matrix_entropy,
    mi_distillation_loss,
    mutual_information,
    renyi2_entropy,
    renyi_entropy,
)
from ovss_cli.methods.lpam import PixelTextAlignment


def random_gram(n: int, dim: int, seed: int, nonnegative: bool = False) -> torch.Tensor:
    items = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return gram(items.abs() if nonnegative else items).double()


def cluster_gram(labels: list[int]) -> torch.Tensor:
    """0/1 kernel: items with the same label are identical, others orthogonal."""
    return gram(F.one_hot(torch.tensor(labels)).float())


# ------------------------------------------------------------------------------------------ Gram matrices
def test_gram_flattens_normalises_and_has_a_unit_diagonal():
    items = torch.randn(4, 3, 5)
    flat = items.reshape(4, -1)
    expected = (flat @ flat.T) / (flat.norm(dim=1)[:, None] * flat.norm(dim=1)[None])
    torch.testing.assert_close(gram(items), expected)
    torch.testing.assert_close(gram(items).diagonal(), torch.ones(4))
    torch.testing.assert_close(batched_gram(items)[2], gram(items[2]))


def test_joint_gram_is_the_trace_normalised_hadamard_product():
    a, b = torch.tensor([[2.0, 1.0], [1.0, 2.0]]), torch.tensor([[1.0, 0.5], [0.5, 3.0]])
    torch.testing.assert_close(joint_gram(a, b), torch.tensor([[2.0, 0.5], [0.5, 6.0]]) / 8.0)


# ------------------------------------------------------------------------------------------ entropies
def test_identical_items_have_zero_entropy_and_orthogonal_items_log2_n():
    identical = gram(torch.ones(5, 7))
    orthogonal = gram(torch.eye(5))
    assert abs(float(renyi2_entropy(identical))) < 1e-6
    assert float(renyi2_entropy(orthogonal)) == pytest.approx(math.log2(5), abs=1e-6)
    for alpha in (0.5, 1.0, 3.0):
        assert float(renyi_entropy(orthogonal, alpha)) == pytest.approx(math.log2(5), abs=1e-5)
    for alpha in (1.0, 3.0):  # α < 1 amplifies fp32 round-off on the null eigenvalues
        assert abs(float(renyi_entropy(identical, alpha))) < 1e-5


def test_two_clusters_hand_computed():
    # items {0,1} identical, {2} orthogonal: A = K/3 has eigenvalues 2/3, 1/3 -> S_2 = -log2(4/9 + 1/9)
    assert float(renyi2_entropy(cluster_gram([0, 0, 1]))) == pytest.approx(-math.log2(5 / 9), abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_alpha_two_closed_form_equals_the_eigenvalue_formula(seed):
    matrix = random_gram(7, 4, seed)
    torch.testing.assert_close(renyi2_entropy(matrix, eps=0), renyi_entropy(matrix, 2.0, eps=0))
    torch.testing.assert_close(matrix_entropy(matrix, 3.0), renyi_entropy(matrix, 3.0))


def test_entropy_is_bounded_and_decreases_with_alpha():
    for seed in range(20):
        matrix = random_gram(6, 3, seed)
        values = [float(renyi_entropy(matrix, alpha, eps=0)) for alpha in (0.5, 1.0, 2.0, 3.0)]
        assert all(-1e-6 <= v <= math.log2(6) + 1e-6 for v in values)
        assert all(a >= b - 1e-6 for a, b in zip(values, values[1:]))


def test_entropy_runs_in_fp32_inside_bfloat16_autocast():
    items = torch.randn(6, 40)
    reference = renyi2_entropy(gram(items))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = renyi2_entropy(gram(items))
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, reference)


# ------------------------------------------------------------------------------------------ mutual information
def test_mutual_information_is_symmetric_and_bounded_by_each_entropy():
    # For unit-diagonal linear kernels |K_ij| <= 1, so ||K∘L||_F <= ||K||_F: the joint entropy is at least
    # each marginal one and I_2 <= min(S(X), S(Y)). (I_2 >= 0 is NOT guaranteed for these kernels.)
    for seed in range(30):
        gx, gy = random_gram(6, 3, seed), random_gram(6, 2, seed + 100, nonnegative=seed % 2 == 1)
        i_xy = mutual_information(gx, gy, eps=0)
        torch.testing.assert_close(i_xy, mutual_information(gy, gx, eps=0))
        assert float(i_xy) <= min(float(renyi2_entropy(gx, 0)), float(renyi2_entropy(gy, 0))) + 1e-9


def test_mutual_information_of_a_view_with_itself():
    # 0/1 kernels (clusters) are idempotent under the Hadamard product: I(X; X) = S(X) exactly
    clusters = cluster_gram([0, 0, 1, 2, 2, 2])
    torch.testing.assert_close(mutual_information(clusters, clusters), renyi2_entropy(clusters))
    # a general kernel: K∘K only sharpens, so I(X; X) <= S(X)
    general = random_gram(6, 3, seed=1)
    assert float(mutual_information(general, general, eps=0)) <= float(renyi2_entropy(general, 0)) + 1e-9


def test_a_constant_view_shares_no_information():
    other = random_gram(5, 3, seed=2)
    constant = torch.ones(5, 5, dtype=torch.float64)
    assert abs(float(mutual_information(other, constant, eps=0))) < 1e-9


def test_independent_clusterings_have_zero_mutual_information():
    # a 3x3 grid: rows and columns are statistically independent labelings
    rows, columns = cluster_gram([i // 3 for i in range(9)]), cluster_gram([i % 3 for i in range(9)])
    assert abs(float(mutual_information(rows, columns))) < 1e-5
    assert float(mutual_information(rows, rows)) == pytest.approx(math.log2(3), abs=1e-5)


def test_distillation_loss_is_minus_the_mutual_information_in_the_infosam_form():
    g_t, g_s = random_gram(5, 4, 3), random_gram(5, 4, 4)

    def log_frobenius(g):
        return torch.log2((g / torch.trace(g)).square().sum())

    expected = log_frobenius(g_t) + log_frobenius(g_s) - log_frobenius(g_t * g_s)
    torch.testing.assert_close(mi_distillation_loss(g_t, g_s, eps=0), expected)


# ------------------------------------------------------------------------------------------ compression
def test_compression_loss_matches_its_definition_and_bounds():
    for seed in range(10):
        g_v, g_l, g_r = random_gram(6, 5, seed), random_gram(6, 5, seed + 10), random_gram(6, 5, seed + 20)
        loss = compression_loss(g_v, g_l, g_r, eps=0)
        expected = -torch.log2((g_r / torch.trace(g_r)).square().sum()) + torch.log2(
            (joint_gram(g_v, g_l, g_r, eps=0)).square().sum())
        torch.testing.assert_close(loss, expected)
        assert -math.log2(6) - 1e-9 <= float(loss) <= 1e-9  # S(R) <= S(V, L, R) <= log2 n


def test_an_all_ones_text_gram_drops_out_of_the_compression_loss():
    g_v, g_r = random_gram(5, 3, 7), random_gram(5, 3, 8)
    ones = torch.ones(5, 5, dtype=torch.float64)
    torch.testing.assert_close(compression_loss(g_v, ones, g_r), compression_loss(g_v, None, g_r))
    torch.testing.assert_close(compression_loss(g_v, None, g_r),
                               renyi2_entropy(g_r) - renyi2_entropy(joint_gram(g_v, g_r)))


def test_compression_is_zero_when_the_relation_is_a_function_of_the_image():
    # R equal to V (0/1 kernel): S(V∘R) = S(R), nothing to compress
    clusters = cluster_gram([0, 1, 1, 2])
    assert abs(float(compression_loss(clusters, None, clusters))) < 1e-6


# ------------------------------------------------------------------------------------------ Gram axes
def test_alignment_losses_per_axis_match_explicit_grams():
    generator = torch.Generator().manual_seed(0)
    patches, text = torch.randn(3, 8, 6, generator=generator), torch.randn(4, 6, generator=generator)
    teacher, student = torch.randn(3, 4, 8, generator=generator), torch.randn(3, 4, 8, generator=generator)

    l_c, l_d = alignment_transfer_losses(patches, text, teacher, student, axis="batch")
    torch.testing.assert_close(l_c, compression_loss(gram(patches), None, gram(teacher)))
    torch.testing.assert_close(l_d, mi_distillation_loss(gram(teacher), gram(student)))
    # per-image text equal to the shared one gives an all-ones text Gram: same losses
    shared = alignment_transfer_losses(patches, text.expand(3, -1, -1), teacher, student, axis="batch")
    torch.testing.assert_close(shared[0], l_c)

    l_c, l_d = alignment_transfer_losses(patches, text, teacher, student, axis="patch")
    per_image = [compression_loss(gram(patches[b]), None, gram(teacher[b].T)) for b in range(3)]
    torch.testing.assert_close(l_c, torch.stack(per_image).mean())
    per_image = [mi_distillation_loss(gram(teacher[b].T), gram(student[b].T)) for b in range(3)]
    torch.testing.assert_close(l_d, torch.stack(per_image).mean())

    l_c, l_d = alignment_transfer_losses(patches, text, teacher, student, axis="class")
    per_image = [compression_loss(None, gram(text), gram(teacher[b])) for b in range(3)]
    torch.testing.assert_close(l_c, torch.stack(per_image).mean())


def test_batch_axis_refuses_a_global_batch_of_one():
    with pytest.raises(UsageError, match="global batch of at least 2"):
        global_batch_gram(torch.randn(1, 10))
    # the per-image axes work with one image
    l_c, _ = alignment_transfer_losses(torch.randn(1, 5, 4), torch.randn(3, 4), torch.randn(1, 3, 5),
                                       torch.randn(1, 3, 5), axis="patch")
    assert torch.isfinite(l_c)


# ------------------------------------------------------------------------------------------ global-batch gather
SIZES = (2, 3)  # uneven on purpose


def _global_problem():
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(sum(SIZES), 6, generator=generator)
    weight = torch.randn(6, 4, generator=generator)
    return data, weight


def _loss(grams_of_items):
    return renyi2_entropy(grams_of_items) + grams_of_items[0, 1:].sum()


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        data, weight = _global_problem()
        weight = weight.clone().requires_grad_(True)
        start = sum(SIZES[:rank])
        local = data[start : start + SIZES[rank]] @ weight  # items computed from a shared parameter
        matrix = global_batch_gram(local)
        _loss(matrix).backward()
        dist.all_reduce(weight.grad)  # what DDP does: average parameter gradients over ranks
        weight.grad /= world
        torch.save({"gram": matrix.detach(), "grad": weight.grad}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gather_with_grad_builds_the_global_batch_gram_and_its_exact_gradient(tmp_path):
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    data, weight = _global_problem()
    weight.requires_grad_(True)
    reference = gram(data @ weight)
    _loss(reference).backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["gram"], reference.detach())
        # after DDP-style averaging, each rank holds the single-process gradient of the global-batch loss
        torch.testing.assert_close(result["grad"], weight.grad)


# ------------------------------------------------------------------------------------------ LPAM
def test_lpam_parameter_count_is_2d2_plus_6d():
    assert sum(p.numel() for p in PixelTextAlignment(512).parameters()) == 527_360
    assert sum(p.numel() for p in PixelTextAlignment(768).parameters()) == 2 * 768**2 + 6 * 768


def test_lpam_matches_an_explicit_per_image_reference():
    torch.manual_seed(0)
    module = PixelTextAlignment(8)
    for parameter in module.parameters():  # non-trivial LayerNorm affine parameters too
        torch.nn.init.normal_(parameter)
    patches, text = torch.randn(2, 5, 8), torch.randn(3, 8)
    scores = module(patches, text)
    assert scores.shape == (2, 3, 5)
    for b in range(2):
        z_v = F.layer_norm(patches[b], (8,), module.norm_patches.weight, module.norm_patches.bias)
        z_l = F.layer_norm(text, (8,), module.norm_text.weight, module.norm_text.bias)
        q = z_l @ module.query.weight.T + module.query.bias
        k = z_v @ module.key.weight.T + module.key.bias
        torch.testing.assert_close(scores[b], q @ k.T / math.sqrt(8) + z_l @ z_v.T)
    torch.testing.assert_close(module(patches, text.expand(2, -1, -1)), scores)
