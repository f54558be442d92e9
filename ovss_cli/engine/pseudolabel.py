"""The loops behind `ovss pseudolabel` and `ovss prototypes`: images sharded over ranks, results reduced on rank 0.

CLIP comes from the recipe's `clip:` section through `ovss_cli.clip` (one loader), the prompts
through its TextEncoder (CLIP-ES's template from `clip.templates`, synonym-joined names), the
images and image-level labels from `ovss_cli.data.image_labels`, and the score through
`ovss_cli.evaluate.metrics`, the same confusion matrix and mIoU as `ovss evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F

from ovss_cli.clip.config import ClipConfig, build_dense_clip
from ovss_cli.data.image_labels import IGNORE, PSEUDO_LABEL_SETTINGS, ImageLabelSet
from ovss_cli.data.io import read_label, write_label_png
from ovss_cli.errors import UsageError
from ovss_cli.evaluate.metrics import ConfusionMatrix, compute_metrics
from ovss_cli.fileio import remove_temporaries, write_json
from ovss_cli.progress import track
from ovss_cli.runtime.distributed import barrier
from ovss_cli.wsss.clip_es import ClipEsCams, pseudo_label
from ovss_cli.wsss.clip_features import ClipEsBackbone
from ovss_cli.wsss.config import ClipEsConfig
from ovss_cli.wsss.names import background_words, prompt_names
from ovss_cli.wsss.vpl import region_embeddings
from ovss_cli.wsss.writer import is_finished, label_path

SETTINGS_FILE = PSEUDO_LABEL_SETTINGS


@dataclass
class PseudoLabelSummary:
    images: int
    written: int
    skipped: int
    metrics: dict | None  # compute_metrics over labelled pixels with ground truth, None without ground truth
    labelled_fraction: float | None  # share of ground-truth pixels that got a label (not 255)


def class_embeddings(text, dense, names: tuple[str, ...]) -> torch.Tensor:
    """Unit text embeddings [len(names), C]: the templates of `text` (one for CLIP-ES) averaged per name."""
    embeddings = F.normalize(text.embed_classes(dense, list(names)).float(), dim=-1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


def build_cams(clip: ClipConfig, dataset: ImageLabelSet, config: ClipEsConfig, device: str,
               prototypes: torch.Tensor | None = None) -> ClipEsCams:
    """CLIP-ES for `dataset`'s classes; `prototypes` [K, C] (VPL) replace the foreground text rows."""
    # The model's native size: CLIP-ES resizes the positional embeddings to each image itself.
    dense, text = build_dense_clip(clip, image_size=0, join_synonyms=True)
    dense = dense.to(device).eval()
    foreground = class_embeddings(text, dense, prompt_names(dataset.name))
    background = class_embeddings(text, dense, background_words(dataset.name))
    if prototypes is not None:
        if prototypes.shape != foreground.shape:
            raise UsageError(f"prototypes have shape {tuple(prototypes.shape)}, the model's class embeddings "
                             f"{tuple(foreground.shape)}; learn them with the same CLIP and dataset")
        foreground = prototypes.to(foreground.device)
    return ClipEsCams(ClipEsBackbone(dense.clip, config.pos_interpolation), foreground, background, config)


def prepare_output(out_dir: Path, settings: dict, is_main: bool) -> None:
    """Create `out_dir`; refuse one made with other settings; record the settings; drop stale temporaries."""
    settings = json.loads(json.dumps(settings))  # the form it takes on disk (tuples become lists)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded = out_dir / SETTINGS_FILE
    if recorded.is_file():
        previous = json.loads(recorded.read_text())
        if previous != settings:
            changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
            raise UsageError(f"{out_dir} holds pseudo-labels made with other settings ({', '.join(changed)}); "
                             "use a new --out folder, or delete it to start over")
    if is_main:
        if not recorded.is_file():
            write_json(recorded, settings)
        remove_temporaries(out_dir)
    barrier()


