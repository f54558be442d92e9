"""Semantic-segmentation metrics from a confusion matrix.

mIoU averages only the classes that have ground-truth pixels in the evaluated set (the rule
detectron2 adopted in 2022 and the published OVSS tables use). Averaging classes that never
occur as well would cost 4-5 points on PC-459.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ovss_cli.errors import OvssError


class ConfusionMatrix:
    """A [num_classes, num_classes] count matrix (rows: ground truth, columns: prediction), kept on-device."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor, ignore_index: int) -> None:
        """Add one prediction/target pair of equal shape; pixels whose target is `ignore_index` are dropped."""
        keep = target != ignore_index
        target, prediction = target[keep].long(), prediction[keep].long()
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            bad = int(target.max()) if int(target.max()) >= self.num_classes else int(target.min())
            raise OvssError(f"label value {bad} is outside 0..{self.num_classes - 1} (ignore is {ignore_index}); "
                            "the label maps do not match this benchmark: re-run `ovss prepare`")
        index = target * self.num_classes + prediction
        self.matrix += torch.bincount(index, minlength=self.num_classes**2).reshape(self.num_classes, self.num_classes)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op without an initialised process group)."""

        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)


def compute_metrics(matrix: torch.Tensor, class_names: list[str] | tuple[str, ...] | None = None) -> dict:
    """mIoU, fwIoU, pixel accuracy, mean accuracy and per-class IoU/accuracy (in percent).

    Means run over classes with ground-truth pixels; per-class values of absent classes are None.
    """
    m = matrix.double().cpu()
    true_positive = m.diag()
    gt_pixels = m.sum(dim=1)
    pred_pixels = m.sum(dim=0)
    union = gt_pixels + pred_pixels - true_positive
    present = gt_pixels > 0
    iou = true_positive / union.clamp(min=1)
    accuracy = true_positive / gt_pixels.clamp(min=1)
    total = gt_pixels.sum()
    frequency = gt_pixels / total.clamp(min=1)
    names = list(class_names) if class_names is not None else [str(i) for i in range(m.shape[0])]
    has_gt = bool(present.any())
    return {
        "mIoU": 100 * float(iou[present].mean()) if has_gt else float("nan"),
        "fwIoU": 100 * float((frequency[present] * iou[present]).sum()) if has_gt else float("nan"),
        "pACC": 100 * float(true_positive.sum() / total) if total > 0 else float("nan"),
        "mACC": 100 * float(accuracy[present].mean()) if has_gt else float("nan"),
        "classes_with_gt": int(present.sum()),
        "num_classes": int(m.shape[0]),
        "per_class_IoU": {n: (100 * float(iou[i]) if present[i] else None) for i, n in enumerate(names)},
        "per_class_ACC": {n: (100 * float(accuracy[i]) if present[i] else None) for i, n in enumerate(names)},
    }
