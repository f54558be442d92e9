"""Checks with real pretrained CLIP weights; skipped unless OVSS_CLIP_WEIGHTS names a local file or hub folder.

    OVSS_CLIP_WEIGHTS=/path/to/ViT-B-16.pt [OVSS_CLIP_MODEL=ViT-B-16] python -m pytest tests/test_real_weights.py

With OpenAI's published TorchScript file (https://openaipublic.azureedge.net/clip/models/.../ViT-B-16.pt)
this exercises the TorchScript reader and QuickGELU against open_clip's own OpenAI loader.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ovss_cli.clip.config import ClipConfig, build_dense_clip
from ovss_cli.clip.weights import is_torchscript
from ovss_cli.methods.zeroshot import ZeroShotSegmenter

WEIGHTS = os.environ.get("OVSS_CLIP_WEIGHTS")
pytestmark = [pytest.mark.weights,
              pytest.mark.skipif(not WEIGHTS, reason="set OVSS_CLIP_WEIGHTS=/path/to/ViT-B-16.pt to run")]


@pytest.fixture(scope="module")
def zero_shot():
    config = ClipConfig(name=os.environ.get("OVSS_CLIP_MODEL", "ViT-B-16"), pretrained=WEIGHTS, image_size=384)
    dense, text = build_dense_clip(config)
    return ZeroShotSegmenter(dense.eval(), text)


def test_openai_torchscript_builds_quick_gelu_equal_to_open_clips_openai_loader():
    """OpenAI's archives are QuickGELU networks: ovss must compute what open_clip's dedicated OpenAI loader does."""
    import open_clip

    from ovss_cli.clip.dense import DenseCLIP
    from ovss_cli.clip.zoo import create_clip

    if not os.path.isfile(WEIGHTS) or not is_torchscript(Path(WEIGHTS)):
        pytest.skip("OVSS_CLIP_WEIGHTS is not an OpenAI TorchScript archive")
    reference = open_clip.load_openai_model(WEIGHTS, device="cpu").eval()
    native = int(reference.visual.grid_size[0] * reference.visual.patch_size[0])
    dense = DenseCLIP(create_clip(os.environ.get("OVSS_CLIP_MODEL", "ViT-B-16"), WEIGHTS), native).eval()
    assert dense.quick_gelu
    tokens = open_clip.get_tokenizer(os.environ.get("OVSS_CLIP_MODEL", "ViT-B-16"))(["a photo of a dog", "sky"])
    images = torch.randn(1, 3, native, native, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (dense.encode_text(tokens) - reference.encode_text(tokens)).abs().max() < 1e-4
        # the class-token path through every block (the regular last block, not the dense one)
        x, _ = dense._embed_patches(images)
        for block in dense.clip.visual.transformer.resblocks:
            x = block(x)
        ours = dense.clip.visual.ln_post(x[:, 0]) @ dense.clip.visual.proj
        assert (ours - reference.encode_image(images)).abs().max() < 1e-4


def test_truncated_text_encoding_equals_open_clip_on_real_weights(zero_shot):
    tokens = zero_shot.text.tokens(["building, edifice", "sky", "person"])
    with torch.no_grad():
        ours = zero_shot.dense.encode_text(tokens)
        reference = zero_shot.dense.clip.encode_text(tokens)
    assert (ours - reference).abs().max() < 1e-4


def test_dense_clip_segments_coloured_halves(zero_shot):
    """Pretrained CLIP's dense patches name a colour correctly on most of a two-colour image."""
    image = np.zeros((384, 384, 3), np.uint8)
    image[:, :192] = (220, 30, 30)
    image[:, 192:] = (30, 60, 220)
    zero_shot.set_vocabulary(["red", "blue"])
    scores = zero_shot.scores(zero_shot.image_norm.to_tensor(image)[None])[0]
    prediction = scores.argmax(dim=0)
    truth = torch.zeros_like(prediction)
    truth[:, 192:] = 1
    assert (prediction == truth).float().mean() > 0.75
