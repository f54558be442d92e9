"""CLIP-ES and VPL maths: softmax-GradCAM, attention affinity, box masks, dense CRF, prototype learning."""

import numpy as np
import pytest
import torch

from ovss_cli.errors import UsageError
from ovss_cli.wsss.affinity import attention_affinity, box_mask, refine_cam, sinkhorn_normalise
from ovss_cli.wsss.crf import BilateralFilter, CrfParams, LatticeBilateralFilter, dense_crf, gaussian_message
from ovss_cli.wsss.gradcam import gradcam_map, gradcam_weights, minmax, softmax_gradcam, softmax_scores
from ovss_cli.wsss.lattice import PermutohedralLattice
from ovss_cli.wsss.vpl import (
    VplConfig,
    feature_span,
    fix_gauge,
    image_log_probabilities,
    learn_prototypes,
    prototype_objective,
    region_embeddings,
    text_probabilities,
)


def attention_like(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, n, generator=generator) * 2, dim=-1)


# ------------------------------------------------------------------ affinity
def test_sinkhorn_rows_exact_and_columns_converge():
    matrix = attention_like(30, 0)
    one_round, three = sinkhorn_normalise(matrix, 1), sinkhorn_normalise(matrix, 3)
    assert torch.allclose(three.sum(dim=1), torch.ones(30), atol=1e-5)  # rows are normalised last
    column_error = lambda m: float((m.sum(dim=0) - 1).abs().max())
    assert column_error(three) < 0.15
    assert column_error(three) < column_error(one_round) < column_error(matrix)
    assert column_error(sinkhorn_normalise(matrix, 30)) < 1e-4


def test_affinity_is_symmetric_and_uses_only_the_last_layers_without_cls():
    maps = [attention_like(17, seed) for seed in range(5)]
    affinity = attention_affinity(maps, num_layers=3)
    assert affinity.shape == (16, 16) and affinity.dtype == torch.float64  # float64 against amplified rounding
    affinity = affinity.float()
    assert torch.allclose(affinity, affinity.T, atol=1e-6)
    assert bool((affinity >= 0).all())
    # The square of a (near) doubly-stochastic symmetric matrix: rows sum to about 1.
    assert torch.allclose(affinity.sum(dim=1), torch.ones(16), atol=0.05)
    changed = [m.clone() for m in maps]
    changed[0] = attention_like(17, 99)  # outside the last three layers
    for m in changed[2:]:
        m[0, :] = 0.5  # the class token's row and column are dropped
        m[:, 0] = 0.5
    assert torch.allclose(attention_affinity(changed, num_layers=3).float(), affinity, atol=1e-6)
    batched = attention_affinity([torch.stack([m, c]) for m, c in zip(maps, changed)], num_layers=3)
    assert batched.shape == (2, 16, 16) and torch.allclose(batched[0].float(), affinity, atol=1e-6)
    # A reference: mean, crop, 3 x (columns, rows), symmetrise, square.
    reference = torch.stack(maps[-3:]).mean(0)[1:, 1:]
    for _ in range(3):
        reference = reference / reference.sum(0, keepdim=True)
        reference = reference / reference.sum(1, keepdim=True)
    reference = (reference + reference.T) / 2
    assert torch.allclose(affinity, reference @ reference, atol=1e-6)


def test_box_mask_covers_the_boxes_of_every_contour():
    cam = np.zeros((8, 10), dtype=np.float32)
    cam[1, 1:4] = 1.0  # an L-shaped blob: box rows 1..3, cols 1..3
    cam[2:4, 1] = 0.9
    cam[5, 6] = 0.6  # a single spot
    cam[6, 2] = 0.3  # below 0.4 x max: not a region
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:4, 1:4] = True
    expected[5, 6] = True
    assert np.array_equal(box_mask(cam, 0.4), expected)
    # A higher threshold keeps only the strongest part (row 1 and the 0.9 column).
    strong = box_mask(cam, 0.95)
    assert strong[1, 1:4].all() and not strong[5, 6] and not strong[3, 1]
    assert not box_mask(np.zeros((4, 4), np.float32), 0.4).any()


