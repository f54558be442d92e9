"""InfoCLIP: CAT-Seg trained with information-theoretic alignment transfer from the frozen pretrained CLIP.

Training (`model(batch)`): the CAT-Seg student (fine-tuned CLIP + decoder) gives the task loss
and its dense tokens D_V^S and class text embeddings D_L^S; a frozen copy of the pretrained CLIP
(the teacher, eval mode, no_grad) encodes the same crop into D_V^T and D_L^T. One LPAM, shared by
both, maps each pair to an alignment map (R^T, R^S) and

    loss = L_task + λ1 L_c(G_V^T, G_L^T, G_{R^T}) + λ2 L_d(G_{R^T}, G_{R^S})

with the Gram matrices of `ovss_cli.losses`. R^T is not detached by default, so LPAM learns from
both losses while the teacher's weights never change.

Evaluation and inference are plain CAT-Seg (the inherited Segmenter protocol): the teacher and
LPAM are never run. Checkpoints never contain the teacher (it is the pretrained CLIP the recipe
names and is rebuilt from it on resume); they hold LPAM's `lpam.*` tensors (2d² + 6d values), the
only keys beyond a CAT-Seg checkpoint of the same recipe: without them it is a CAT-Seg state dict.
A model built without pretrained weights (to load a checkpoint for inference) has no teacher.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F

from ovss_cli.clip.config import build_dense_clip
from ovss_cli.clip.dense import DenseCLIP
from ovss_cli.clip.text import TextEncoder
from ovss_cli.data.train_set import train_vocabulary
from ovss_cli.errors import OvssError
from ovss_cli.losses.alignment_transfer import alignment_transfer_losses
from ovss_cli.losses.segmentation import segmentation_bce_loss
from ovss_cli.methods.catseg import IGNORE_INDEX, CATSegModel
from ovss_cli.methods.infoclip_config import InfoClipConfig
from ovss_cli.methods.lpam import PixelTextAlignment

TEACHER = "teacher"


def patch_embeddings(tokens: torch.Tensor) -> torch.Tensor:
    """Dense tokens [B, C, h, w] -> L2-normalised patch embeddings D_V [B, hw, C]."""
    return F.normalize(tokens.flatten(2).transpose(1, 2), dim=-1)


def class_embeddings(text: torch.Tensor) -> torch.Tensor:
    """Class text [T, P, C] -> D_L [T, C]: templates normalised, averaged and normalised again."""
    return F.normalize(F.normalize(text, dim=-1).mean(dim=1), dim=-1)


class InfoCLIPModel(CATSegModel):
    method = "infoclip"

    def __init__(self, dense: DenseCLIP, text: TextEncoder, finetune_cfg, decoder_cfg, loss_cfg,
                 train_classes: Sequence[str], window: int, infoclip_cfg: InfoClipConfig,
                 teacher: DenseCLIP | None):
        super().__init__(dense, text, finetune_cfg, decoder_cfg, loss_cfg, train_classes, window)
        self.cfg = infoclip_cfg
        self.lpam = PixelTextAlignment(dense.embed_dim)
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self._teacher_text: torch.Tensor | None = None
        # the teacher is the pretrained CLIP the recipe names: never written to, nor expected in, checkpoints
        self.register_state_dict_post_hook(_drop_teacher_keys)
        self.register_load_state_dict_post_hook(_forgive_missing_teacher_keys)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: its mode never follows the student's
        return self

    # ----------------------------------------------------------------- teacher
    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D_V^T [B, hw, C] of the crop and D_L^T [T, C] of the training vocabulary (encoded once)."""
        if self.teacher is None:
            raise OvssError("InfoCLIP training needs the frozen pretrained teacher, but this model was built "
                            "without pretrained weights (for inference); build it with pretrained weights to train")
        if self._teacher_text is None or self._teacher_text.device != self.train_tokens.device:
            text = self.teacher.class_text_embeddings(self.train_tokens, len(self.train_classes)).float()
            self._teacher_text = class_embeddings(text)
        tokens = self.teacher.encode_image_dense(self._clip_input(images)).tokens
        return patch_embeddings(tokens), self._teacher_text

    # ----------------------------------------------------------------- training
    def training_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images = self.dense.norm.normalize(batch["image"].float())
        teacher_patches, teacher_text = self.teacher_features(images)  # the same crop as the student
        with self.finetune.scope():
            text = self._training_text()
            features = self.dense.encode_image_dense(self._clip_input(images), self.guidance_layers)
            logits = self.decoder(features.tokens, text[None], features.guidance)
        task = segmentation_bce_loss(logits, batch["label"], ignore_index=IGNORE_INDEX, mask_ignore=self.mask_ignore)
        relation_t = self.lpam(teacher_patches, teacher_text)
        relation_s = self.lpam(patch_embeddings(features.tokens), class_embeddings(text))
        compression, distill = alignment_transfer_losses(
            teacher_patches, teacher_text, relation_t, relation_s, axis=self.cfg.gram_axis, alpha=self.cfg.alpha,
            eps=self.cfg.eps, detach_teacher=self.cfg.teacher_detach)
        loss = task + self.cfg.lambda_compression * compression + self.cfg.lambda_distill * distill
        return {"loss": loss, "loss_task": task.detach(), "loss_compression": compression.detach(),
                "loss_distill": distill.detach()}


def _drop_teacher_keys(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}{TEACHER}.")]:
        del state_dict[key]


def _forgive_missing_teacher_keys(module, incompatible_keys) -> None:
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if TEACHER not in key.split(".")]


def build_infoclip(recipe, pretrained: bool = True) -> InfoCLIPModel:
    """The InfoCLIP model of a recipe. pretrained=False skips loading CLIP weights and builds no teacher
    (a checkpoint provides the student; such a model evaluates and predicts but cannot train)."""

    recipe.infoclip.check_global_batch(recipe.data.batch_size, recipe.optim.accumulate_steps)
    dense, text = build_dense_clip(recipe.clip, load_weights=pretrained)
    teacher = copy.deepcopy(dense) if pretrained else None  # copied before fine-tuning adapters are attached
    return InfoCLIPModel(dense, text, recipe.finetune, recipe.decoder, recipe.loss,
                         train_vocabulary(recipe.data.benchmark), window=recipe.data.crop_size,
                         infoclip_cfg=recipe.infoclip, teacher=teacher)
