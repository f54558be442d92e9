"""Class-aware attention affinity (CLIP-ES's CAA): refine each class's CAM with the ViT's own attention.

The affinity is the head-averaged attention of the last layers, made doubly stochastic by
alternating column and row normalisation, symmetrised and squared (two propagation steps).
Each class only propagates from inside the bounding boxes of its confident CAM regions.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ovss_cli.wsss.gradcam import minmax


def sinkhorn_normalise(matrix: torch.Tensor, rounds: int = 3) -> torch.Tensor:
    """Alternately divide by column sums, then by row sums, `rounds` times (rows sum to 1 exactly at the end);
    matrix [..., N, N]."""
    for _ in range(rounds):
        matrix = matrix / matrix.sum(dim=-2, keepdim=True)
        matrix = matrix / matrix.sum(dim=-1, keepdim=True)
    return matrix


def attention_affinity(attentions: list[torch.Tensor], num_layers: int = 8, rounds: int = 3) -> torch.Tensor:
    """[..., N, N] float64 affinity from head-averaged attention maps [..., 1 + N, 1 + N] (the last `num_layers` are
    used; a leading batch dimension is kept)."""
    # float64: Sinkhorn, squaring and the min-max after it amplify float32 rounding (1e-7 in the attention became 2e-5
    # in refined CAMs), enough for a batched and a one-image pass to disagree.
    attention = torch.stack([a.double() for a in attentions[-num_layers:]]).mean(dim=0)[..., 1:, 1:]  # no class token
    transition = sinkhorn_normalise(attention, rounds)
    transition = (transition + transition.transpose(-1, -2)) / 2
    return transition @ transition


def box_mask(cam: np.ndarray, threshold: float) -> np.ndarray:
    """bool [h, w]: the bounding boxes of every contour of cam > threshold x max (cam in [0, 1]).

    Follows CLIP-ES's scoremap2bbox: the CAM is quantised to uint8, thresholded with cv2 at
    int(threshold x max), and a box's far corner is clipped to the last row/column before
    exclusive slicing, so a box reaching the right/bottom border stops one patch short
    (kept for parity with the published pseudo-labels).
    """

    height, width = cam.shape
    score = (cam * 255).astype(np.uint8)
    _, binary = cv2.threshold(score, int(threshold * score.max()), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[-2]
    mask = np.zeros((height, width), dtype=bool)
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        mask[y:min(y + h, height - 1), x:min(x + w, width - 1)] = True
    return mask


def refine_cam(affinity: torch.Tensor, cam: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """min-max((A with columns outside `mask` zeroed) @ cam) for a flat cam [N] and a flat bool mask [N]."""
    return refine_cams(affinity, cam[None], mask[None])[0]


def refine_cams(affinity: torch.Tensor, cams: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """`refine_cam` for k maps of one image at once: cams [k, N], masks [k, N] -> [k, N] (one matrix product)."""

    # (A with columns outside m zeroed) @ cam = A @ (m * cam): masking the sources instead of the matrix.
    sources = (cams * masks.to(cams.dtype)).to(affinity.dtype)
    return minmax((affinity @ sources.T).T).to(cams.dtype)
