"""The CAT-Seg decoder: cosine cost volume -> aggregation -> guided upsampling -> per-class logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ovss_cli.decoder.aggregator import AggregatorLayer
from ovss_cli.decoder.class_attention import at_least_fp32
from ovss_cli.decoder.config import DecoderConfig
from ovss_cli.decoder.upsample import GuidedUpsampler

DROPPED_CLASS_LOGIT = -100.0  # logit of classes cut by the pad_len rule (official value)


class CostEmbedding(nn.Conv2d):
    """CAT-Seg's 7x7 conv from the P template channels of the cost volume: [B, T, P, h, w] -> [B, T, h, w, hidden].

    With one template the conv has a single input channel, which convolution kernels run at a
    fraction of the matmul rate; when the unfolded 7x7 patches are no wider than the output they
    cost no more memory, and one matrix product over them gives the same values twice as fast.
    """

    def __init__(self, templates: int, hidden: int) -> None:
        super().__init__(templates, hidden, kernel_size=7, padding=3)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        b, t, p, h, w = cost.shape
        size = self.kernel_size[0]
        if p * size * size > self.out_channels:
            return super().forward(cost.flatten(0, 1)).unflatten(0, (b, t)).permute(0, 1, 3, 4, 2)
        patches = F.unfold(cost.flatten(0, 1), size, padding=size // 2).transpose(1, 2)  # [B*T, h*w, P*7*7]
        return F.linear(patches, self.weight.flatten(1), self.bias).view(b, t, h, w, -1)


class CATSegDecoder(nn.Module):
    """Cost-aggregation decoder on top of dense CLIP features.

    embed_dim: CLIP joint embedding width (512 for ViT-B/16); vision_width: width of the CLIP
    vision blocks (768 for ViT-B/16); num_templates: prompt templates per class (P).
    Set `use_checkpoint = True` to recompute aggregator layers in the backward pass.
    """

    def __init__(self, cfg: DecoderConfig, embed_dim: int, vision_width: int, num_templates: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.pad_len = cfg.pad_len
        self.use_checkpoint = False
        # without gradients (inference), spatial aggregation and upsampling run over this many classes at a time:
        # they treat each class alone, so this bounds memory at 847 classes x all sliding-window views (0 = all)
        self.inference_class_chunk = 64
        self.cost_embed = CostEmbedding(num_templates, cfg.hidden_dim)
        self.appearance_guidance = nn.Sequential(
            nn.Conv2d(embed_dim, cfg.appearance_guidance_dim, kernel_size=3, padding=1), nn.ReLU()
        )
        self.text_guidance = nn.Sequential(nn.Linear(embed_dim, cfg.text_guidance_dim), nn.ReLU())
        self.layers = nn.ModuleList([AggregatorLayer(cfg) for _ in range(cfg.num_layers)])
        self.upsampler = GuidedUpsampler(
            cfg.hidden_dim, vision_width, cfg.decoder_dims, cfg.decoder_guidance_dims, cfg.decoder_guidance_proj_dims
        )

    @staticmethod
    def cost_volume(image_tokens: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [B, T, P, h, w] of [B, C, h, w] tokens and [B, T, P, C] texts, in >= fp32."""
        with torch.autocast(device_type=image_tokens.device.type, enabled=False):
            image = F.normalize(at_least_fp32(image_tokens), dim=1)
            text = F.normalize(at_least_fp32(text_embeddings), dim=-1)
            return torch.einsum("bchw,btpc->btphw", image, text)

    def output_grid(self, h: int, w: int) -> tuple[int, int]:
        scale = 2 ** len(self.upsampler.stages)
        return h * scale, w * scale

    def select_classes(self, cost: torch.Tensor) -> torch.Tensor:
        """Indices [B, pad_len] of each image's classes with the highest max cosine similarity."""
        return cost.flatten(2).amax(dim=-1).topk(self.pad_len, dim=-1, sorted=False).indices

    def forward(
        self, image_tokens: torch.Tensor, text_embeddings: torch.Tensor, guidance: list[torch.Tensor]
    ) -> torch.Tensor:
        """Per-class logits [B, T, 2^n h, 2^n w] (n = upsampling stages, 2 by default).

        image_tokens: [B, C, h, w] dense CLIP image features in the joint space (after ln_post
        and proj, not normalised); they also serve as the appearance guidance.
        text_embeddings: [B or 1, T, P, C] class x template text embeddings (not normalised).
        guidance: [B, vision_width, h, w] outputs of the CLIP blocks in cfg.guidance_layers, in order.
        """
        b, _, h, w = image_tokens.shape
        if text_embeddings.dim() != 4 or text_embeddings.shape[-1] != image_tokens.shape[1]:
            raise ValueError(
                f"text embeddings must be [B, T, P, {image_tokens.shape[1]}], got {tuple(text_embeddings.shape)}"
            )
        if len(guidance) != len(self.upsampler.stages):
            raise ValueError(f"expected {len(self.upsampler.stages)} guidance maps, got {len(guidance)}")
        num_classes = text_embeddings.shape[1]
        text = F.normalize(at_least_fp32(text_embeddings), dim=-1).expand(b, -1, -1, -1)
        cost = self.cost_volume(image_tokens, text)

        kept = None
        if 0 < self.pad_len < num_classes:
            kept = self.select_classes(cost)
            cost = torch.gather(cost, 1, kept[:, :, None, None, None].expand(-1, -1, *cost.shape[2:]))
            text = torch.gather(text, 1, kept[:, :, None, None].expand(-1, -1, *text.shape[2:]))
        t = cost.shape[1]

        # templates averaged on the sphere, as the official text guidance
        text_guidance = self.text_guidance(F.normalize(text.mean(dim=2), dim=-1))
        appearance = self.appearance_guidance(image_tokens).permute(0, 2, 3, 1)
        x = self.cost_embed(cost)

        chunk = t if torch.is_grad_enabled() or not self.inference_class_chunk else self.inference_class_chunk
        for layer in self.layers:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(layer, x, appearance, text_guidance, use_reentrant=False)
            elif chunk < t:  # the spatial part is per class: bounded memory in class chunks, exactly the same
                x = torch.cat([layer.spatial(x[:, i : i + chunk], appearance) for i in range(0, t, chunk)], dim=1)
                x = layer.classes(x, text_guidance)
            else:
                x = layer(x, appearance, text_guidance)

        pieces = [self.upsampler(x[:, i : i + chunk].permute(0, 1, 4, 2, 3).flatten(0, 1), guidance)
                  .view(b, -1, *self.output_grid(h, w)) for i in range(0, t, chunk)]
        logits = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1)
        if kept is None:
            return logits
        full = logits.new_full((b, num_classes, *logits.shape[-2:]), DROPPED_CLASS_LOGIT)
        return full.scatter(1, kept[:, :, None, None].expand_as(logits), logits)
