"""CAT-Seg's training loss: per-class sigmoid binary cross-entropy against one-hot label maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def segmentation_bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, mask_ignore: bool = True
) -> torch.Tensor:
    """Mean per-class BCE-with-logits; logits [B, T, h, w] are bilinearly resized to labels [B, H, W].

    With one-hot targets, BCE summed over classes is sum_k softplus(x_k) - x_label, which avoids
    building the [B, T, H, W] target tensor. mask_ignore=True (ovss default): pixels labelled
    `ignore_index` are left out of the mean. False: the official behaviour, they count with an
    all-zero target. Computed in at least fp32. Labels must be class ids or `ignore_index` (the
    training set checks them when it reads them: a check here would sync with the host every step);
    a batch of ignore pixels only gives a zero loss.
    """
    if labels.shape[0] != logits.shape[0] or labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W] with B={logits.shape[0]}, got {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = F.interpolate(logits.to(torch.promote_types(logits.dtype, torch.float32)), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.long()
        valid = labels != ignore_index
        target_logit = logits.gather(1, labels.masked_fill(~valid, 0)[:, None]).squeeze(1)
        per_pixel = F.softplus(logits).sum(dim=1) - target_logit * valid
        if mask_ignore:
            count = valid.sum() * num_classes
            return (per_pixel * valid).sum() / count.clamp(min=1)  # clamped: all-ignore gives 0, not NaN
        return per_pixel.sum() / per_pixel.new_tensor(per_pixel.numel() * num_classes)
