"""Official CAT-Seg checkpoints (detectron2 `model_final.pth`, `{"model": state_dict}`) -> ovss checkpoints.

The official model keeps CLIP under `sem_seg_head.predictor.clip_model` with the attention
projections split into q/k/v_proj_weight, the aggregator under `sem_seg_head.predictor.transformer`,
and the two guidance transposed convs (`upsample1`, `upsample2`) on the top model. Every official
tensor is renamed to its ovss key; the q/k/v rows are fused back into `in_proj_weight` and then
laid out as the recipe's fine-tuning mode stores them. Nothing may be left over on either side.
The model is built from the recipe's CLIP tag without weights, so it has the activation and pixel
statistics the official model was trained with (OpenAI's QuickGELU CLIP for `openai`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ovss_cli.clip.dense import resize_pos_embed
from ovss_cli.engine.trainer import checkpoint_sidecar
from ovss_cli.errors import OvssError, UsageError
from ovss_cli.methods.registry import build_model
from ovss_cli.recipes import load_recipe
from ovss_cli.runtime.checkpoint import BEST, save_checkpoint
from ovss_cli.textutil import first_line

CLIP_PREFIX = "sem_seg_head.predictor.clip_model."
AGGREGATOR_PREFIX = "sem_seg_head.predictor.transformer."
POSITIONAL_EMBEDDING = "dense.clip.visual.positional_embedding"
SHOWN_KEYS = 5  # unmatched keys named in an error

# Official aggregator names -> ovss decoder names (applied in order, first match wins).
AGGREGATOR_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
        (r"^conv1\.", "cost_embed."),
        (r"^guidance_projection\.", "appearance_guidance."),
        (r"^text_guidance_projection\.", "text_guidance."),
        (r"^decoder_guidance_projection\.(\d+)\.", r"upsampler.guidance_projections.\1."),
        (r"^head\.", "upsampler.head."),
        (r"^layers\.(\d+)\.swin_block\.guidance_norm\.", r"layers.\1.spatial.guidance_norm."),
        (r"^layers\.(\d+)\.swin_block\.block_1\.mlp\.fc1\.", r"layers.\1.spatial.blocks.0.mlp.0."),
        (r"^layers\.(\d+)\.swin_block\.block_1\.mlp\.fc2\.", r"layers.\1.spatial.blocks.0.mlp.2."),
        (r"^layers\.(\d+)\.swin_block\.block_2\.mlp\.fc1\.", r"layers.\1.spatial.blocks.1.mlp.0."),
        (r"^layers\.(\d+)\.swin_block\.block_2\.mlp\.fc2\.", r"layers.\1.spatial.blocks.1.mlp.2."),
        (r"^layers\.(\d+)\.swin_block\.block_1\.", r"layers.\1.spatial.blocks.0."),
        (r"^layers\.(\d+)\.swin_block\.block_2\.", r"layers.\1.spatial.blocks.1."),
        (r"^layers\.(\d+)\.attention\.attention\.", r"layers.\1.classes."),
        (r"^layers\.(\d+)\.attention\.MLP\.", r"layers.\1.classes.mlp."),
        (r"^layers\.(\d+)\.attention\.padding_tokens$", r"layers.\1.classes.padding_token"),
        (r"^layers\.(\d+)\.attention\.padding_guidance$", r"layers.\1.classes.padding_guidance"),
        (r"^layers\.(\d+)\.attention\.norm([12])\.", r"layers.\1.classes.norm\2."),
        # Up stage: ConvTranspose, then DoubleConv = conv, GroupNorm, ReLU, conv, GroupNorm, ReLU
        (r"^decoder(\d+)\.up\.", "upsampler.stages.{stage}.up."),
        (r"^decoder(\d+)\.conv\.double_conv\.0\.", "upsampler.stages.{stage}.conv1."),
        (r"^decoder(\d+)\.conv\.double_conv\.1\.", "upsampler.stages.{stage}.norm1."),
        (r"^decoder(\d+)\.conv\.double_conv\.3\.", "upsampler.stages.{stage}.conv2."),
        (r"^decoder(\d+)\.conv\.double_conv\.4\.", "upsampler.stages.{stage}.norm2."),
    ]
]
# The shifted-window mask is a buffer computed from the grid; ovss builds it on the fly.
SWIN_MASK = re.compile(r"^layers\.\d+\.swin_block\.block_\d\.attn_mask$")
SPLIT_PROJECTION = re.compile(r"^(.*\.attn)\.([qkv])_proj_weight$")
GUIDANCE_UPSAMPLER = re.compile(r"^upsample(\d+)\.(weight|bias)$")
# How the fine-tuning modes store a fused attention weight in the ovss state dict.
PARAMETRIZED = re.compile(r"^(.*\.attn)\.parametrizations\.in_proj_weight\.(original|0\.q|0\.v)$")


def read_official_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint, read without unpickling arbitrary objects."""
    if not path.is_file():
        raise UsageError(f"official checkpoint {path} not found; pass the downloaded model_final.pth / model_base.pth")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise OvssError(f"{path} is not a plain PyTorch checkpoint of tensors ({first_line(err)}); "
                        "pass the official CAT-Seg .pth file") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OvssError(f"{path} holds no model state dict (expected a dict with a 'model' entry of tensors); "
                        "pass the official CAT-Seg .pth file")
    return state


def _aggregator_key(name: str) -> str | None:
    for pattern, replacement in AGGREGATOR_RULES:
        match = pattern.match(name)
        if match:
            if "{stage}" in replacement:  # official decoder1/decoder2 are ovss stages 0/1
                return "decoder." + replacement.format(stage=int(match.group(1)) - 1) + name[match.end():]
            return "decoder." + pattern.sub(replacement, name, count=1)
    return None


