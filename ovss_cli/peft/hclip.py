"""H-CLIP: POP (partial orthogonal block-diagonal transforms) + DCRC on both CLIP encoders.

Layout (as released): one tensor `pop` [q, q, 4L, b_text + b_vision], L = max(text, vision
layers). Slice 4l + p holds projection p (0 q, 1 k, 2 v, 3 out) of layer l; slots 0..b_text-1
are the text blocks, the rest the vision blocks. ViT-B/16: [128, 128, 48, 4 + 6]. ViT-L/14
(24 vision, 12 text layers): [128, 128, 96, 6 + 8]; the text slots of slices 48..95 belong to
no layer: they are zeroed before DCRC (so they never train or mix in) and never read.

Orthogonal slots (text by default) hold A, init 0, and use R = Cayley((A - A^T)/2) = I at
init; free slots (vision by default) hold R itself, init I. Per layer, with D = diag(R_1..R_b):
q, k, v weights become W D (input side) and the out-projection weight D W (output side);
biases and MLPs stay as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ovss_cli.peft.blockdiag import apply_input_side, apply_output_side, autocast_off, block_count, cayley, skew_part
from ovss_cli.peft.blocks import block_width, encoder_blocks
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.peft.dcrc import build_dcrc
from ovss_cli.peft.handle import Attachment

MODULE_NAME = "hclip"
PROJECTIONS = 4  # q, k, v, out


class _Built:
    """The transforms of the current step; rebuilt on demand, never copied or pickled."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None
        self.key: tuple | None = None

    def __deepcopy__(self, memo: dict) -> "_Built":
        return _Built()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()


class HClipTransforms(nn.Module):
    """Holds the POP tensor and DCRC; `transforms()` gives every block of every layer, [4L, B, q, q]."""

    def __init__(self, text_width: int, text_layers: int, vision_width: int, vision_layers: int, cfg: FinetuneConfig):
        super().__init__()
        q = cfg.block_size
        self.block_size = q
        self.text_slots = block_count(text_width, q, "text")
        self.vision_slots = block_count(vision_width, q, "vision")
        self.text_layers, self.vision_layers = text_layers, vision_layers
        slices = PROJECTIONS * max(text_layers, vision_layers)
        slots = self.text_slots + self.vision_slots
        # (first slot, end slot, orthogonal?, slices in use) for each modality
        self.groups = [
            (0, self.text_slots, cfg.text_orthogonal, PROJECTIONS * text_layers),
            (self.text_slots, slots, cfg.vision_orthogonal, PROJECTIONS * vision_layers),
        ]
        init = torch.zeros(q, q, slices, slots)
        mask = torch.zeros(slices, slots)
        for lo, hi, orthogonal, used in self.groups:
            if not orthogonal:
                init[:, :, :, lo:hi] = torch.eye(q)[:, :, None, None]
            mask[:used, lo:hi] = 1.0
        self.pop = nn.Parameter(init, requires_grad=cfg.pop)
        self.register_buffer("slot_mask", mask, persistent=False)
        self.dcrc = build_dcrc(cfg.dcrc, slices, slots, cfg.dcrc_block_mixing)
        self.cayley_first = cfg.dcrc_order == "cayley_first"
        self._built = _Built()

    def build(self) -> torch.Tensor:
        """All blocks, [4L, B, q, q], in fp32 (autocast off: the Cayley solve needs full precision)."""
        with autocast_off(self.pop.device):
            tensor = self.pop.float()
            if self.cayley_first:
                tensor = self._orthogonalise(tensor)
            tensor = tensor * self.slot_mask
            if self.dcrc is not None:
                tensor = self.dcrc(tensor)
            if not self.cayley_first:
                tensor = self._orthogonalise(tensor)
            return tensor.permute(2, 3, 0, 1)

    def _orthogonalise(self, tensor: torch.Tensor) -> torch.Tensor:
        parts = []
        for lo, hi, orthogonal, used in self.groups:
            part = tensor[..., lo:hi]
            if orthogonal:
                blocks = part[:, :, :used].permute(2, 3, 0, 1)  # [used, n, q, q]
                rotated = cayley(skew_part(blocks)).permute(2, 3, 0, 1)
                part = torch.cat([rotated, part[:, :, used:]], dim=2)
            parts.append(part)
        return torch.cat(parts, dim=-1)

    def refresh(self) -> None:
        self._built.value = self.build()
        self._built.key = self._cache_key()

    def transforms(self) -> torch.Tensor:
        """The blocks built by the last refresh(), rebuilt if parameters or grad mode changed since."""
        if self._built.value is None or self._built.key != self._cache_key():
            self.refresh()
        return self._built.value

    def _cache_key(self) -> tuple:
        params = list(self.parameters())
        return (torch.is_grad_enabled(), tuple(p._version for p in params), tuple(p.data_ptr() for p in params))

    def slots(self, encoder: str) -> slice:
        return slice(0, self.text_slots) if encoder == "text" else slice(self.text_slots, None)

    def counts(self) -> dict[str, Any]:
        """Stored values, values that act on a layer, and the paper's convention (orthogonal blocks at half)."""
        q2 = self.block_size**2
        used = orthogonal_used = 0
        for lo, hi, orthogonal, used_slices in self.groups:
            blocks = (hi - lo) * used_slices
            used += blocks
            orthogonal_used += blocks if orthogonal else 0
        dcrc = sum(p.numel() for p in self.dcrc.parameters()) if self.dcrc is not None else 0
        return {
            "pop_shape": list(self.pop.shape),
            "pop_values": self.pop.numel(),
            "pop_values_in_use": used * q2,
            "dcrc_parameters": dcrc,
            "paper_count": (used - orthogonal_used) * q2 + orthogonal_used * q2 // 2 + dcrc,
        }


