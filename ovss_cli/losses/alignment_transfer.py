"""InfoCLIP's two objectives on pixel-text alignment maps, over a chosen Gram axis.

Inputs (per training micro-batch on this rank):
    patches   [B, HW, d]        teacher dense image embeddings D_V
    text      [N_C, d]          teacher class text embeddings D_L, shared by every image
              or [B, N_C, d]    one vocabulary per image
    teacher   [B, N_C, HW]      R^T = LPAM(teacher features)
    student   [B, N_C, HW]      R^S = LPAM(student features)

Gram axes:
    batch  one B×B Gram per view over the GLOBAL batch (items gathered from every rank); an item
           is the whole flattened, L2-normalised map (r = vec(S)/||vec(S)||). A vocabulary shared by
           all images gives an all-ones text Gram, so L_c reduces to S(R) − S(V∘R).
    patch  per image, HW×HW over patches: patch features and the rows of R (one N_C-vector per
           patch); the text does not vary over patches and drops out.
    class  per image, N_C×N_C over classes: text embeddings and the columns of R (one HW-vector
           per class); the image does not vary over classes and drops out.
Per-image losses are averaged over the local batch (DDP then averages over ranks).
"""

from __future__ import annotations

from typing import Literal

import torch

from ovss_cli.losses.matrix_entropy import (
    EPS,
    batched_gram,
    compression_loss,
    global_batch_gram,
    gram,
    mi_distillation_loss,
)

GramAxis = Literal["batch", "patch", "class"]
GRAM_AXES = ("batch", "patch", "class")


def alignment_transfer_losses(patches: torch.Tensor, text: torch.Tensor, teacher: torch.Tensor,
                              student: torch.Tensor, axis: GramAxis = "batch", alpha: float = 2.0,
                              eps: float = EPS, detach_teacher: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_c, L_d): compression of the teacher's alignment and −I(R^T; R^S), both in bits.

    detach_teacher: R^T enters L_d as a fixed target (its Gram detached); L_c still reaches it.
    """
    if axis == "batch":
        g_v = global_batch_gram(patches, eps)
        g_l = global_batch_gram(text, eps) if text.dim() == 3 else None
        g_t, g_s = global_batch_gram(teacher, eps), global_batch_gram(student, eps)
    elif axis == "patch":
        g_v, g_l = batched_gram(patches, eps), None
        g_t, g_s = batched_gram(teacher.transpose(1, 2), eps), batched_gram(student.transpose(1, 2), eps)
    elif axis == "class":
        g_v = None
        g_l = batched_gram(text, eps) if text.dim() == 3 else gram(text, eps)
        g_t, g_s = batched_gram(teacher, eps), batched_gram(student, eps)
    else:
        raise ValueError(f"unknown Gram axis '{axis}'; use one of {', '.join(GRAM_AXES)}")
    compression = compression_loss(g_v, g_l, g_t, alpha, eps).mean()
    distillation = mi_distillation_loss(g_t.detach() if detach_teacher else g_t, g_s, alpha, eps).mean()
    return compression, distillation
