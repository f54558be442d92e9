"""CAT-Seg: dense CLIP (fine-tuned through `ovss_cli.peft`) + the cost-aggregation decoder.

Training: `model(batch)` returns {'loss': BCE} for a batch {'image': uint8 [B, 3, S, S], 'label': [B, S, S]}.
The training vocabulary's prompts are tokenised once; while any text-side CLIP parameter
trains they are re-encoded every step (with gradients), otherwise encoded once and cached.
Evaluation: the Segmenter protocol (window / image_norm / set_vocabulary / scores). With `finetune.mode:
hclip` this is H-CLIP.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ovss_cli.clip.config import build_dense_clip
from ovss_cli.clip.dense import DenseCLIP, prompt_runs
from ovss_cli.clip.text import TextEncoder
from ovss_cli.data.train_set import train_vocabulary
from ovss_cli.decoder.catseg import CATSegDecoder
from ovss_cli.errors import UsageError
from ovss_cli.losses.segmentation import segmentation_bce_loss
from ovss_cli.peft import apply_finetune

IGNORE_INDEX = 255
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
_EMBEDDING_NAMES = ("positional_embedding", "class_embedding", "padding_token", "padding_guidance")


class CATSegModel(nn.Module):
    method = "catseg"

    def __init__(self, dense: DenseCLIP, text: TextEncoder, finetune_cfg, decoder_cfg, loss_cfg,
                 train_classes: Sequence[str], window: int):
        super().__init__()

        last_guidance = dense.vision_layers - 2  # the last block runs densely and cannot guide
        if max(decoder_cfg.guidance_layers) > last_guidance:
            raise UsageError(f"decoder.guidance_layers {list(decoder_cfg.guidance_layers)}: this CLIP has "
                             f"{dense.vision_layers} vision blocks, so the layers must lie in 0..{last_guidance}")
        self.dense = dense
        self.text = text
        self.finetune = apply_finetune(dense.clip, finetune_cfg)
        self.decoder = CATSegDecoder(decoder_cfg, dense.embed_dim, dense.vision_width, len(text.templates))
        self.guidance_layers = list(decoder_cfg.guidance_layers)
        self.mask_ignore = loss_cfg.ignore == "mask"
        self.window = int(window)
        self.train_classes = list(train_classes)
        self.register_buffer("train_tokens", text.tokens(self.train_classes), persistent=False)
        self.train_text_runs = prompt_runs(self.train_tokens)  # read here, on the host, not every step
        self.text_trainable = any(p.requires_grad for name, p in dense.clip.named_parameters()
                                  if not name.startswith("visual."))
        self._frozen_train_text: torch.Tensor | None = None
        self._vocabulary: tuple[list[str], torch.Tensor] | None = None

    # ----------------------------------------------------------------- shared forward
    def _clip_input(self, images: torch.Tensor) -> torch.Tensor:
        """Resize to CLIP's resolution when it differs from the crop/window (ViT-L: 384 crops, CLIP at 336)."""
        size = self.dense.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        return images

    def logits(self, images: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised images [B, 3, S, S] and text [1 or B, T, P, C] -> logits [B, T, 4h, 4w]."""
        features = self.dense.encode_image_dense(self._clip_input(images), self.guidance_layers)
        return self.decoder(features.tokens, text_embeddings, features.guidance)

    def _training_text(self) -> torch.Tensor:
        if self.text_trainable:
            return self.dense.class_text_embeddings(self.train_tokens, len(self.train_classes), self.train_text_runs)
        if self._frozen_train_text is None or self._frozen_train_text.device != self.train_tokens.device:
            with torch.no_grad():
                self._frozen_train_text = self.dense.class_text_embeddings(
                    self.train_tokens, len(self.train_classes)).float()
        return self._frozen_train_text

    # ----------------------------------------------------------------- training
    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.training_loss(batch)

    def training_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        images = self.dense.norm.normalize(batch["image"].float())
        with self.finetune.scope():
            logits = self.logits(images, self._training_text()[None])
        loss = segmentation_bce_loss(logits, batch["label"], ignore_index=IGNORE_INDEX, mask_ignore=self.mask_ignore)
        return {"loss": loss}

    def param_groups(self, optim) -> list[dict]:
        """AdamW groups: CLIP-side parameters at lr x clip_lr_multiplier; per-kind weight decay (norms, embeddings, biases)."""
        bias_decay = optim.weight_decay if optim.weight_decay_bias is None else optim.weight_decay_bias
        groups: dict[tuple[str, str], dict] = {}
        seen: set[int] = set()
        for module_name, module in self.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if not param.requires_grad or id(param) in seen:
                    continue
                seen.add(id(param))
                side = "clip" if module_name == "dense" or module_name.startswith("dense.") else "decoder"
                if isinstance(module, _NORM_TYPES):
                    kind, decay = "norm", optim.weight_decay_norm
                elif isinstance(module, nn.Embedding) or param_name in _EMBEDDING_NAMES:
                    kind, decay = "embedding", optim.weight_decay_embed
                elif param_name.endswith("bias") and param.ndim == 1:
                    kind, decay = "bias", bias_decay
                else:
                    kind, decay = "weight", optim.weight_decay
                lr = optim.lr * (optim.clip_lr_multiplier if side == "clip" else 1.0)
                group = groups.setdefault((side, kind), {"name": f"{side}/{kind}", "params": [], "lr": lr,
                                                         "weight_decay": decay})
                group["params"].append(param)
        return list(groups.values())

    def enable_activation_checkpointing(self) -> None:
        """Recompute CLIP blocks (both encoders) and aggregator layers in the backward pass.

        Each block's forward is wrapped on the instance, so module names and state-dict keys are unchanged.
        """
        self.decoder.use_checkpoint = True
        for tower in (self.dense.clip.visual.transformer, self.dense.clip.transformer):
            for block in tower.resblocks:
                if "forward" not in block.__dict__:
                    block.forward = functools.partial(_checkpointed, block.forward)

    def train(self, mode: bool = True):
        if mode:
            self._vocabulary = None  # text embeddings change once training starts
        return super().train(mode)

    # ----------------------------------------------------------------- Segmenter protocol
    @property
    def image_norm(self):
        return self.dense.norm

    @torch.no_grad()
    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        names = list(class_names)
        if self._vocabulary is not None and self._vocabulary[0] == names:
            return
        tokens = self.text.tokens(names).to(self.train_tokens.device)
        with self.finetune.scope():
            embeddings = self.dense.class_text_embeddings(tokens, len(names)).float()
        self._vocabulary = (names, embeddings)

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        if self._vocabulary is None:
            raise RuntimeError("call set_vocabulary() before scores()")
        with self.finetune.scope():
            logits = self.logits(images, self._vocabulary[1][None])
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.sigmoid()


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def build_catseg(recipe, pretrained: bool = True) -> CATSegModel:
    """The CAT-Seg model of a recipe; pretrained=False skips loading CLIP weights (a checkpoint will provide them)."""

    dense, text = build_dense_clip(recipe.clip, load_weights=pretrained)
    return CATSegModel(dense, text, recipe.finetune, recipe.decoder, recipe.loss,
                       train_vocabulary(recipe.data.benchmark), window=recipe.data.crop_size)