class InProjTransform(nn.Module):
    """in_proj_weight [3d, d] -> [W_q D_q; W_k D_k; W_v D_v] for one layer and modality."""

    def __init__(self, source: HClipTransforms, first_slice: int, slots: slice):
        super().__init__()
        object.__setattr__(self, "source", source)  # shared, registered once on the model
        self.first_slice = first_slice
        self.slots = slots

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        blocks = self.source.transforms()[self.first_slice : self.first_slice + 3, self.slots]
        width = weight.shape[1]
        return apply_input_side(weight.reshape(3, width, width), blocks).reshape(weight.shape)


class OutProjTransform(nn.Module):
    """out_proj.weight -> D_out W for one layer and modality."""

    def __init__(self, source: HClipTransforms, slice_index: int, slots: slice):
        super().__init__()
        object.__setattr__(self, "source", source)
        self.slice_index = slice_index
        self.slots = slots

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return apply_output_side(weight, self.source.transforms()[self.slice_index, self.slots])


def apply_hclip(model: nn.Module, cfg: FinetuneConfig) -> Attachment:
    blocks = encoder_blocks(model)
    source = HClipTransforms(
        text_width=block_width(blocks["text"][0]),
        text_layers=len(blocks["text"]),
        vision_width=block_width(blocks["vision"][0]),
        vision_layers=len(blocks["vision"]),
        cfg=cfg,
    ).to(blocks["vision"][0].attn.in_proj_weight.device)
    model.add_module(MODULE_NAME, source)
    attachment = Attachment(added_modules=[(model, MODULE_NAME)], refreshers=[source.refresh], details=source.counts())
    for encoder, encoder_blocks_ in blocks.items():
        slots = source.slots(encoder)
        for layer, block in enumerate(encoder_blocks_):
            first = PROJECTIONS * layer
            in_transform = InProjTransform(source, first, slots)
            out_transform = OutProjTransform(source, first + 3, slots)
            parametrize.register_parametrization(block.attn, "in_proj_weight", in_transform)
            parametrize.register_parametrization(block.attn.out_proj, "weight", out_transform)
            attachment.parametrized += [(block.attn, "in_proj_weight"), (block.attn.out_proj, "weight")]
    return attachment
