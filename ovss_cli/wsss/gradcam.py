"""Softmax-GradCAM (CLIP-ES): GradCAM of each present class's softmax score against [classes ; background words].

The softmax makes the background words and the other present classes compete, so a class's
map loses the regions that another word explains better.
"""

from __future__ import annotations

import torch


def minmax(values: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """(v - min) / (eps + max(v - min)) over the last dimension, as CLIP-ES scales every CAM."""
    shifted = values - values.min(dim=-1, keepdim=True).values
    return shifted / (eps + shifted.max(dim=-1, keepdim=True).values)


def softmax_scores(image_embedding: torch.Tensor, text: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """softmax over the M rows of `text` [M, C] (unit rows) of logit_scale x cos(image, row)."""
    image = image_embedding / image_embedding.norm()
    return torch.softmax(logit_scale * (text @ image), dim=0)


def gradcam_weights(gradient: torch.Tensor) -> torch.Tensor:
    """Channel weights [..., D] of GradCAM: the spatial mean of the gradient [..., N, D]."""
    return gradient.mean(dim=-2)


def gradcam_map(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """min-max(min-max(ReLU(sum_d w_d A[:, d]))) over the N positions of activation/gradient [N, D] (or batched
    [..., N, D]).

    Scaled twice as official CLIP-ES does (pytorch_grad_cam scales each layer's map, then the
    layer mean again): the second pass divides by 1e-7 + (a peak just under 1), so the maps peak
    at 1 to float32 rounding whatever the raw maximum, where one pass would peak at m / (m + 1e-7)
    (0.91 for m = 1e-6) and move the box thresholds.
    """
    return minmax(minmax(torch.relu(activation @ gradcam_weights(gradient)[..., None])[..., 0]))


def batch_softmax_scores(image_embeddings: torch.Tensor, text: torch.Tensor, allowed: torch.Tensor,
                         logit_scale: float) -> torch.Tensor:
    """`softmax_scores` for B images [B, C] at once, each over its own rows of `text` [M, C]: allowed [B, M] bool
    (an image's present classes and the background words); other rows get probability 0."""
    images = image_embeddings / image_embeddings.norm(dim=-1, keepdim=True)
    logits = (logit_scale * (images @ text.T)).masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1)


def batch_softmax_gradcam(activation: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """GradCAMs [B, k, N] of targets [B, k] (target (b, c) a function of image b only) at activation [B, 1 + N, D].

    Images never mix in the forward pass, so the gradient of sum_b targets[b, c] with respect to
    image b's activation is that of targets[b, c] alone: one backward per class slot c serves the
    whole batch (k backwards, not B x k). Slots an image does not fill can hold any target; their
    maps are simply ignored.
    """
    patches = activation[:, 1:].detach()
    slots = targets.shape[1]
    cams = []
    for c in range(slots):
        (gradient,) = torch.autograd.grad(targets[:, c].sum(), activation, retain_graph=c < slots - 1)
        cams.append(gradcam_map(patches, gradient[:, 1:]))
    return torch.stack(cams, dim=1)


def softmax_gradcam(activation: torch.Tensor, scores: torch.Tensor, num_targets: int) -> torch.Tensor:
    """GradCAMs [num_targets, N] of scores[0..num_targets-1] at `activation` [1, 1 + N, D] (an autograd leaf).

    One backward per target through the graph built once; the class token (position 0) is dropped.
    """
    return batch_softmax_gradcam(activation, scores[None, :num_targets])[0]