def test_box_mask_stops_one_patch_short_of_the_far_border_like_clip_es():
    cam = np.zeros((5, 6), dtype=np.float32)
    cam[2:, 3:] = 1.0  # touches the bottom and right borders
    mask = box_mask(cam, 0.4)
    expected = np.zeros((5, 6), dtype=bool)
    expected[2:4, 3:5] = True  # boundingRect's far corner clipped to the last index, then sliced exclusively
    assert np.array_equal(mask, expected)


def test_refine_cam_propagates_only_from_masked_sources():
    affinity = torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])
    cam = torch.tensor([1.0, 0.5, 0.0])
    mask = torch.tensor([True, False, True])
    # (A * m) @ cam = [0.5, 0.25, 0] -> min-max -> [1, 0.5, 0]
    assert torch.allclose(refine_cam(affinity, cam, mask), torch.tensor([1.0, 0.5, 0.0]), atol=1e-6)
    assert torch.equal(refine_cam(affinity, cam, torch.zeros(3, dtype=torch.bool)), torch.zeros(3))


# ------------------------------------------------------------------ softmax-GradCAM
def test_gradcam_weights_match_hand_computed_gradients():
    torch.manual_seed(0)
    activation = torch.randn(1, 1 + 4, 3).requires_grad_(True)  # class token + 4 patches, 3 channels
    weights_matrix = torch.randn(4, 3)
    patches = activation[0, 1:]
    # score 0: sum(A * M) + 5 * sum(cls): gradient on the patches is M (the class token is dropped)
    # score 1: sum over patches of A[:, 0]^2: gradient is 2 A[:, 0] in channel 0, zero elsewhere
    scores = torch.stack([(patches * weights_matrix).sum() + 5 * activation[0, 0].sum(), (patches[:, 0] ** 2).sum()])
    cams = softmax_gradcam(activation, scores, num_targets=2)
    a = activation[0, 1:].detach()
    w0 = weights_matrix.mean(dim=0)
    w1 = torch.tensor([2 * float(a[:, 0].mean()), 0.0, 0.0])
    for cam, w in zip(cams, (w0, w1)):
        expected = torch.relu(a @ w)
        for _ in range(2):  # CLIP-ES scales twice
            expected = (expected - expected.min()) / (1e-7 + (expected - expected.min()).max())
        assert torch.allclose(cam, expected, atol=1e-6)
    assert torch.allclose(gradcam_weights(weights_matrix.repeat(2, 1)), w0)


@pytest.mark.parametrize("peak", [1e-4, 1e-5, 1e-6])
def test_gradcam_is_scaled_twice_like_official_clip_es(peak):
    # One channel, unit gradient: the raw map is ReLU(A[:, 0]) = [0, peak/4, peak/2, peak] and a negative entry.
    raw = np.array([0.0, peak / 4, peak / 2, peak, -peak], dtype=np.float32)
    activation = torch.from_numpy(raw)[:, None]
    cam = gradcam_map(activation, torch.ones(5, 1)).numpy()
    # By hand, in float32 as pytorch_grad_cam's scale_cam_image: (x - min) / (1e-7 + max), applied twice.
    once = np.maximum(raw, 0) / np.float32(1e-7 + peak)
    twice = once / np.float32(1e-7 + once.max())
    assert np.allclose(cam, twice, rtol=0, atol=1e-7)
    assert once.max() < 1 - 0.9e-3  # a single pass would peak visibly below 1 (0.91 for 1e-6)
    assert cam.max() == pytest.approx(1.0, abs=2e-7) and abs(cam.max() - 1) < 1 - once.max()
    assert np.allclose(cam[:4], [0, 0.25, 0.5, 1], atol=2e-7) and cam[4] == 0


