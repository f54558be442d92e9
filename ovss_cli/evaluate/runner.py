"""Evaluate a segmenter on one benchmark: images sharded across ranks, confusion matrix all-reduced."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ovss_cli.data.dataset import SegmentationSet
from ovss_cli.evaluate.inference import predict_scores
from ovss_cli.evaluate.metrics import ConfusionMatrix, compute_metrics
from ovss_cli.evaluate.visualize import palette, write_label_and_overlay
from ovss_cli.progress import track
from ovss_cli.runtime.distributed import DistInfo
from ovss_cli.runtime.precision import autocast


def eval_class_names(dataset: SegmentationSet) -> list[str]:
    spec = dataset.spec
    if spec.background_from is not None:
        return [*spec.class_names[: spec.background_from], "background"]
    return list(spec.class_names)


def to_eval_prediction(prediction: torch.Tensor, background_from: int | None) -> torch.Tensor:
    """VOC-20b rule: any vocabulary index >= background_from counts as the background class."""
    if background_from is None:
        return prediction
    return prediction.clamp(max=background_from)


@torch.no_grad()
def evaluate_dataset(segmenter, dataset: SegmentationSet, mode: Literal["sliding", "whole"], dist: DistInfo,
                     precision: str = "fp32", show_progress: bool = True, save_dir: Path | None = None) -> dict:
    """Metrics of `segmenter` on `dataset`; with `save_dir`, each rank also writes its images'
    `<name>_label.png` and `<name>_overlay.png` (the scored prediction) there."""
    spec = dataset.spec
    device = dist.device
    segmenter.set_vocabulary(spec.class_names)
    matrix = ConfusionMatrix(spec.num_eval_classes, device=device)
    names = eval_class_names(dataset)
    colours = palette(len(names))
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    indices = range(dist.rank, len(dataset), dist.world_size)
    for index in track(indices, len(indices), f"{spec.name}", enabled=show_progress and dist.is_main):
        image, label, name = dataset[index]
        with autocast(precision, device):
            pixels = segmenter.image_norm.to_tensor(image, device)
            scores = predict_scores(pixels, segmenter.scores, mode, segmenter.window,
                                    tuple(label.shape))
        prediction = to_eval_prediction(scores.argmax(dim=0), spec.background_from)
        matrix.update(prediction, torch.from_numpy(label).to(device), spec.ignore_index)
        if save_dir is not None:
            write_label_and_overlay(save_dir / name, image, prediction.cpu().numpy(), names, colours)
    matrix.all_reduce()
    metrics = compute_metrics(matrix.matrix, names)
    metrics["images"] = len(dataset)
    return metrics
