"""Options and model loading shared by `evaluate` and `predict`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from ovss_cli.clip.config import ClipConfig, build_dense_clip
from ovss_cli.config import from_dict
from ovss_cli.errors import UsageError
from ovss_cli.runtime.config import PRECISIONS

CheckpointOption = typer.Option(None, "--checkpoint", "-c", help="Trained run folder or checkpoint file (.safetensors). Without it: zero-shot dense CLIP.")
ClipModelOption = typer.Option(None, "--clip-model", help="open_clip model for the zero-shot baseline.", show_default="ViT-B-16; ovss-tiny for --bench toy")
PretrainedOption = typer.Option(None, "--pretrained", help="open_clip tag, OpenAI .pt, .safetensors/.bin state dict or hub folder for the zero-shot baseline. '' = random init.", show_default="openai; random for ovss-tiny")
ImageSizeOption = typer.Option(None, "--image-size", help="CLIP input size of the zero-shot baseline.", show_default="384; 64 for ovss-tiny")
TemplatesOption = typer.Option("single", "--templates", help="Prompt templates of the zero-shot baseline: single, imagenet80 or imagenet7.")
ModeOption = typer.Option("sliding", "--mode", help="sliding: CAT-Seg protocol (640 resize, 384 windows stride 256 + global view); whole: one resized view.")
PrecisionOption = typer.Option("auto", "--precision", help="auto (bf16-mixed on GPUs with bf16, fp16-mixed on older ones, fp32 on CPU), bf16-mixed, fp16-mixed or fp32.")
DeviceOption = typer.Option("auto", "--device", help="auto (CUDA when available), cuda or cpu.")


def check_device_and_precision(device: str, precision: str | None = None) -> None:
    """Spelling of --device and --precision, checked before torch is imported (a typo answers at once)."""

    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise UsageError(f"--device must be auto, cpu or cuda[:N], got '{device}'")
    if precision is not None and precision != "auto" and precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)} or auto")


def check_checkpoint_path(checkpoint: Path) -> None:
    if not checkpoint.exists():
        raise UsageError(f"{checkpoint} does not exist; pass a run folder, a checkpoint file (.safetensors) "
                         "or an export folder")


def check_mode(mode: str) -> str:
    if mode not in ("sliding", "whole"):
        raise UsageError(f"--mode must be 'sliding' or 'whole', got '{mode}'")
    return mode


NprocOption = typer.Option(None, "--nproc", min=1, help="CPU processes (gloo) on this machine instead of GPUs; images are sharded across them.")


def zero_shot_clip(clip_model: Optional[str], pretrained: Optional[str], image_size: Optional[int],
                   tiny_default: bool) -> dict:
    """The `clip:` section of the zero-shot baseline: the options over ViT-B-16/openai (or the tiny random CLIP)."""

    tiny = tiny_default and clip_model is None
    defaults = {"name": "ovss-tiny", "pretrained": "", "image_size": 64} if tiny else {}
    section = {**ClipConfig().__dict__, **defaults}
    for key, value in (("name", clip_model), ("pretrained", pretrained), ("image_size", image_size)):
        if value is not None:
            section[key] = value
    return section


def check_model_source(checkpoint: Optional[Path], clip_model: Optional[str], pretrained: Optional[str],
                       tiny_default: bool) -> None:
    """Fail before any relaunch or model building when the checkpoint or the CLIP weights are not there."""
    if checkpoint is not None:
        check_checkpoint_path(checkpoint)
        return
    from ovss_cli.clip.zoo import check_clip_weights

    section = zero_shot_clip(clip_model, pretrained, None, tiny_default)
    check_clip_weights(section["name"], section["pretrained"])


def build_segmenter(checkpoint: Optional[Path], clip_model: Optional[str], pretrained: Optional[str],
                    image_size: Optional[int], templates: str, device: str, tiny_default: bool):
    """A trained model from `checkpoint`, else the zero-shot dense-CLIP baseline (in eval mode, on `device`)."""
    if checkpoint is not None:
        from ovss_cli.loading import load_segmenter

        return load_segmenter(checkpoint, device)
    from ovss_cli.methods.zeroshot import ZeroShotSegmenter

    section = {**zero_shot_clip(clip_model, pretrained, image_size, tiny_default), "templates": templates}
    dense, text = build_dense_clip(from_dict(ClipConfig, section, "clip"))
    return ZeroShotSegmenter(dense, text).to(device).eval()


def resolve_device(device: str) -> str:
    import torch

    check_device_and_precision(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda but no CUDA device is visible; use --device cpu")
    return device
