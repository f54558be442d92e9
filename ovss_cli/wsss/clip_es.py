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
from ovss_cli.wsss.config import ClipEsConfig


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
        height, width = image.shape[:2]
        if not keys:
            empty = torch.zeros(0, height, width, device=self.backbone.device)
            return ImageCams([], empty, empty.flatten(1), empty.flatten(1), empty.flatten(1), (0, 0))
        results = [self._single_scale(image, keys, scale) for scale in self.config.scales]
        cams = torch.stack([r[0] for r in results]).mean(dim=0)
        _, patch_cams, gradcams, embeddings, grid = results[0]
        return ImageCams(list(keys), cams, patch_cams, gradcams, embeddings, grid)

    def _single_scale(self, image: np.ndarray, keys: list[int], scale: float):
        from ovss_cli.wsss.affinity import attention_affinity, box_mask, refine_cam
        from ovss_cli.wsss.gradcam import softmax_gradcam, softmax_scores

        cfg = self.config
        frozen = self.backbone.frozen_layers(self.backbone.prepare_image(image, scale))
        text = torch.cat([self.foreground[[k - 1 for k in keys]], self.background])
        with torch.enable_grad():
            last = self.backbone.last_block(frozen.tokens)
            scores = softmax_scores(last.image_embedding, text, cfg.logit_scale)
            gradcams = softmax_gradcam(last.activation, scores, len(keys)).float()
        affinity = attention_affinity([*frozen.attentions, last.attention], cfg.affinity_layers, cfg.sinkhorn_rounds)
        refined = []
        for cam in gradcams:
            mask = box_mask(cam.reshape(frozen.grid).cpu().numpy(), cfg.box_threshold)
            refined.append(refine_cam(affinity, cam, torch.from_numpy(mask).to(cam.device).flatten()))
        patch_cams = torch.stack(refined)
        highres = F.interpolate(patch_cams.reshape(len(keys), 1, *frozen.grid), size=image.shape[:2],
                                mode="bilinear", align_corners=False)[:, 0]
        return highres, patch_cams, gradcams, last.patch_embeddings.detach().float(), frozen.grid


def pseudo_label(cams: torch.Tensor, keys: list[int], image: np.ndarray, config: ClipEsConfig) -> np.ndarray:
    """uint8 [H, W] label (0 background, keys, 255 ignore) from CAMs [k, H, W] of classes `keys`."""
    from ovss_cli.wsss.crf import dense_crf

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
