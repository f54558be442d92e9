"""VPL's second phase: a segmentation decoder trained on a frozen CLIP from pseudo-labels, with regional
semantic contrast (RSC) against the vision prototypes (a reconstruction: docs/wsss.md).

The CLIP is held outside the module tree: it is in no state_dict (a checkpoint keeps only the
decoder, the prototypes and a fingerprint of the CLIP it was trained on), in no optimizer, and
its features are computed under torch.no_grad. Loading rebuilds the recipe's pretrained CLIP and
refuses one whose fingerprint differs. Training: `model(batch)` -> {'loss', 'ce', 'rsc'} for
{'image': uint8 [B, 3, S, S], 'label': [B, S, S]} (0 background, 1..K, 255 ignore).
Evaluation: the Segmenter protocol (window / image_norm / set_vocabulary / scores) over the classes it
was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ovss_cli.clip.config import build_dense_clip
from ovss_cli.clip.dense import DenseCLIP
from ovss_cli.data.benchmarks import PSEUDO_LABEL_SETS
from ovss_cli.data.train_set import train_vocabulary
from ovss_cli.decoder.fusion import FusionDecoder
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.losses.rsc import label_regions, rsc_loss
from ovss_cli.wsss.names import prompt_names
from ovss_cli.wsss.prototype_store import clip_identity, load_prototypes

IGNORE_INDEX = 255
_NO_DECAY = (nn.LayerNorm,)


def clip_fingerprint(clip_model: nn.Module) -> torch.Tensor:
    """Per-tensor sums and sums of squares of the CLIP image encoder (float64 [2, T]): equal weights, equal print."""
    tensors = [p.detach().double() for p in clip_model.visual.parameters()]
    return torch.stack([torch.stack([t.sum() for t in tensors]), torch.stack([(t * t).sum() for t in tensors])]).cpu()


class VplModel(nn.Module):
    method = "vpl"

    def __init__(self, dense: DenseCLIP, cfg, train_classes: Sequence[str], window: int):
        super().__init__()
        dense.eval().requires_grad_(False)
        object.__setattr__(self, "dense", dense)  # not a submodule: no state_dict entry, no optimizer, no DDP sync
        last = dense.vision_layers - 2  # the last block runs densely (CAT-Seg's form) and is not fused
        self.layers = list(cfg.layers) or list(range(last + 1))
        if max(self.layers) > last:
            raise UsageError(f"vpl.layers {self.layers}: this CLIP has {dense.vision_layers} blocks, so the fused "
                             f"layers must lie in 0..{last}")
        self.train_classes = list(train_classes)
        self.window = int(window)
        self.rsc_weight, self.rsc_tau = float(cfg.rsc_weight), float(cfg.rsc_tau)
        self.head_lr_multiplier = float(cfg.head_lr_multiplier)
        self.decoder = FusionDecoder(dense.vision_width, len(self.layers), cfg.embed_dim, cfg.transformer_layers,
                                     cfg.heads, cfg.dropout, len(self.train_classes),
                                     dense.embed_dim if self.rsc_weight > 0 else None)
        # The prototypes the decoder was trained with, and which CLIP it was trained on: both saved in checkpoints.
        self.register_buffer("prototypes", torch.zeros(len(self.train_classes) - 1, dense.embed_dim))
        self.register_buffer("clip_fingerprint", clip_fingerprint(dense.clip))
        self._vocabulary: list[int] | None = None

    def _apply(self, fn, recurse=True):
        self.dense._apply(fn)  # .to(device) / .float() move the frozen CLIP too
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True):
        super().train(mode)
        self.dense.eval()  # frozen: always in inference mode
        return self

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        stored = state_dict.get("clip_fingerprint")
        if stored is not None and not torch.allclose(stored.double().cpu(), clip_fingerprint(self.dense.clip),
                                                     rtol=1e-6, atol=1e-8):
            raise OvssError("this vpl checkpoint was trained on other CLIP weights than the ones loaded now "
                            "(clip.name / clip.pretrained of its recipe); load it with the same CLIP")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----------------------------------------------------------------- forward
    def _clip_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen CLIP block outputs [B, width, h, w] of CLIP-normalised images, without gradient."""
        size = self.dense.image_size
        if images.shape[-1] != size or images.shape[-2] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return [g.detach() for g in self.dense.encode_image_dense(images, self.layers).guidance]

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.training_loss(batch)

    def training_loss(self, batch: dict) -> dict[str, torch.Tensor]:
        labels = batch["label"].long()
        logits, features = self.decoder(self._clip_features(self.dense.norm.normalize(batch["image"].float())))
        logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
        valid = labels != IGNORE_INDEX
        per_pixel = F.cross_entropy(logits, torch.where(valid, labels, 0), reduction="none")
        ce = (per_pixel * valid).sum() / valid.sum().clamp_min(1)  # all-ignored batches give 0, not NaN
        losses = {"ce": ce}
        loss = ce
        if self.rsc_weight > 0:
            regions, classes = label_regions(self.decoder.region_features(features).float(), labels,
                                             len(self.train_classes), IGNORE_INDEX)
            losses["rsc"] = rsc_loss(regions, classes, self.prototypes, self.rsc_tau)
            loss = loss + self.rsc_weight * losses["rsc"]
        return {"loss": loss, **losses}

    def param_groups(self, optim) -> list[dict]:
        """The decoder at optim.lr x vpl.head_lr_multiplier; norms and biases at their own weight decay."""
        lr = optim.lr * self.head_lr_multiplier
        bias_decay = optim.weight_decay if optim.weight_decay_bias is None else optim.weight_decay_bias
        groups: dict[str, dict] = {}
        for module in self.decoder.modules():
            for name, param in module.named_parameters(recurse=False):
                if isinstance(module, _NO_DECAY):
                    kind, decay = "norm", optim.weight_decay_norm
                elif name.endswith("bias") and param.ndim == 1:
                    kind, decay = "bias", bias_decay
                else:
                    kind, decay = "weight", optim.weight_decay
                group = groups.setdefault(kind, {"name": f"decoder/{kind}", "params": [], "lr": lr,
                                                 "weight_decay": decay})
                group["params"].append(param)
        return list(groups.values())

    def enable_activation_checkpointing(self) -> None:
        """Nothing to recompute: the frozen CLIP keeps no activations for the backward pass."""

    # ----------------------------------------------------------------- Segmenter protocol
    @property
    def image_norm(self):
        return self.dense.norm

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        unknown = [name for name in class_names if name not in self.train_classes]
        if unknown:
            raise UsageError(f"a vpl model segments the {len(self.train_classes)} classes it was trained on "
                             f"({', '.join(self.train_classes[:4])}, ...); '{unknown[0]}' is not one of them")
        self._vocabulary = [self.train_classes.index(name) for name in class_names]

    @torch.no_grad()
    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities [B, T, H, W] of the vocabulary's classes (renormalised over them)."""
        if self._vocabulary is None:
            raise RuntimeError("call set_vocabulary() before scores()")
        logits, _ = self.decoder(self._clip_features(images))
        logits = F.interpolate(logits.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
        probabilities = logits.softmax(dim=1)[:, self._vocabulary]
        return probabilities / probabilities.sum(dim=1, keepdim=True).clamp_min(1e-12)


def build_vpl(recipe, pretrained: bool = True) -> VplModel:
    """The vpl model of a recipe (CPU, training mode); pretrained=False: random CLIP weights (dry runs, exports)."""
    dense, _ = build_dense_clip(recipe.clip, load_weights=pretrained)
    if recipe.data.benchmark not in PSEUDO_LABEL_SETS:
        raise UsageError(f"method vpl trains on pseudo-labels: data.benchmark must be one of "
                         f"{', '.join(PSEUDO_LABEL_SETS)}, not '{recipe.data.benchmark}'")
    return VplModel(dense, recipe.vpl, train_vocabulary(recipe.data.benchmark), window=recipe.data.crop_size)


def load_training_prototypes(recipe, model: VplModel) -> None:
    """Fill the model's prototypes from vpl.prototypes, checked against the recipe's CLIP and classes."""
    if model.rsc_weight == 0:
        return
    if not recipe.vpl.prototypes:
        raise UsageError("vpl.rsc_weight > 0 needs the vision prototypes: pass --prototypes FILE (written by "
                         "`ovss prototypes`) or set vpl.prototypes, or train without RSC: vpl.rsc_weight=0")
    dataset = PSEUDO_LABEL_SETS[recipe.data.benchmark]
    identity = clip_identity(recipe.clip)
    prototypes, _ = load_prototypes(Path(recipe.vpl.prototypes).expanduser(), identity, prompt_names(dataset))
    with torch.no_grad():
        model.prototypes.copy_(prototypes.to(model.prototypes))