def generate_pseudolabels(dataset: ImageLabelSet, cams: ClipEsCams, out_dir: Path, dist, progress: bool = True,
                          batch_size: int = 8) -> PseudoLabelSummary:
    """Write `<out_dir>/<id>.png` for this rank's images (finished ones skipped) and score all against ground truth.

    Images are taken `batch_size` at a time; those of the same size share the network's passes.
    """
    confusion = ConfusionMatrix(dataset.num_classes, device=dist.device)
    # images, written, skipped, images with ground truth, labelled gt pixels, valid gt pixels
    counts = torch.zeros(6, dtype=torch.float64, device=dist.device)
    indices = list(range(dist.rank, len(dataset), dist.world_size))
    chunks = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    for chunk in track(chunks, len(chunks), "pseudo-labels", enabled=progress and dist.is_main):
        todo = [index for index in chunk if not is_finished(out_dir, dataset.items[index].image_id)]
        images = {index: dataset.image(index) for index in todo}
        keys = {index: dataset.image_labels(index) for index in todo}
        results = dict(zip(todo, cams.batch([images[i] for i in todo], [keys[i] for i in todo], batch_size)))
        for index in chunk:
            image_id = dataset.items[index].image_id
            if index in results:
                label = pseudo_label(results[index].cams, keys[index], images[index], cams.config)
                write_label_png(label_path(out_dir, image_id), label, num_classes=255)  # palette PNG of the ids
                counts[1] += 1
            else:
                label = read_label(label_path(out_dir, image_id))
                counts[2] += 1
            counts[0] += 1
            truth = dataset.ground_truth(index)
            if truth is not None:
                if truth.shape != label.shape:
                    raise UsageError(f"pseudo-label {label_path(out_dir, image_id)} is {label.shape[1]}x{label.shape[0]} "
                                     f"but its image is {truth.shape[1]}x{truth.shape[0]}; delete the folder and re-run")
                prediction = torch.as_tensor(label, device=dist.device).long()
                target = torch.as_tensor(truth, device=dist.device).long()
                valid = target != IGNORE
                target = torch.where(prediction == IGNORE, torch.full_like(target, IGNORE), target)
                confusion.update(prediction, target, IGNORE)
                counts[3] += 1
                counts[4] += float((target != IGNORE).sum())
                counts[5] += float(valid.sum())
    confusion.all_reduce()
    if dist.distributed:
        torch_dist.all_reduce(counts)
    images, written, skipped, with_truth, labelled, valid = (float(c) for c in counts.cpu())
    metrics = compute_metrics(confusion.matrix, dataset.class_names) if with_truth else None
    return PseudoLabelSummary(int(images), int(written), int(skipped), metrics,
                              labelled / valid if with_truth and valid else None)


def collect_regions(dataset: ImageLabelSet, cams: ClipEsCams, region_cam: str, threshold: float, dist,
                    progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Region embeddings [R, C] (one per present class per image, all ranks gathered) and their classes [R] (0..K-1)."""
    features, labels = [], []
    indices = range(dist.rank, len(dataset), dist.world_size)
    for index in track(indices, len(indices), "region embeddings", enabled=progress and dist.is_main):
        keys = dataset.image_labels(index)
        if not keys:
            continue
        result = cams(dataset.image(index), keys)
        maps = result.patch_cams if region_cam == "refined" else result.gradcams
        embeddings, keep = region_embeddings(result.patch_embeddings, maps, threshold)
        features.append(embeddings[keep].cpu())
        labels.append(torch.tensor(keys, dtype=torch.long)[keep.cpu()] - 1)
    local = (torch.cat(features) if features else torch.zeros(0, cams.foreground.shape[1]),
             torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))
    if not dist.distributed:
        return local

    gathered: list = [None] * dist.world_size
    torch_dist.all_gather_object(gathered, local)
    return torch.cat([g[0] for g in gathered]), torch.cat([g[1] for g in gathered])
