import math

import numpy as np
import pytest
import torch

from ovss_cli.errors import OvssError
from ovss_cli.evaluate.metrics import ConfusionMatrix, compute_metrics
from tests.helpers import reference_miou


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_independent_reference(seed):
    rng = np.random.default_rng(seed)
    num_classes, ignore = 12, 255
    gt = rng.integers(0, 8, size=(3, 40, 50))  # classes 8..11 never occur in the ground truth
    gt[rng.random(gt.shape) < 0.1] = ignore
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, num_classes, size=gt.shape))
    pred[pred == ignore] = 0
    matrix = ConfusionMatrix(num_classes)
    for p, g in zip(pred, gt):
        matrix.update(torch.from_numpy(p), torch.from_numpy(g), ignore)
    metrics = compute_metrics(matrix.matrix)
    expected = reference_miou(pred, gt, num_classes, ignore)
    for key in ("mIoU", "mACC", "pACC", "fwIoU"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-9)
    assert metrics["classes_with_gt"] == 8
    assert metrics["per_class_IoU"]["10"] is None
    # The older rule (average over all 12 classes, absent ones counting 0) would be lower.
    assert metrics["mIoU"] > expected["mIoU"] * 8 / 12 + 1e-6


def test_hand_computed_example():
    gt = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 2]])
    matrix = ConfusionMatrix(3)
    matrix.update(pred, gt, 255)
    metrics = compute_metrics(matrix.matrix, ["a", "b", "c"])
    # class 0: inter 1, union 2 -> 0.5; class 1: inter 1, union 2 -> 0.5; class 2 absent from GT and
    # never predicted on a kept pixel (the ignore pixel is dropped).
    assert metrics["mIoU"] == pytest.approx(50.0)
    assert metrics["pACC"] == pytest.approx(100 * 2 / 3)
    assert metrics["per_class_IoU"] == {"a": 50.0, "b": 50.0, "c": None}


def test_label_out_of_range_is_a_clear_error():
    matrix = ConfusionMatrix(3)
    with pytest.raises(OvssError, match="label value 7"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([0, 7]), 255)


def test_empty_ground_truth_gives_nan_not_crash():
    matrix = ConfusionMatrix(2)
    matrix.update(torch.tensor([0, 1]), torch.tensor([255, 255]), 255)
    assert math.isnan(compute_metrics(matrix.matrix)["mIoU"])
