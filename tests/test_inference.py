import torch
import torch.nn.functional as F

from ovss_cli.evaluate.inference import SlidingWindow, sliding_window_scores, whole_image_scores


def per_pixel_scorer(images: torch.Tensor) -> torch.Tensor:
    """A model whose scores depend only on each pixel's own value (softmax of a fixed linear map)."""
    weight = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.7, -1.0], [-0.5, 0.2, 2.0], [1.5, 1.0, 1.0]])
    return torch.einsum("tc,bchw->bthw", weight, images).softmax(dim=1)


def test_sliding_window_equals_whole_image_for_a_per_pixel_model():
    torch.manual_seed(0)
    image = torch.randn(3, 106, 106)
    geometry = SlidingWindow.for_window(64)
    assert (geometry.window, geometry.stride, geometry.resize) == (64, 42, 106)
    sliding = sliding_window_scores(image, per_pixel_scorer, geometry, (106, 106))
    # Whole-image reference at the resize resolution: score every pixel directly.
    reference = per_pixel_scorer(image[None])[0]
    # The global view is a downsampled copy: average with its upsampled scores, exactly as the protocol does.
    global_scores = per_pixel_scorer(F.interpolate(image[None], size=(64, 64), mode="bilinear", align_corners=False))
    global_up = F.interpolate(global_scores, size=(106, 106), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(sliding, (reference + global_up) / 2, atol=1e-5)


def test_windows_alone_reproduce_the_whole_image():
    """Fold-averaging overlapping windows of a per-pixel model is exact (coverage-normalised)."""
    torch.manual_seed(1)
    image = torch.randn(3, 640, 640)
    geometry = SlidingWindow()
    assert (geometry.window, geometry.stride, geometry.resize) == (384, 256, 640)
    calls = []

    def scorer_without_global(images):
        calls.append(images.shape[0])
        scores = per_pixel_scorer(images)
        scores[-1] = per_pixel_scorer(F.interpolate(image[None], size=(384, 384), mode="bilinear", align_corners=False))[0]
        return scores

    sliding = sliding_window_scores(image, scorer_without_global, geometry, (640, 640))
    assert calls == [5]  # 4 windows + 1 global view, in one batch
    direct = per_pixel_scorer(image[None])[0]
    global_up = F.interpolate(per_pixel_scorer(F.interpolate(image[None], size=(384, 384), mode="bilinear",
                                                              align_corners=False)), size=(640, 640),
                              mode="bilinear", align_corners=False)[0]
    assert torch.allclose(2 * sliding - global_up, direct, atol=1e-5)


def test_whole_image_mode_resizes_back():
    image = torch.randn(3, 50, 70)
    scores = whole_image_scores(image, per_pixel_scorer, 64, (50, 70))
    assert scores.shape == (4, 50, 70)
    assert torch.allclose(scores.sum(0), torch.ones(50, 70), atol=1e-5)
