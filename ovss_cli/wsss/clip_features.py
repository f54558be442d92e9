"""Frozen open_clip ViT for CLIP-ES: images at their own size, per-layer attention maps, a differentiable last block.

Blocks 1..L-1 run without gradient and return their head-averaged attention; only the last
block is re-run inside autograd, so GradCAM's backward passes cost one block each. The block
maths replicates open_clip's `ResidualAttentionBlock.forward` (ln_1 -> attention -> ls_1 ->
residual -> ln_2 -> MLP -> ls_2 -> residual) with `need_weights=True`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ovss_cli.clip.dense import resize_pos_embed
from ovss_cli.clip.zoo import image_norm

POS_INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass
class FrozenPass:
    tokens: torch.Tensor  # [1 + N, width] input of the last block (no gradient); [B, 1 + N, width] for a batch
    attentions: list[torch.Tensor]  # head-averaged [1 + N, 1 + N] ([B, 1 + N, 1 + N]) of blocks 1..L-1
    grid: tuple[int, int]  # patch grid (h, w), N = h * w


@dataclass
class LastBlockPass:
    activation: torch.Tensor  # ln_1 output [B, 1 + N, width]: GradCAM's target layer, an autograd leaf (B = 1 alone)
    attention: torch.Tensor  # head-averaged [1 + N, 1 + N] ([B, 1 + N, 1 + N] for a batch), detached
    patch_embeddings: torch.Tensor  # [N, C] ([B, N, C]) patch tokens after ln_post and proj (joint space), in the graph
    image_embedding: torch.Tensor  # [C] ([B, C]) mean of the patch embeddings, in the graph


def block_after_ln1(block: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of an open_clip residual block given its input x and ln_1 output y [B, L, D]:
    (output, head-averaged attention [B, L, L])."""
    attended, weights = block.attn(y, y, y, need_weights=True, average_attn_weights=True)
    x = x + block.ls_1(attended)
    return x + block.ls_2(block.mlp(block.ln_2(x))), weights


class ClipEsBackbone(nn.Module):
    """An open_clip ViT CLIP used frozen, at each image's own (patch-multiple) size."""

    def __init__(self, clip_model: nn.Module, pos_interpolation: str = "bilinear"):
        super().__init__()
        visual = clip_model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1") or visual.proj is None:
            raise TypeError("CLIP-ES needs an open_clip ViT CLIP with a projection (`visual.proj`)")
        if pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"pos_interpolation must be one of {POS_INTERPOLATIONS}")
        self.clip = clip_model.eval().requires_grad_(False)
        self.norm = image_norm(clip_model)
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.native_grid = tuple(int(g) for g in visual.grid_size)
        self.pos_interpolation = pos_interpolation

    @property
    def num_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    @property
    def device(self) -> torch.device:
        return self.clip.visual.conv1.weight.device

    def prepare_image(self, image: np.ndarray, scale: float = 1.0) -> torch.Tensor:
        """RGB uint8 [H, W, 3] -> CLIP-normalised [1, 3, H', W'], resized with CLIP's interpolation (PIL; bicubic
        for OpenAI CLIP, as CLIP-ES) to H' = ceil(scale * H / patch) * patch (the same for W)."""

        height, width = image.shape[:2]
        size = tuple(int(math.ceil(scale * s / self.patch_size)) * self.patch_size for s in (width, height))
        resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[self.norm.interpolation]
        resized = np.array(Image.fromarray(image).resize(size, resample)) if size != (width, height) else image
        return self.norm.to_tensor(resized, self.device).unsqueeze(0)

    def frozen_layers(self, images: torch.Tensor) -> FrozenPass:
        """Blocks 1..L-1 on one image [1, 3, H, W]: the last block's input and every block's attention."""
        batch = self.frozen_layers_batch(images)
        return FrozenPass(tokens=batch.tokens[0], attentions=[a[0] for a in batch.attentions], grid=batch.grid)

    @torch.no_grad()
    def frozen_layers_batch(self, images: torch.Tensor) -> FrozenPass:
        """Blocks 1..L-1 on same-size images [B, 3, H, W] (images never mix: attention is within each image)."""
        visual = self.clip.visual
        x = visual.conv1(images)
        grid = (int(x.shape[-2]), int(x.shape[-1]))
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1), x], dim=1)
        pos = resize_pos_embed(visual.positional_embedding, grid, self.native_grid, self.pos_interpolation)
        x = visual.ln_pre(x + pos.to(x.dtype))
        attentions = []
        for block in visual.transformer.resblocks[:-1]:
            x, weights = block_after_ln1(block, x, block.ln_1(x))
            attentions.append(weights)
        return FrozenPass(tokens=x, attentions=attentions, grid=grid)

    def last_block(self, tokens: torch.Tensor) -> LastBlockPass:
        """The last block on the frozen tokens [1 + N, width], inside autograd (call under enable_grad)."""
        batch = self.last_block_batch(tokens.unsqueeze(0))
        return LastBlockPass(activation=batch.activation, attention=batch.attention[0],
                             patch_embeddings=batch.patch_embeddings[0], image_embedding=batch.image_embedding[0])

    def last_block_batch(self, tokens: torch.Tensor) -> LastBlockPass:
        """The last block on frozen tokens [B, 1 + N, width], inside autograd (call under enable_grad)."""
        visual = self.clip.visual
        block, x = visual.transformer.resblocks[-1], tokens
        # The frozen weights and input leave ln_1's output outside autograd: make it the leaf GradCAM differentiates.
        activation = block.ln_1(x).detach().requires_grad_(True)
        out, weights = block_after_ln1(block, x, activation)
        patches = visual.ln_post(out[:, 1:]) @ visual.proj
        return LastBlockPass(activation=activation, attention=weights.detach(), patch_embeddings=patches,
                             image_embedding=patches.mean(dim=1))