def test_softmax_scores_and_minmax():
    torch.manual_seed(1)
    text = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    image = torch.randn(8) * 3
    scores = softmax_scores(image, text, 100.0)
    expected = torch.softmax(100 * torch.nn.functional.cosine_similarity(text, image[None], dim=-1), dim=0)
    assert torch.allclose(scores, expected, atol=1e-6)
    scaled = minmax(torch.tensor([2.0, 4.0, 3.0]))
    assert torch.allclose(scaled, torch.tensor([0.0, 1.0, 0.5]), atol=1e-6)


# ------------------------------------------------------------------ dense CRF
def brute_force_message(features: np.ndarray, q: np.ndarray) -> np.ndarray:
    """D^-1/2 K D^-1/2 q with the full Gaussian kernel on `features` [N, F]; q [L, N]."""
    kernel = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
    norm = 1 / np.sqrt(kernel.sum(1))
    return (norm[:, None] * kernel * norm[None]) @ q.T


def test_bilateral_message_with_one_pixel_groups_is_the_dense_sum():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 10, 3)).astype(np.uint8)
    image[:, :5] = (40, 200, 90)
    q = torch.rand(3, 12, 10, dtype=torch.float64).float()
    ys, xs = np.mgrid[:12, :10]
    features = np.concatenate([np.stack([ys, xs], -1) / 4.0, image / 20.0], -1).reshape(-1, 5)
    expected = brute_force_message(features, q.reshape(3, -1).double().numpy()).T.reshape(3, 12, 10)
    filtered = BilateralFilter(torch.from_numpy(image), sxy=4.0, srgb=20.0, cell=1)
    assert np.allclose(filtered(q.permute(1, 2, 0)).permute(2, 0, 1).numpy(), expected, atol=1e-4)


def test_gaussian_message_is_the_truncated_dense_sum():
    q = torch.rand(2, 9, 11)
    ys, xs = np.mgrid[:9, :11]
    points = np.stack([ys, xs], -1).reshape(-1, 2)
    diff = np.abs(points[:, None] - points[None])
    kernel = np.exp(-0.5 * (diff**2).sum(-1) / 1.5**2) * (diff.max(-1) <= 5)  # radius ceil(3 * 1.5) per axis
    norm = 1 / np.sqrt(kernel.sum(1))
    expected = ((norm[:, None] * kernel * norm[None]) @ q.reshape(2, -1).double().numpy().T).T.reshape(2, 9, 11)
    assert np.allclose(gaussian_message(q, 1.5).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("noise", [0.5, 2.0, 5.0])
def test_grouped_bilateral_message_is_close_to_the_dense_one(noise):
    rng = np.random.default_rng(1)
    image = np.zeros((40, 48, 3), dtype=np.uint8)
    image[:, :20] = (200, 60, 60)
    image[:, 20:] = (60, 60, 200)
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 3, 5, 6), size=(40, 48), mode="bilinear")[0]
    q = torch.softmax(3 * smooth, dim=0)
    q = q.permute(1, 2, 0)
    exact = BilateralFilter(torch.from_numpy(image), 30.0, 3.0, cell=1)(q)
    grouped = BilateralFilter(torch.from_numpy(image), 30.0, 3.0, cell=4)
    assert grouped.num_groups < 40 * 48
    assert float((grouped(q) - exact).abs().max()) < 0.01 * float(exact.abs().mean())


def test_crf_results_agree_with_the_exact_dense_crf():
    image, probs, _ = two_region_scene(3)
    labels = [dense_crf(image, probs, CrfParams(bilateral_sxy=20.0, bilateral_method="grouped", bilateral_cell=c)
                        ).argmax(0) for c in (1, 4)]
    assert float((labels[0] == labels[1]).float().mean()) > 0.99


