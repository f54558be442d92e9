"""Training sets (COCO-Stuff-171 in the prepared layout, or the built-in toy set) with CAT-Seg's augmentation.

Augmentation randomness comes from a generator seeded by (recipe seed, epoch, image index),
never from process-global state: a sample looks the same whichever worker or rank loads it,
so runs are reproducible with any number of workers and resume exactly. The sampler
(`ovss_cli.engine.loader`) hands out (index, epoch) pairs for that reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from ovss_cli.data.benchmarks import PSEUDO_LABEL_SETS, TRAIN_SETS, get_benchmark, locate
from ovss_cli.data.image_labels import PSEUDO_LABEL_SETTINGS, open_image_label_set
from ovss_cli.data.io import read_image, read_label
from ovss_cli.data.root import resolve_data_root
from ovss_cli.data.toy import toy_sample
from ovss_cli.data.vocab import load_vocabulary
from ovss_cli.errors import OvssError, UsageError

IGNORE_INDEX = 255


def train_vocabulary(benchmark: str) -> tuple[str, ...]:
    """Class names of a training set, in label-id order."""
    if benchmark in PSEUDO_LABEL_SETS:
        from ovss_cli.data.image_labels import label_set_classes

        return label_set_classes(PSEUDO_LABEL_SETS[benchmark])
    if TRAIN_SETS[benchmark] is None:
        from ovss_cli.data.toy import TOY_CLASSES

        return tuple(TOY_CLASSES)

    return load_vocabulary(TRAIN_SETS[benchmark])


def check_train_data(cfg) -> None:
    """Fail fast (DatasetMissingError, exit 2) when the training set's folders are missing."""
    if cfg.benchmark in PSEUDO_LABEL_SETS:
        pseudo_label_source(cfg)
        return
    if TRAIN_SETS[cfg.benchmark] is None:
        return

    locate(get_benchmark(cfg.benchmark), resolve_data_root(cfg.data_root or None))


def check_label_values(label: np.ndarray, num_classes: int, path: Path) -> None:
    """Every value is a class id (0..num_classes-1) or IGNORE_INDEX; checked here, where the file is known,
    so that the training step needs no host sync to check its labels."""
    bad = ((label < 0) | (label >= num_classes)) & (label != IGNORE_INDEX)
    if bad.any():
        values = ", ".join(str(v) for v in np.unique(label[bad])[:5])
        raise OvssError(f"label map {path} has values ({values}) outside 0..{num_classes - 1} other than the ignore "
                        f"value {IGNORE_INDEX}; check that the dataset's class list matches its labels")


def pseudo_label_source(cfg) -> dict:
    """The settings `ovss pseudolabel` recorded in data.pseudo_labels, checked against data.benchmark."""

    folder = Path(cfg.pseudo_labels).expanduser() if cfg.pseudo_labels else None
    dataset = PSEUDO_LABEL_SETS[cfg.benchmark]
    if folder is None or not (folder / PSEUDO_LABEL_SETTINGS).is_file():
        raise UsageError(f"data.benchmark {cfg.benchmark} trains on pseudo-labels: set data.pseudo_labels to a folder "
                         f"written by `ovss pseudolabel --dataset {dataset} --out DIR`"
                         + (f" ({folder} has no {PSEUDO_LABEL_SETTINGS})" if folder is not None else ""))
    try:
        settings = json.loads((folder / PSEUDO_LABEL_SETTINGS).read_text())
    except ValueError as err:
        raise OvssError(f"{folder / PSEUDO_LABEL_SETTINGS} is corrupt ({err}); re-run ovss pseudolabel") from None
    if settings.get("dataset") != dataset:
        raise UsageError(f"{folder} holds pseudo-labels of dataset '{settings.get('dataset')}', but data.benchmark "
                         f"{cfg.benchmark} trains on '{dataset}'")
    return settings


def pseudo_label_items(cfg, root: Path | None) -> tuple[list, str]:
    """(image path or toy index, pseudo-label PNG) for every image of the pseudo-labelled split, and the split."""

    settings = pseudo_label_source(cfg)
    folder = Path(cfg.pseudo_labels).expanduser()
    labels = open_image_label_set(settings["dataset"], settings["split"], root, "mask")
    items, missing = [], 0
    for index, item in enumerate(labels.items):
        png = folder / f"{item.image_id}.png"
        if not png.is_file():
            missing += 1
            continue
        items.append((item.image_path if item.image_path is not None else index, png))
    if missing:
        raise UsageError(f"{folder} lacks {missing} of the {len(labels)} pseudo-labels of {settings['dataset']} "
                         f"{settings['split']}; finish them first (ovss pseudolabel resumes with the same arguments)")
    return items, settings["split"]


