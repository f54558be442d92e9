"""`ovss export`: merged open_clip weights reproduce the adapted model, load with plain open_clip,
run again through ovss (evaluate/predict), and the ONNX graph matches PyTorch."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import pytest
import torch
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.clip.dense import DenseCLIP
from ovss_cli.clip.zoo import register_ovss_configs
from ovss_cli.loading import load_segmenter
from tests.helpers import QUICKSTART, TINY

runner = CliRunner()
CLASSES = ["sky", "grass", "sand", "water", "brick"]
HALF = [0.5, 0.5, 0.5]


@pytest.fixture(scope="module")
def hclip_run(tmp_path_factory):
    """A few H-CLIP training steps on the toy set (the transforms move away from identity), on a
    QuickGELU CLIP with non-OpenAI pixel statistics, both of which every export must carry."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["train", str(QUICKSTART), *TINY, "finetune.mode=hclip", "finetune.block_size=32",
                                 "optim.clip_lr_multiplier=10.0", "clip.quick_gelu=true", f"clip.image_mean={HALF}",
                                 f"clip.image_std={HALF}", "--output", str(run)])
    assert result.exit_code == 0, result.output
    return run


def images(size: int = 32, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_open_clip_export_reproduces_the_adapted_model(hclip_run, tmp_path):
    trained = load_segmenter(hclip_run, "cpu")
    assert trained.finetune.mode == "hclip"
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(hclip_run), "--format", "open_clip", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "ovss_export.json").read_text())
    assert meta["recipe"]["finetune"]["mode"] == "frozen" and meta["image_size"] == 32
    assert meta["quick_gelu"] is True and "force_quick_gelu=True" in meta["load_with_open_clip"]
    assert meta["normalization"] == {"mean": HALF, "std": HALF, "interpolation": "bicubic"}

    # Plain open_clip, no ovss model code involved, loads the merged weights.
    register_ovss_configs()
    plain = open_clip.create_model("ovss-tiny", pretrained=str(out / "open_clip_model.safetensors"),
                                   force_image_size=32, force_quick_gelu=True).eval()
    x = images()
    with torch.no_grad(), trained.finetune.scope():
        adapted_tokens = trained.dense.encode_image_dense(x).tokens
        tokens = trained.text.tokens(CLASSES)
        adapted_text = trained.dense.encode_text(tokens)
    with torch.no_grad():
        plain_tokens = DenseCLIP(plain, 32).encode_image_dense(x).tokens
        plain_text = plain.encode_text(tokens)
    assert (plain_tokens - adapted_tokens).abs().max() < 1e-4
    assert (plain_text - adapted_text).abs().max() < 1e-4
    # The adapters really did something: merged weights differ from the untrained CLIP.
    with torch.no_grad():
        untrained = open_clip.create_model("ovss-tiny", force_image_size=32)
    assert not torch.allclose(plain.visual.transformer.resblocks[0].attn.in_proj_weight,
                              untrained.visual.transformer.resblocks[0].attn.in_proj_weight)

    # The export folder is a checkpoint for ovss too: same scores, no adapter left.
    exported = load_segmenter(out, "cpu")
    assert exported.finetune.mode == "frozen"
    assert exported.dense.quick_gelu and exported.image_norm.mean == (0.5, 0.5, 0.5)
    trained.set_vocabulary(CLASSES)
    exported.set_vocabulary(CLASSES)
    assert (exported.scores(x) - trained.scores(x)).abs().max() < 1e-4


def test_onnx_export_matches_pytorch(hclip_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out = tmp_path / "toy.onnx"
    result = runner.invoke(app, ["export", str(hclip_run), "--format", "onnx", "--classes", ", ".join(CLASSES),
                                 "--batch", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classes"] == CLASSES and meta["window"] == 32 and meta["batch"] == 3
    assert (meta["mean"], meta["std"], meta["clip_quick_gelu"]) == (HALF, HALF, True)
    model = load_segmenter(hclip_run, "cpu")
    model.set_vocabulary(CLASSES)
    x = images(count=3)
    expected = model.scores(x).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == (3, 5, 32, 32)
    assert np.abs(got - expected).max() < 1e-4


def test_export_errors(hclip_run, tmp_path):
    result = runner.invoke(app, ["export", str(hclip_run), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "--classes" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2 and "does not exist" in result.output  # a mistyped path: usage, answered before torch
    result = runner.invoke(app, ["export", str(hclip_run), "--format", "tflite", "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