def test_lattice_filter_approximates_the_dense_gaussian_sum():
    rng = np.random.default_rng(4)
    image = np.where(rng.random((30, 40, 1)) < 0.5, (200, 40, 40), (40, 60, 210)) + rng.normal(0, 8, (30, 40, 3))
    ys, xs = np.mgrid[:30, :40]
    features = np.concatenate([np.stack([xs, ys], -1) / 5.0, image / 20.0], -1).reshape(-1, 5)
    values = rng.random((1200, 3))
    kernel = np.exp(-0.5 * ((features[:, None] - features[None]) ** 2).sum(-1))
    exact = kernel @ values / kernel.sum(1, keepdims=True)  # kernel-weighted means, in [0, 1]
    lattice = PermutohedralLattice(torch.from_numpy(features).float())
    approx = lattice(torch.from_numpy(values).float()) / lattice(torch.ones(1200, 1))
    error = (approx.double() - torch.from_numpy(exact)).abs()
    assert float(error.max()) < 0.03 and float(error.mean()) < 0.005
    # A constant is reproduced exactly (splat and slice weights sum to 1); values matter, not just the degree.
    assert torch.allclose(lattice(torch.full((1200, 1), 2.0)) / lattice(torch.ones(1200, 1)), torch.full((1200, 1), 2.0))
    assert float((torch.from_numpy(exact - values.mean(0))).abs().max()) > 0.1  # a local mean, not a global one


