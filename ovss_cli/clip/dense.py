"""Dense CLIP: patch features from CAT-Seg's dense last block, guidance features and fast text encoding.

Wraps an open_clip `CLIP` without changing its modules, so fine-tuning adapters
(parametrizations and hooks on the blocks, see `ovss_cli.peft`) apply in every path here
and the weights stay loadable by plain open_clip.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from ovss_cli.clip.zoo import image_norm, uses_quick_gelu


@dataclass
class DenseFeatures:
    tokens: torch.Tensor  # [B, C, h, w] patch embeddings in the joint image-text space (not normalised)
    cls: torch.Tensor  # [B, C] the class token, same space
    guidance: list[torch.Tensor]  # [B, width, h, w] outputs of the requested vision blocks


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int],
                     mode: str = "bicubic") -> torch.Tensor:
    """Resize [1 + H*W, D] positional embeddings to a new grid (CAT-Seg: bicubic; CLIP-ES: bilinear); the class slot is kept."""
    if tuple(grid) == tuple(old_grid):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    dim = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos.float(), size=grid, mode=mode, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=0)


MAX_PROMPT_RUNS = 4  # length groups per text-encoder call: fewer padded tokens, still large matrix products


def prompt_runs(token_ids: torch.Tensor, chunk: int = 1024) -> list[tuple[int, int, int]]:
    """(start, stop, length) runs over the prompts sorted by length: each run goes through the text
    transformer only up to its own longest end token (open_clip pools at the largest token id).
    At most MAX_PROMPT_RUNS lengths, chosen to pad the fewest tokens; runs hold at most `chunk` prompts."""
    lengths = sorted((token_ids.argmax(dim=-1) + 1).tolist())
    values = sorted(set(lengths))
    below = [bisect.bisect_left(lengths, v) for v in values] + [len(lengths)]  # prompts shorter than each value
    # best[k][j]: fewest tokens for the first j lengths in k runs; cut[k][j]: where the last run starts
    best = [[0] + [float("inf")] * len(values) for _ in range(MAX_PROMPT_RUNS + 1)]
    cut = [[0] * (len(values) + 1) for _ in range(MAX_PROMPT_RUNS + 1)]
    for k in range(1, MAX_PROMPT_RUNS + 1):
        for j in range(1, len(values) + 1):
            for i in range(j):
                tokens = best[k - 1][i] + values[j - 1] * (below[j] - below[i])
                if tokens < best[k][j]:
                    best[k][j], cut[k][j] = tokens, i
    bounds, j = [], len(values)
    for k in range(MAX_PROMPT_RUNS, 0, -1):
        if j == 0:
            break
        bounds.append((cut[k][j], j))
        j = cut[k][j]
    runs = []
    for first, last in reversed(bounds):
        start, stop = below[first], below[last]
        runs += [(i, min(i + chunk, stop), values[last - 1]) for i in range(start, stop, chunk)]
    return runs


class DenseCLIP(nn.Module):
    """open_clip CLIP with dense (per-patch) image features at any input size.

    `image_size` is the training/inference resolution: the positional embeddings are resized
    to its patch grid once here (as CAT-Seg does); other sizes are resized on the fly.
    `norm` is how images must be normalised for these weights (from the model's preprocess config).
    """

    def __init__(self, clip_model: nn.Module, image_size: int):
        super().__init__()
        visual = clip_model.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
            raise TypeError("DenseCLIP needs an open_clip ViT CLIP (a `visual.transformer` with `conv1`)")
        self.clip = clip_model
        self.norm = image_norm(clip_model)
        self.patch_size = int(visual.conv1.kernel_size[0])
        self.image_size = int(image_size)
        old_grid = tuple(int(g) for g in visual.grid_size)
        grid = (self.image_size // self.patch_size,) * 2
        with torch.no_grad():
            resized = resize_pos_embed(visual.positional_embedding.data, grid, old_grid)
        visual.positional_embedding = nn.Parameter(resized, requires_grad=visual.positional_embedding.requires_grad)
        visual.grid_size = grid
        visual.image_size = (self.image_size, self.image_size)
        self.grid = grid

    @property
    def quick_gelu(self) -> bool:
        return uses_quick_gelu(self.clip)

    @property
    def embed_dim(self) -> int:
        return int(self.clip.visual.proj.shape[1])

    @property
    def vision_width(self) -> int:
        return int(self.clip.visual.conv1.out_channels)

    @property
    def vision_layers(self) -> int:
        return len(self.clip.visual.transformer.resblocks)

    # ----------------------------------------------------------------- image side
    def _embed_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        visual = self.clip.visual
        x = visual.conv1(images)  # [B, width, gh, gw]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_pos_embed(visual.positional_embedding, grid, self.grid).to(x.dtype)
        return visual.ln_pre(x), grid

    @staticmethod
    def _dense_last_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """CAT-Seg's last block: no token mixing; each token gets out_proj(v_proj(ln_1(x))) plus the input CLS token.

        The attention module is called with a mask that lets every token attend only to itself,
        which computes exactly out_proj(v_proj(.)) while keeping adapters on `attn` in effect.
        """
        n = x.shape[1]
        positions = torch.arange(n, device=x.device)
        eye = positions[:, None] == positions[None, :]  # (not torch.eye: exports to plain ONNX ops)
        self_only = torch.zeros((n, n), device=x.device, dtype=x.dtype).masked_fill(~eye, float("-inf"))
        y = block.ln_1(x)
        attn = block.attn(y, y, y, need_weights=False, attn_mask=self_only)[0]
        v = block.ls_1(attn) + x[:, :1]
        return v + block.ls_2(block.mlp(block.ln_2(v)))

    def encode_image_dense(self, images: torch.Tensor, guidance_layers: tuple[int, ...] | list[int] = ()) -> DenseFeatures:
        """Dense features of `images` [B, 3, H, W] (CLIP-normalised); H, W multiples of the patch size."""
        visual = self.clip.visual
        x, grid = self._embed_patches(images)
        blocks = visual.transformer.resblocks
        wanted = set(guidance_layers)
        if wanted and (min(wanted) < 0 or max(wanted) >= len(blocks) - 1):
            raise ValueError(f"guidance layers {sorted(wanted)} must lie in [0, {len(blocks) - 2}]")
        guidance = {}
        for index, block in enumerate(blocks[:-1]):
            x = block(x)
            if index in wanted:
                guidance[index] = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        x = self._dense_last_block(blocks[-1], x)
        x = visual.ln_post(x) @ visual.proj
        tokens = x[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
        return DenseFeatures(tokens=tokens, cls=x[:, 0], guidance=[guidance[i] for i in guidance_layers])

    # ----------------------------------------------------------------- text side
    def encode_text(self, token_ids: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """open_clip's encode_text, run only up to the longest prompt's end token (or `length` tokens).

        The text transformer is causal and pools at the end token, so positions after the
        longest prompt cannot influence any output: the result equals the full-length one.
        """
        clip = self.clip
        eot = token_ids.argmax(dim=-1)
        length = int(eot.max()) + 1 if length is None else length
        x = clip.token_embedding(token_ids[:, :length])
        x = x + clip.positional_embedding[:length].to(x.dtype)
        mask = clip.attn_mask[:length, :length] if clip.attn_mask is not None else None
        *blocks, last = clip.transformer.resblocks
        for block in blocks:
            x = block(x, attn_mask=mask)
        if isinstance(last, ResidualAttentionBlock) and isinstance(last.attn, nn.MultiheadAttention):
            pooled = self._pooled_last_block(last, x, eot, mask)
        else:
            pooled = last(x, attn_mask=mask)[torch.arange(x.shape[0], device=x.device), eot]
        return clip.ln_final(pooled) @ clip.text_projection

    @staticmethod
    def _pooled_last_block(block: nn.Module, x: torch.Tensor, eot: torch.Tensor,
                           mask: torch.Tensor | None) -> torch.Tensor:
        """The last text block at the end tokens only, the one output per prompt CLIP pools: [N, L, D] -> [N, D].

        Keys and values still come from every token; the query, residuals and MLP are computed for one
        token per prompt instead of L. block.attn and block.mlp are called, so adapters and
        parametrised weights stay in effect.
        """
        rows = torch.arange(x.shape[0], device=x.device)
        normed = block.ln_1(x)
        query = normed[rows, eot][:, None]
        row_mask = None
        if mask is not None:  # each end token's row of the causal mask, repeated per head
            heads = block.attn.num_heads
            row_mask = mask[eot][:, None, None].expand(-1, heads, -1, -1).flatten(0, 1).to(x.dtype)
        attended = block.attn(query, normed, normed, need_weights=False, attn_mask=row_mask)[0][:, 0]
        h = x[rows, eot] + block.ls_1(attended)
        return h + block.ls_2(block.mlp(block.ln_2(h)))

    def class_text_embeddings(self, token_ids: torch.Tensor, num_classes: int,
                              runs: list[tuple[int, int, int]] | None = None) -> torch.Tensor:
        """Encode class-major prompts [T*P, ctx] into [T, P, C] (not normalised), in runs of similar length.
        `runs` (`prompt_runs(token_ids)`, read on the host once per prompt set) spares reading it from the device."""
        runs = prompt_runs(token_ids) if runs is None else runs
        order = torch.argsort(token_ids.argmax(dim=-1), stable=True)  # on the device: the runs index this order
        ordered = token_ids.index_select(0, order)
        encoded = torch.cat([self.encode_text(ordered[start:stop], length) for start, stop, length in runs])
        embeddings = encoded.index_select(0, torch.argsort(order))
        return embeddings.reshape(num_classes, -1, embeddings.shape[-1])
