"""What several test modules share: paths, the tiny training overrides, reference metrics, an oracle segmenter.

Test modules import from here (never from each other).
"""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import tifffile
import torch

from ovss_cli.clip.norm import ImageNorm

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
QUICKSTART = RECIPES / "quickstart.yaml"
# The quickstart shrunk to a 2x2 patch grid; 6 steps of global batch 4, a checkpoint every 3.
# zero_target weighs every pixel equally, so the mean loss of 2 ranks equals that of 1 process.
TINY = ["clip.image_size=32", "data.crop_size=32", "decoder.window_size=2", "decoder.hidden_dim=16",
        "decoder.text_guidance_dim=16", "decoder.appearance_guidance_dim=16", "decoder.decoder_dims=[16,16]",
        "decoder.decoder_guidance_dims=[16,16]", "decoder.decoder_guidance_proj_dims=[8,8]", "data.batch_size=4",
        "train.iterations=6", "train.log_every=1", "train.checkpoint_every=3", "train.eval_benches=[]",
        "loss.ignore=zero_target", "optim.lr=1e-3", "optim.clip_lr_multiplier=1.0"]


def reference_miou(pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore: int) -> dict:
    """Independent per-class loop: IoU over classes that have ground-truth pixels."""
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    ious, accs, weights = [], [], []
    for c in range(num_classes):
        gt_c, pred_c = gt == c, pred == c
        if gt_c.sum() == 0:
            continue
        inter = np.logical_and(gt_c, pred_c).sum()
        union = np.logical_or(gt_c, pred_c).sum()
        ious.append(inter / union)
        accs.append(inter / gt_c.sum())
        weights.append(gt_c.sum() / gt.size)
    return {"mIoU": 100 * np.mean(ious), "mACC": 100 * np.mean(accs), "pACC": 100 * (pred == gt).mean(),
            "fwIoU": 100 * np.sum(np.array(weights) * np.array(ious))}


def encode_classes_as_pixels(prediction: np.ndarray) -> np.ndarray:
    """An RGB image whose pixels spell the class id (R = id % 256, G = id // 256)."""
    image = np.zeros((*prediction.shape, 3), dtype=np.uint8)
    image[..., 0] = prediction % 256
    image[..., 1] = prediction // 256
    return image


class PixelOracle:
    """A per-pixel 'model': reads the class id spelled by each pixel and scores it 1, all others 0."""

    # not OpenAI's statistics: the decoding below only works if callers normalise with the segmenter's own
    image_norm = ImageNorm(mean=(0.5, 0.25, 0.75), std=(0.5, 0.5, 0.25))

    def __init__(self, window: int):
        self.window = window
        self.num_classes = 0

    def set_vocabulary(self, class_names):
        self.num_classes = len(class_names)

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.image_norm.mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.image_norm.std).view(1, 3, 1, 1) * 255
        pixels = (images * std + mean).round().long()
        ids = (pixels[:, 0] + 256 * pixels[:, 1]).clamp(0, self.num_classes - 1)
        return torch.nn.functional.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float()


def assert_official_protocol(recipe, clip: str, size: int, guidance: list[int]) -> None:
    """The CAT-Seg / H-CLIP training protocol: COCO-Stuff, 80k iterations, global batch 4, AdamW 2e-4 (CLIP 2e-6)."""
    import pytest

    assert recipe.method == "catseg"
    assert (recipe.clip.name, recipe.clip.pretrained, recipe.clip.image_size, recipe.clip.templates) == (
        clip, "openai", size, "single")
    assert recipe.decoder.guidance_layers == guidance
    assert (recipe.data.benchmark, recipe.data.crop_size, recipe.data.batch_size) == ("coco-stuff", 384, 4)
    assert recipe.train.iterations == 80_000
    optim = recipe.optim
    assert (optim.lr, optim.lr * optim.clip_lr_multiplier, optim.weight_decay, optim.grad_clip) == pytest.approx(
        (2e-4, 2e-6, 1e-4, 0.01))
    assert (optim.schedule, optim.warmup_iters, optim.weight_decay_norm, optim.weight_decay_embed) == ("cosine", 0, 0, 0)