def textured_scene(seed: int, size=(48, 64)):
    """Piecewise-constant colours in 12 x 16 px cells, mild noise, and a smooth CAM-like unary over 4 labels."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 255, (4, 4, 3))
    image = np.kron(cells, np.ones((size[0] // 4, size[1] // 4, 1)))
    image = np.clip(image + rng.normal(0, 1.5, image.shape), 0, 255).astype(np.uint8)
    cams = torch.from_numpy(rng.random((3, size[0] // 16, size[1] // 16))).float()
    cams = torch.nn.functional.interpolate(cams[None], size=size, mode="bilinear", align_corners=False)[0]
    return image, torch.cat([1 - cams.max(0, keepdim=True).values, cams])


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_crf_agrees_with_the_exact_dense_crf(seed):
    image, probs = textured_scene(seed)
    exact = dense_crf(image, probs, CrfParams(bilateral_method="grouped", bilateral_cell=1))
    fast = dense_crf(image, probs)  # defaults: lattice on 4 x 4 blocks, jointly upsampled
    full = dense_crf(image, probs, CrfParams(bilateral_downsample=1))  # the lattice alone
    agreement = lambda q: float((q.argmax(0) == exact.argmax(0)).float().mean())
    assert agreement(full) > 0.995 and float((full - exact).abs().mean()) < 0.005
    assert agreement(fast) > 0.99 and float((fast - exact).abs().mean()) < 0.005
    unary = dense_crf(image, probs, CrfParams(iterations=0))
    assert agreement(unary) < agreement(fast)  # the CRF does move labels, and the fast one moves them alike


def test_lattice_crf_is_a_mean_field():
    image, probs = textured_scene(2)
    marginals = dense_crf(image, probs)
    assert torch.allclose(marginals.sum(0), torch.ones(48, 64), atol=1e-5) and bool((marginals >= 0).all())
    # Without pairwise terms every iteration returns the unary's softmax, -log clip(p) as pydensecrf.
    unary_only = dense_crf(image, probs, CrfParams(gaussian_weight=0.0, bilateral_weight=0.0))
    assert torch.allclose(unary_only, torch.softmax(torch.log(probs.clamp(1e-5, 1)), dim=0), atol=1e-6)
    assert not torch.allclose(marginals, unary_only, atol=1e-2)


def test_joint_upsampling_takes_messages_from_blocks_of_the_pixels_own_colour():
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:, :6] = (250, 20, 20)  # the edge at column 6 cuts the second 4 x 4 block column
    image[:, 6:] = (20, 20, 250)
    bilateral = LatticeBilateralFilter(torch.from_numpy(image), sxy=67.0, srgb=3.0, downsample=4)
    weights = bilateral.upsample.to_dense().reshape(16, 16, 4, 4)
    assert torch.allclose(weights.sum(dim=(2, 3)), torch.ones(16, 16), atol=1e-5)
    # Pixel (8, 5) is red, in the mixed block (2, 1): its message comes from the pure red blocks of column 0.
    assert float(weights[8, 5, :, 0].sum()) > 0.99
    assert float(weights[8, 6, :, 2:].sum()) > 0.99  # and its blue neighbour's from the blue blocks
    with pytest.raises(UsageError, match="bilateral_method"):
        CrfParams(bilateral_method="permutohedral")


def test_pair_budget_coarsens_the_groups():
    image = np.random.default_rng(2).integers(0, 255, (20, 24, 3)).astype(np.uint8)
    coarse = BilateralFilter(torch.from_numpy(image), 16.0, 3.0, cell=1, colour_bin=1.0, max_pairs=480 * 60)
    assert coarse.num_groups * 480 <= 480 * 60 and coarse.cell > 1 and coarse.colour_bin > 1.0


def two_region_scene(seed: int):
    rng = np.random.default_rng(seed)
    truth = np.zeros((32, 40), dtype=np.int64)
    truth[8:26, 12:30] = 1
    image = np.where(truth[..., None] == 1, np.array([220, 40, 40]), np.array([30, 90, 200])).astype(np.uint8)
    confidence = np.where(rng.random(truth.shape) < 0.3, 0.4, 0.6)  # 30% of pixels lean the wrong way
    probs = np.stack([np.where(truth == 0, confidence, 1 - confidence), np.where(truth == 1, confidence, 1 - confidence)])
    return image, torch.from_numpy(probs).float(), truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crf_never_decreases_agreement_with_a_clean_image(seed):
    image, probs, truth = two_region_scene(seed)
    before = (probs.argmax(0).numpy() == truth).mean()
    marginals = dense_crf(image, probs, CrfParams(bilateral_sxy=20.0))
    after = (marginals.argmax(0).numpy() == truth).mean()
    assert after >= before and after > 0.95
    assert torch.allclose(marginals.sum(0), torch.ones(32, 40), atol=1e-5)


def test_crf_leaves_a_uniform_region_constant():
    image = np.full((24, 30, 3), 120, dtype=np.uint8)
    probs = torch.tensor([0.2, 0.7, 0.5]).view(3, 1, 1).expand(3, 24, 30).contiguous()
    marginals = dense_crf(image, probs, CrfParams(bilateral_sxy=10.0))
    assert bool((marginals.argmax(0) == 1).all())
    assert float(marginals.std(dim=(1, 2)).max()) < 0.02  # only the image border sees slightly fewer neighbours


# ------------------------------------------------------------------ VPL
def prototype_problem(seed: int, regions: int = 40, classes: int = 4, dim: int = 8):
    generator = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(classes, dim, generator=generator), dim=-1)
    labels = torch.randint(0, classes, (regions,), generator=generator)
    features = text[labels] + 0.8 * torch.randn(regions, dim, generator=generator) + 0.5
    return features, labels, text


def test_prototype_objective_is_convex_along_lines():
    features, labels, text = prototype_problem(0)
    p_text = text_probabilities(features, text, 0.05)
    generator = torch.Generator().manual_seed(5)
    for _ in range(4):
        a, b = torch.randn(2, *text.shape, generator=generator)
        loss = lambda v: float(prototype_objective(v, features, labels, p_text, 0.05, 1.0))
        for theta in (0.1, 0.3, 0.5, 0.7, 0.9):
            assert loss(theta * a + (1 - theta) * b) <= theta * loss(a) + (1 - theta) * loss(b) + 1e-5


def test_proposition_1_equal_prototypes_and_temperatures_give_equal_probabilities():
    features, _, text = prototype_problem(1)
    p_text = text_probabilities(features, text, 0.07)
    p_image = image_log_probabilities(features, text, 0.07).exp()
    assert torch.allclose(p_image, p_text, atol=1e-6)
    assert not torch.allclose(image_log_probabilities(features, text, 0.03).exp(), p_text, atol=1e-3)


def test_prototypes_approach_text_as_the_kl_weight_grows():
    features, labels, text = prototype_problem(2)
    config = lambda kl_weight: VplConfig(kl_weight=kl_weight, steps=200, tau_text=0.1, tau_image=0.1)
    closeness = []
    for kl_weight in (0.0, 1e2, 1e4):
        prototypes, stats = learn_prototypes(features, labels, text, config(kl_weight))
        assert torch.allclose(prototypes.norm(dim=-1), torch.ones(4), atol=1e-5)
        closeness.append(float(torch.nn.functional.cosine_similarity(prototypes, text, dim=-1).min()))
    assert closeness[0] < 0.95 < closeness[1] < closeness[2]
    assert closeness[2] > 0.999
    free, stats = learn_prototypes(features, labels, text, config(0.0))
    assert stats["final_loss"] < stats["initial_loss"] and stats["regions"] == 40


@pytest.mark.parametrize("regions", [40, 30])
def test_two_starts_give_the_same_normalised_prototypes(regions):
    # Without the gauge fix the two runs reach the same loss with prototypes at cosine 0.3 and 0.2.
    features, labels, text = prototype_problem(3, regions=regions)
    config = VplConfig(steps=600, lr=2e-2, tau_text=0.1, tau_image=0.1, kl_weight=1.0)
    start = torch.randn(text.shape, generator=torch.Generator().manual_seed(9))
    from_text, stats_text = learn_prototypes(features, labels, text, config)
    from_random, stats_random = learn_prototypes(features, labels, text, config, initial=start)
    assert stats_text["final_loss"] == pytest.approx(stats_random["final_loss"], abs=1e-4)
    cosine = torch.nn.functional.cosine_similarity(from_text, from_random, dim=-1)
    assert float(cosine.min()) > 0.9999, cosine


def test_the_gauge_fix_changes_nothing_the_objective_sees():
    features, labels, text = prototype_problem(4, regions=6, dim=10)
    p_text = text_probabilities(features, text, 0.1)
    generator = torch.Generator().manual_seed(2)
    prototypes = torch.randn(text.shape, generator=generator)
    shift = torch.randn(1, text.shape[1], generator=generator)  # the same vector added to every prototype
    loss = lambda v: float(prototype_objective(v, features, labels, p_text, 0.1, 1.0))
    assert loss(prototypes + shift) == pytest.approx(loss(prototypes), abs=1e-5)
    fixed = fix_gauge(prototypes, text, feature_span(features))
    assert loss(fixed) == pytest.approx(loss(prototypes), abs=1e-5)
    assert torch.allclose(fixed.mean(dim=0), text.mean(dim=0), atol=1e-6)  # class mean at the text mean
    unseen = torch.linalg.svd(torch.nn.functional.normalize(features, dim=-1))[2][6:]  # orthogonal to every region
    assert torch.allclose((fixed - text) @ unseen.T, torch.zeros(4, 4), atol=1e-5)
    assert torch.allclose(fix_gauge(fixed, text, feature_span(features)), fixed, atol=1e-6)  # a projection


def test_region_embeddings_are_cam_weighted_means():
    patches = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    cams = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.2, 0.6], [0.0, 0.0, 0.0]])
    embeddings, keep = region_embeddings(patches, cams)
    assert torch.allclose(embeddings[0], torch.tensor([1.0, 0.5]) / 1.5)
    assert torch.allclose(embeddings[1], torch.tensor([1.2, 1.4]) / 0.8)
    assert keep.tolist() == [True, True, False]
    hard, _ = region_embeddings(patches, cams, threshold=0.3)
    assert torch.allclose(hard[1], torch.tensor([2.0, 2.0]))
