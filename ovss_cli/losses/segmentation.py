"""CAT-Seg's training loss: per-class sigmoid binary cross-entropy against one-hot label maps.

With one-hot targets, BCE summed over the classes of a pixel is sum_k softplus(x_k) - x_label, so the
[B, T, H, W] target tensor is never built. Its gradient is sigmoid(x_k) - [k = label], which
`_OneHotBCE` writes in one pass instead of differentiating softplus, the gather and the masks one by one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), with log1p(u) = log(1 + u) * u / ((1 + u) - 1) (Goldberg):
    as accurate as torch's softplus, but built from vectorised exp and log (CPU log1p runs one element
    at a time). Where 1 + u rounds to 1, log1p(u) = u to the last bit."""
    small = x.abs().neg_().exp_()
    one_plus = small + 1
    log1p = one_plus.log().mul_(small)
    rounded = one_plus.sub_(1)
    return torch.where(rounded == 0, small, log1p.div_(rounded)).add_(x.clamp(min=0))


class _OneHotBCE(torch.autograd.Function):
    """sum_p weights[p] * (sum_k softplus(x[k, p]) - valid[p] * x[labels[p], p]) for x: [B, T, H, W]."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        target = x.gather(1, labels[:, None]).squeeze(1)
        ctx.save_for_backward(x, labels, valid, weights)
        return ((softplus(x).sum(dim=1) - target * valid) * weights).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, labels, valid, weights = ctx.saved_tensors
        grad_x = torch.sigmoid(x).scatter_add_(1, labels[:, None], -valid[:, None].to(x.dtype))
        return grad_x.mul_((weights * grad)[:, None]), None, None, None


def segmentation_bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255, mask_ignore: bool = True
) -> torch.Tensor:
    """Mean per-class BCE-with-logits; logits [B, T, h, w] are bilinearly resized to labels [B, H, W].

    mask_ignore=True (ovss default): pixels labelled `ignore_index` are left out of the mean. False: the
    official behaviour, they count with an all-zero target. Computed in at least fp32. Labels must be
    class ids or `ignore_index` (the training set checks them when it reads them: a check here would sync
    with the host every step); a batch of ignore pixels only gives a zero loss.
    """
    if labels.shape[0] != logits.shape[0] or labels.dim() != 3:
        raise ValueError(f"labels must be [B, H, W] with B={logits.shape[0]}, got {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    with torch.autocast(device_type=logits.device.type, enabled=False):
        logits = F.interpolate(logits.to(torch.promote_types(logits.dtype, torch.float32)), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        labels = labels.long()
        valid = labels != ignore_index
        if mask_ignore:  # clamped: all-ignore gives 0, not NaN
            weights = valid.to(logits.dtype) / (valid.sum() * num_classes).clamp(min=1)
        else:
            weights = torch.full_like(logits[:, 0], 1.0 / (valid.numel() * num_classes))
        return _OneHotBCE.apply(logits, labels.masked_fill(~valid, 0), valid, weights)