class TrainSegmentationSet:
    """Augmented (image, label) samples: {'image': uint8 [3, S, S], 'label': int64 [S, S]} (S = crop_size).

    Index it with (image index, epoch). `cfg` is the recipe's `data:` section.
    """

    def __init__(self, cfg, seed: int, root: Path | None = None):
        self.cfg = cfg
        self.seed = int(seed)
        self.class_names = train_vocabulary(cfg.benchmark)
        self.toy_split = "train"
        if cfg.benchmark in PSEUDO_LABEL_SETS:
            needs_root = PSEUDO_LABEL_SETS[cfg.benchmark] != "toy"
            root = root if root is not None or not needs_root else resolve_data_root(cfg.data_root or None)
            self.items, self.toy_split = pseudo_label_items(cfg, root)
        elif TRAIN_SETS[cfg.benchmark] is None:
            from ovss_cli.data.toy import toy_length

            self.items: list = list(range(toy_length("train")))
        else:
            bench = get_benchmark(cfg.benchmark)
            root = root if root is not None else resolve_data_root(cfg.data_root or None)
            image_dir, label_dir = locate(bench, root)
            labels = sorted(label_dir.glob(f"*{bench.label_suffix}"))
            if not labels:
                raise OvssError(f"no *{bench.label_suffix} label maps in {label_dir}; run `ovss prepare {bench.prepare}`")
            self.items = [(image_dir / f"{p.stem}{bench.image_suffix}", p) for p in labels]
        if cfg.limit is not None:
            self.items = self.items[: cfg.limit]

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw RGB uint8 [H, W, 3] image and int64 [H, W] label of item `index`."""

        item = self.items[index]
        if isinstance(item, int):
            return toy_sample(item, "train")

        image_path, label_path = item
        # a toy image (an index) with its pseudo-label, or a prepared image
        image = toy_sample(image_path, self.toy_split)[0] if isinstance(image_path, int) else read_image(image_path)
        label = read_label(label_path)
        if image.shape[:2] != label.shape:
            raise OvssError(f"{image_path} and its label {label_path} differ in size; re-run `ovss prepare`")
        check_label_values(label, len(self.class_names), label_path)
        return image, label

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        image, label = self.load(index)
        rng = np.random.default_rng([self.seed, epoch, index])
        image, label = augment(image, label, self.cfg, rng)
        return {"image": np.ascontiguousarray(image.transpose(2, 0, 1)), "label": np.ascontiguousarray(label)}


def augment(image: np.ndarray, label: np.ndarray, cfg, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """CAT-Seg's training augmentation: shortest edge -> crop, random crop, SSD colour distortion, flip."""
    size = cfg.crop_size
    if cfg.resize_shortest_edge:
        image, label = resize_shortest_edge(image, label, size)
    image, label = pad_to(image, label, size)
    image, label = crop(image, label, size, rng if cfg.random_crop else None, cfg.cat_max_ratio)
    if cfg.color_jitter:
        image = photometric_distortion(image, rng)
    if cfg.flip and rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def resize_shortest_edge(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    height, width = label.shape
    scale = size / min(height, width)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_h, new_w) == (height, width):
        return image, label
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    # labels go through uint16 (cv2 has no int64 resize); nearest keeps ids exact
    label = cv2.resize(label.astype(np.uint16), (new_w, new_h), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    return image, label


def pad_to(image: np.ndarray, label: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right up to `size` (image with 0, label with ignore) when an image is smaller than the crop."""
    height, width = label.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=IGNORE_INDEX)
    return image, label


def crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator | None,
         cat_max_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """A size x size crop: random (retrying, like detectron2, while one class dominates) or central."""
    height, width = label.shape
    if rng is None:
        top, left = (height - size) // 2, (width - size) // 2
        return image[top : top + size, left : left + size], label[top : top + size, left : left + size]
    for _ in range(10):
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        window = label[top : top + size, left : left + size]
        if cat_max_ratio >= 1.0:
            break
        counts = np.bincount(window[window != IGNORE_INDEX].ravel())
        counts = counts[counts > 0]
        if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
            break
    return image[top : top + size, left : left + size], label[top : top + size, left : left + size]


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SSD's colour distortion: random brightness, contrast (before or after), saturation and hue."""

    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out = out + rng.uniform(-32, 32)
    contrast_first = rng.random() < 0.5
    if contrast_first and rng.random() < 0.5:
        out = out * rng.uniform(0.5, 1.5)
    out = np.clip(out, 0, 255).astype(np.uint8)
    hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV).astype(np.float32)  # uint8 hue lives in 0..179
    if rng.random() < 0.5:
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.5, 1.5), 0, 255)
    if rng.random() < 0.5:
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-18, 19))) % 180
    out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    if not contrast_first and rng.random() < 0.5:
        out = np.clip(out.astype(np.float32) * rng.uniform(0.5, 1.5), 0, 255).astype(np.uint8)
    return out
