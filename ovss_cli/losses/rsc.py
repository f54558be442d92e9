"""VPL's regional semantic contrast (RSC), as ovss reconstructs it (VPL's code is not public; docs/wsss.md).

Region embedding of class c in image b: the average of the decoder's (joint-space) features over
the pixels the pseudo-label gives class c (ignore pixels and background excluded). Features live
on the patch grid, so each grid cell weighs by the share of its pixels labelled c: the exact
masked average of the nearest-upsampled features, without upsampling them.
L_RSC = mean over regions of -log softmax_k(cos(r_c, v_k) / tau)[c] over the K foreground prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_regions(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                  ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Region embeddings [R, C] of the foreground classes present in labels [B, H, W] (values 0..num_classes-1,
    0 background, ignore_index ignored), pooled from features [B, C, h, w]; and their classes [R] (1..K)."""
    batch, _, height, width = features.shape
    valid = labels != ignore_index
    one_hot = F.one_hot(torch.where(valid, labels, 0).long(), num_classes).permute(0, 3, 1, 2)
    one_hot = (one_hot * valid[:, None]).to(features.dtype)  # [B, K+1, H, W]
    weights = F.adaptive_avg_pool2d(one_hot, (height, width))[:, 1:]  # share of each cell per foreground class
    mass = weights.sum(dim=(2, 3))  # [B, K]
    pooled = torch.einsum("bkhw,bchw->bkc", weights, features) / mass.clamp_min(1e-12)[..., None]
    present = mass > 0
    classes = torch.arange(1, num_classes, device=labels.device).expand(batch, -1)
    return pooled[present], classes[present]


def rsc_loss(regions: torch.Tensor, classes: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """-log softmax_k(cos(r, v_k) / tau) at each region's class (1..K; prototype k-1), averaged over the regions.
    No regions: 0, still attached to the graph of `regions`."""
    if regions.shape[0] == 0:
        return regions.sum() * 0.0
    logits = F.normalize(regions.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).T / tau
    return F.cross_entropy(logits, classes - 1)
