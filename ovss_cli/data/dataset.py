"""Evaluation datasets: (image, label, name) triples of a prepared benchmark or the toy one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ovss_cli.data.benchmarks import TOY, get_benchmark, locate
from ovss_cli.data.io import read_image, read_label, read_split_ids
from ovss_cli.data.toy import TOY_CLASSES, TOY_IGNORE, toy_length, toy_sample
from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.errors import OvssError


@dataclass(frozen=True)
class EvalSpec:
    """What evaluation needs to know about a benchmark."""

    name: str
    title: str
    class_names: tuple[str, ...]  # the vocabulary the model segments with
    num_eval_classes: int  # classes of the confusion matrix
    ignore_index: int
    background_from: int | None = None


class SegmentationSet:
    """Image/label pairs of one benchmark, listed from its label folder (or split file)."""

    def __init__(self, name: str, root: Path | None = None, limit: int | None = None, split: str = "val"):
        self.name = name
        self.split = split
        if name == TOY:
            self.spec = EvalSpec(TOY, "toy (synthetic)", TOY_CLASSES, len(TOY_CLASSES), TOY_IGNORE)
            count = toy_length(split)
            self.items: list = list(range(count if limit is None else min(limit, count)))
            return
        bench = get_benchmark(name)
        self.spec = EvalSpec(bench.name, bench.title, load_vocabulary(bench.vocabulary), bench.num_eval_classes,
                             bench.ignore_index, bench.background_from)
        image_dir, label_dir = locate(bench, root)
        if bench.split_file:
            split_path = root / bench.split_file
            if not split_path.is_file():
                raise OvssError(f"split list {split_path} is missing; run `ovss prepare {bench.prepare}`")
            stems = read_split_ids(split_path)
            labels = [label_dir / f"{stem}{bench.label_suffix}" for stem in stems]
        else:
            labels = sorted(label_dir.glob(f"*{bench.label_suffix}"))
        if not labels:
            raise OvssError(f"no *{bench.label_suffix} label maps in {label_dir}; run `ovss prepare {bench.prepare}`")
        if limit is not None:
            labels = labels[:limit]
        self.items = [(image_dir / f"{path.stem}{bench.image_suffix}", path) for path in labels]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        item = self.items[index]
        if self.name == TOY:
            image, label = toy_sample(item, self.split)
            return image, label, f"toy_{self.split}_{item:05d}"
        image_path, label_path = item
        image, label = read_image(image_path), read_label(label_path)
        if image.shape[:2] != label.shape:
            raise OvssError(f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                            f"{label.shape[1]}x{label.shape[0]}; re-run `ovss prepare`")
        return image, label, label_path.stem
