"""Export trained models: merged plain open_clip weights (+ decoder), or one ONNX graph per vocabulary.

`open_clip` format: every weight-transform adapter (H-CLIP, LoRA, OFT, SSF, q/v tuning) is folded
into the CLIP weights, so `open_clip.create_model(name, pretrained=<dir>/open_clip_model.safetensors,
force_image_size=<size>[, force_quick_gelu=True])` loads the fine-tuned CLIP with no ovss code and no
inference overhead (ovss_export.json records the activation and the pixel normalisation).
The decoder weights and the recipe travel beside it; `ovss evaluate/predict --checkpoint <dir>`
runs the exported model (plain CLIP + decoder).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ovss_cli.clip.config import pinned_clip_section
from ovss_cli.config import to_dict
from ovss_cli.errors import UsageError
from ovss_cli.fileio import atomic_write, write_json
from ovss_cli.loading import CLIP_FILE, DECODER_FILE, EXPORT_META, load_segmenter
from ovss_cli.peft.config import FinetuneConfig
from ovss_cli.runtime.checkpoint import read_sidecar, resolve_checkpoint, save_tensors


def merge_adapters(model: nn.Module) -> None:
    """Fold the model's CLIP adapters into plain weights (a no-op when nothing is attached or CLIP is frozen)."""
    handle = getattr(model, "finetune", None)
    if handle is None or handle.merged:
        return
    if not handle.mergeable:
        raise UsageError(f"finetune mode '{handle.mode}' adds modules to CLIP and cannot be folded into plain "
                         "weights; export it with --format onnx instead")
    handle.merge()


def export_open_clip(checkpoint: Path, out_dir: Path) -> list[Path]:
    """Write merged open_clip weights, the decoder weights and ovss_export.json into `out_dir`."""

    weights = resolve_checkpoint(Path(checkpoint))
    recipe = read_sidecar(weights)["recipe"]
    model = load_segmenter(weights, "cpu")
    merge_adapters(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(model.dense.clip.state_dict(), out_dir / CLIP_FILE)
    save_tensors(model.decoder.state_dict(), out_dir / DECODER_FILE)
    if "finetune" in recipe:
        # The exported model is plain CAT-Seg on plain CLIP (InfoCLIP's teacher and LPAM are training-only).
        recipe = {**recipe, "method": "catseg", "finetune": _frozen_finetune_section()}
        recipe.pop("infoclip", None)
    recipe["clip"] = clip = pinned_clip_section(recipe["clip"], model.dense)
    quick_gelu = ", force_quick_gelu=True" if clip["quick_gelu"] else ""
    meta = {
        "format": "open_clip",
        "source_checkpoint": str(weights),
        "clip_name": clip["name"],
        "image_size": clip["image_size"],
        "quick_gelu": clip["quick_gelu"],
        "normalization": model.dense.norm.to_dict(),
        "templates": clip["templates"],
        "train_classes": list(model.train_classes),
        "recipe": recipe,
        "load_with_open_clip": f"open_clip.create_model({clip['name']!r}, pretrained='{CLIP_FILE}', "
                               f"force_image_size={clip['image_size']}{quick_gelu})",
    }
    write_json(out_dir / EXPORT_META, meta)
    return [out_dir / CLIP_FILE, out_dir / DECODER_FILE, out_dir / EXPORT_META]


def _frozen_finetune_section() -> dict:
    """The `finetune:` section of merged weights: plain CLIP, nothing attached."""

    return to_dict(FinetuneConfig(mode="frozen"))


class _ScoresGraph(nn.Module):
    """images [B, 3, S, S] (CLIP-normalised) -> class probabilities [B, T, S, S] for a fixed vocabulary."""

    def __init__(self, segmenter):
        super().__init__()
        self.segmenter = segmenter

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.segmenter.scores(images)


@contextlib.contextmanager
def _plain_attention():
    """nn.MultiheadAttention's fused fast path has no ONNX form; use the decomposed one while exporting."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_onnx(checkpoint: Path, out_file: Path, class_names: Sequence[str], batch: int = 1,
                opset: int = 17) -> list[Path]:
    """One ONNX graph scoring a fixed vocabulary at a fixed batch size, plus a JSON with the conventions.

    The batch size is part of the graph (the decoder folds batch and classes together in its
    reshapes); 5 suits CAT-Seg's sliding window (4 windows + 1 global view).
    """
    import importlib.util

    if importlib.util.find_spec("onnx") is None:  # torch's exporter needs it
        raise UsageError("ONNX export needs the onnx package: pip install 'ovss[onnx]'")
    path = Path(checkpoint)
    model = load_segmenter(path, "cpu")
    if getattr(model, "finetune", None) is None or model.finetune.mergeable:
        merge_adapters(model)  # plain weights: a smaller, faster graph
    model.set_vocabulary(list(class_names))
    example = torch.zeros(batch, 3, model.window, model.window)
    graph = _ScoresGraph(model).eval()

    def write(temporary: Path) -> None:
        with _plain_attention(), torch.no_grad(), warnings.catch_warnings():
            # The graph is traced for one batch size and vocabulary: the tracer's shape warnings are expected.
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            torch.onnx.export(graph, (example,), str(temporary), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["scores"])

    atomic_write(out_file, write)
    meta_file = out_file.with_suffix(".json")
    write_json(meta_file, {
        "format": "onnx", "classes": list(class_names), "window": model.window, "batch": batch,
        "input": "images: float32 [batch, 3, window, window], RGB in 0..255 normalised as (x - mean*255) / (std*255)",
        "output": "scores: float32 [batch, classes, window, window], class probabilities",
        **model.image_norm.to_dict(), "clip_quick_gelu": model.dense.quick_gelu,
    })
    return [out_file, meta_file]