def rename_official(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """Official tensors under ovss names (attention weights fused as `<attn>.in_proj_weight`),
    the official name each came from, and the official keys that have no ovss name."""
    renamed: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    split: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for name, tensor in state.items():
        if name.startswith(CLIP_PREFIX):
            clip_name = name[len(CLIP_PREFIX):]
            match = SPLIT_PROJECTION.match(clip_name)
            if match:
                split.setdefault(match.group(1), {})[match.group(2)] = tensor
            else:
                renamed["dense.clip." + clip_name], origin["dense.clip." + clip_name] = tensor, name
        elif name.startswith(AGGREGATOR_PREFIX):
            inner = name[len(AGGREGATOR_PREFIX):]
            if SWIN_MASK.match(inner):
                continue
            target = _aggregator_key(inner)
            if target is None:
                unknown.append(name)
            else:
                renamed[target], origin[target] = tensor, name
        elif GUIDANCE_UPSAMPLER.match(name):
            index, kind = GUIDANCE_UPSAMPLER.match(name).groups()
            target = f"decoder.upsampler.guidance_upsamplers.{int(index) - 1}.{kind}"
            renamed[target], origin[target] = tensor, name
        else:
            unknown.append(name)
    for attn, parts in split.items():
        if set(parts) != {"q", "k", "v"}:
            unknown.extend(f"{CLIP_PREFIX}{attn}.{p}_proj_weight" for p in sorted(parts))
            continue
        target = f"dense.clip.{attn}.in_proj_weight"
        renamed[target] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        origin[target] = f"{CLIP_PREFIX}{attn}.q/k/v_proj_weight"
    return renamed, origin, unknown


def _resize_positions(tensor: torch.Tensor, expected: torch.Size) -> torch.Tensor:
    """Official positional embeddings at CLIP's pre-training grid, resized (bicubic) to the recipe's grid.

    The official model resizes them the same way on every forward pass, so resizing once is exact.
    A tensor that is not a square grid of the same width comes back unchanged (the shape check reports it).
    """

    old_side, new_side = round((tensor.shape[0] - 1) ** 0.5), round((expected[0] - 1) ** 0.5)
    if tensor.ndim != 2 or tensor.shape[1] != expected[1] or old_side ** 2 + 1 != tensor.shape[0] \
            or new_side ** 2 + 1 != expected[0]:
        return tensor
    return resize_pos_embed(tensor, (new_side, new_side), (old_side, old_side))


def _mismatch(what: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS]) + (", ..." if len(keys) > SHOWN_KEYS else "")
    return f"{len(keys)} {what} ({shown})"


def official_to_ovss(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                     source: str, recipe_name: str) -> dict[str, torch.Tensor]:
    """Every tensor of the ovss state dict `expected`, filled from the official `state`; any leftover is an error."""
    renamed, origin, unused = rename_official(state)
    used: set[str] = set()
    converted: dict[str, torch.Tensor] = {}
    missing: list[str] = []
    for key, like in expected.items():
        source_key, rows = key, None
        match = PARAMETRIZED.match(key)
        if match and key not in renamed:
            source_key = f"{match.group(1)}.in_proj_weight"
            rows = {"original": None, "0.q": 0, "0.v": 2}[match.group(2)]
        if source_key not in renamed:
            missing.append(key)
            continue
        tensor = renamed[source_key]
        used.add(source_key)
        if rows is not None:
            tensor = tensor.chunk(3, dim=0)[rows]
        if key.endswith("classes.padding_token") or key.endswith("classes.padding_guidance"):
            tensor = tensor.reshape(-1)  # official (1, 1, C)
        if tensor.shape != like.shape and key == POSITIONAL_EMBEDDING:
            tensor = _resize_positions(tensor, like.shape)
        if tensor.shape != like.shape:
            raise OvssError(f"{source} does not fit recipe {recipe_name}: {origin[source_key]} has shape "
                            f"{tuple(tensor.shape)}, the recipe's {key} {tuple(like.shape)}; pick the recipe of the same backbone "
                            "(recipes/catseg_vitb.yaml or recipes/catseg_vitl.yaml)")
        converted[key] = tensor.to(like.dtype).clone()
    unused += sorted(origin[key] for key in set(renamed) - used)
    if missing or unused:
        parts = [_mismatch("official tensors have no place in the model", unused) if unused else "",
                 _mismatch("model tensors are not in the file", missing) if missing else ""]
        raise OvssError(f"{source} does not match recipe {recipe_name}: " + "; ".join(p for p in parts if p)
                        + "; is it an official CAT-Seg checkpoint fine-tuned in attention mode, with this recipe's backbone?")
    return converted


def convert_official_catseg(source: Path, recipe_path: Path, out: Path) -> Path:
    """Write `<out>/checkpoints/best.safetensors` + `best.json` from an official CAT-Seg checkpoint; returns the weights path."""

    directory = out / "checkpoints"
    if (directory / f"{BEST}.json").exists():
        raise UsageError(f"{directory} already holds a checkpoint; choose a new --out folder")
    recipe = load_recipe(recipe_path)
    if recipe.method != "catseg":
        raise UsageError(f"recipe {recipe_path} is for method '{recipe.method}'; official CAT-Seg weights need a catseg recipe")
    state = read_official_state(source)
    model = build_model(recipe, pretrained=False)
    converted = official_to_ovss(state, model.state_dict(), str(source), str(recipe_path))
    model.load_state_dict(converted, strict=True)
    sidecar = checkpoint_sidecar(recipe, model, step=0)
    sidecar["converted_from"] = source.name
    return save_checkpoint(directory, BEST, model, sidecar)