def train_quickstart(*args: str):
    """`ovss train recipes/quickstart.yaml ARGS...` through the real CLI (Typer's CliRunner)."""
    from typer.testing import CliRunner

    from ovss_cli.cli import app

    return CliRunner().invoke(app, ["train", str(QUICKSTART), *args])


def error_line(output: str) -> str:
    """The one `error:` line of a failed command (and no traceback)."""
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


VOC_NAMES = ["background", "aeroplane", "bicycle", "bird"]


def write_voc(root, count=3, split_ids=None):
    """A tiny VOC 2012 in the prepared layout: JPEGImages, Annotations, SegmentationClassAug, split lists."""
    import cv2

    voc = root / "VOCdevkit" / "VOC2012"
    for folder in ("JPEGImages", "Annotations", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(count)]
    for i, image_id in enumerate(ids):
        label = np.zeros((48, 64), np.uint8)
        label[8:30, 10:40] = 1 + i % 3
        label[32:44, 44:60] = 3
        label[7, 10:40] = 255
        colours = np.array([[40, 120, 200], [220, 40, 40], [40, 200, 60], [230, 220, 30]])
        image = colours[np.minimum(label, 3)] + rng.normal(0, 3, (48, 64, 3))
        cv2.imwrite(str(voc / "JPEGImages" / f"{image_id}.jpg"), np.clip(image, 0, 255).astype(np.uint8)[..., ::-1])
        cv2.imwrite(str(voc / "SegmentationClassAug" / f"{image_id}.png"), label)
        objects = "".join(f"<object><name>{VOC_NAMES[c]}</name></object>" for c in (1 + i % 3, 3, 3))
        (voc / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{objects}</annotation>")
    for split in ("train", "train_aug", "val"):
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(split_ids or ids) + "\n")
    return ids


def write_jpeg_exact(path, image):
    # JPEG is lossy; the oracle needs exact pixels, so store PNG bytes under the .jpg name (cv2 sniffs content).
    ok, data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.tobytes())


def make_ade847(root, rng, count=3):
    preds, gts = [], []
    for i in range(count):
        gt = rng.integers(0, 847, size=(64, 64)).astype(np.uint16)
        gt[:, :20] = rng.integers(300, 310, size=(64, 20))
        gt[rng.random(gt.shape) < 0.05] = 65535
        pred = np.where(rng.random(gt.shape) < 0.7, gt, rng.integers(0, 847, size=gt.shape)).astype(np.int64)
        pred[pred == 65535] = 3
        name = f"ADE_frame_{i:08d}"
        tifffile.imwrite(root / "ADE20K_2021_17_01/annotations_detectron2/validation" / f"{name}.tif", gt)
        write_jpeg_exact(root / "ADE20K_2021_17_01/images_detectron2/validation" / f"{name}.jpg",
                         encode_classes_as_pixels(pred))
        preds.append(pred)
        gts.append(gt.astype(np.int64))
    return np.stack(preds), np.stack(gts)


def zip_link(handle: zipfile.ZipFile, name: str, target: str) -> None:
    """A symlink member `name -> target` in a zip being written."""
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    handle.writestr(info, target)


def write_zip_link_chain(path: Path, harmless: str) -> None:
    """A zip whose links each look harmless on their own text but together lead out of the target:
    a/b -> .., a/b/c -> .., then a file under a/b/c/ (beside one harmless file `harmless`)."""
    with zipfile.ZipFile(path, "w") as handle:
        handle.writestr(harmless, "fine")
        zip_link(handle, "a/b", "..")
        zip_link(handle, "a/b/c", "..")
        handle.writestr("a/b/c/escaped.txt", "evil")


def poison_training_loss(monkeypatch, model_class, at_call: int, poison: Callable) -> None:
    """Make `model_class.training_loss`'s `at_call`-th call return `poison(model, losses)` instead of its losses."""
    original = model_class.training_loss
    calls = {"n": 0}

    def poisoned(self, batch):
        out = original(self, batch)
        calls["n"] += 1
        return poison(self, out) if calls["n"] == at_call else out

    monkeypatch.setattr(model_class, "training_loss", poisoned)

