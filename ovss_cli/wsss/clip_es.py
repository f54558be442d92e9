"""CLIP-ES: per-class CAMs from softmax-GradCAM refined by attention affinity, then pseudo-labels.

For an image with present classes c_1..c_k: one frozen pass of blocks 1..L-1, the last block
re-run with gradient, scores = softmax over [c_1..c_k ; background words] of
logit_scale x cos(mean patch embedding, text), one GradCAM backward per present class, CAA
refinement on the patch grid, bilinear resize to the image. The background score is
(1 - max_k cam_k)^power; the label is the argmax over [background ; classes], optionally after
a dense CRF whose low-confidence pixels become 255.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ovss_cli.data.image_labels import IGNORE
from ovss_cli.wsss.affinity import attention_affinity, box_mask, refine_cams
from ovss_cli.wsss.config import ClipEsConfig
from ovss_cli.wsss.crf import dense_crf
from ovss_cli.wsss.gradcam import batch_softmax_gradcam, batch_softmax_scores


@dataclass
class ImageCams:
    keys: list[int]  # the present classes (1..K), one per map
    cams: torch.Tensor  # [k, H, W] refined CAMs at the image size, in [0, 1]
    patch_cams: torch.Tensor  # [k, N] refined CAMs on the patch grid of the first scale
    gradcams: torch.Tensor  # [k, N] softmax-GradCAMs on that grid
    patch_embeddings: torch.Tensor  # [N, C] patch tokens after ln_post and proj at the first scale
    grid: tuple[int, int]


class ClipEsCams:
    """CAMs of an image's present classes; `foreground` [K, C] rows are text embeddings or VPL prototypes."""

    def __init__(self, backbone, foreground: torch.Tensor, background: torch.Tensor, config: ClipEsConfig):
        config.validate()
        self.backbone = backbone
        self.foreground = F.normalize(foreground.float(), dim=-1).to(backbone.device)
        self.background = F.normalize(background.float(), dim=-1).to(backbone.device)
        self.config = config

    def __call__(self, image: np.ndarray, keys: list[int]) -> ImageCams:
        """CAMs of classes `keys` (1..K) for RGB uint8 `image` [H, W, 3]."""
        return self.batch([image], [keys])[0]

    def batch(self, images: list[np.ndarray], keys: list[list[int]], max_batch: int = 8) -> list[ImageCams]:
        """`self(image, keys)` for many images: those whose resized size is the same go through the network
        together (up to `max_batch` at a time; nothing is padded, so each image's result is its own)."""
        results: list[list] = [[] for _ in images]
        for scale in self.config.scales:
            prepared = {i: self.backbone.prepare_image(image, scale) for i, image in enumerate(images) if keys[i]}
            buckets: dict[tuple, list[int]] = {}
            for i, tensor in prepared.items():
                buckets.setdefault(tuple(tensor.shape), []).append(i)
            for members in buckets.values():
                for start in range(0, len(members), max_batch):
                    chunk = members[start:start + max_batch]
                    tensors = torch.cat([prepared[i] for i in chunk])
                    for i, result in zip(chunk, self._same_size_batch(tensors, [images[i] for i in chunk],
                                                                      [keys[i] for i in chunk])):
                        results[i].append(result)
        output = []
        for image, image_keys, per_scale in zip(images, keys, results):
            if not image_keys:
                height, width = image.shape[:2]
                empty = torch.zeros(0, height, width, device=self.backbone.device)
                output.append(ImageCams([], empty, empty.flatten(1), empty.flatten(1), empty.flatten(1), (0, 0)))
                continue
            cams = torch.stack([r[0] for r in per_scale]).mean(dim=0)
            _, patch_cams, gradcams, embeddings, grid = per_scale[0]
            output.append(ImageCams(list(image_keys), cams, patch_cams, gradcams, embeddings, grid))
        return output

    def _same_size_batch(self, tensors: torch.Tensor, images: list[np.ndarray], keys: list[list[int]]) -> list[tuple]:
        """Per image (CAMs at the image size, refined patch CAMs, GradCAMs, patch embeddings, grid) for same-size
        inputs [B, 3, H, W]: one frozen pass, one last-block graph, one backward per class slot."""

        cfg = self.config
        num_classes, device = self.foreground.shape[0], self.backbone.device
        frozen = self.backbone.frozen_layers_batch(tensors)
        text = torch.cat([self.foreground, self.background])
        allowed = torch.zeros(len(keys), text.shape[0], dtype=torch.bool, device=device)
        allowed[:, num_classes:] = True
        slots = max(len(k) for k in keys)
        # Column of each (image, slot) score; slots an image does not fill repeat its first class (maps dropped).
        columns = torch.tensor([[k[min(c, len(k) - 1)] - 1 for c in range(slots)] for k in keys], device=device)
        allowed.scatter_(1, columns, True)
        with torch.enable_grad():
            last = self.backbone.last_block_batch(frozen.tokens)
            scores = batch_softmax_scores(last.image_embedding, text, allowed, cfg.logit_scale)
            gradcams = batch_softmax_gradcam(last.activation, scores.gather(1, columns)).float()
        affinities = attention_affinity([*frozen.attentions, last.attention], cfg.affinity_layers, cfg.sinkhorn_rounds)
        results = []
        for b, (image, image_keys) in enumerate(zip(images, keys)):
            maps = gradcams[b, :len(image_keys)]
            masks = torch.from_numpy(np.stack([box_mask(cam.reshape(frozen.grid).cpu().numpy(), cfg.box_threshold)
                                               for cam in maps])).to(device).flatten(1)
            patch_cams = refine_cams(affinities[b], maps, masks)
            highres = F.interpolate(patch_cams.reshape(len(image_keys), 1, *frozen.grid), size=image.shape[:2],
                                    mode="bilinear", align_corners=False)[:, 0]
            results.append((highres, patch_cams, maps, last.patch_embeddings[b].detach().float(), frozen.grid))
        return results


def pseudo_label(cams: torch.Tensor, keys: list[int], image: np.ndarray, config: ClipEsConfig) -> np.ndarray:
    """uint8 [H, W] label (0 background, keys, 255 ignore) from CAMs [k, H, W] of classes `keys`."""

    height, width = image.shape[:2]
    if not keys:
        return np.zeros((height, width), dtype=np.uint8)
    background = (1 - cams.max(dim=0).values).clamp_min(0).pow(config.background_power)
    scores = torch.cat([background[None], cams])
    lookup = torch.tensor([0, *keys], device=cams.device)
    if config.crf is None:
        return lookup[scores.argmax(dim=0)].to(torch.uint8).cpu().numpy()
    marginals = dense_crf(image, scores, config.crf)
    confidence, index = marginals.max(dim=0)
    label = lookup[index]
    label[confidence < config.confidence] = IGNORE
    return label.to(torch.uint8).cpu().numpy()
