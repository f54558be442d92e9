"""Checks with real pretrained CLIP weights; skipped unless OVSS_CLIP_WEIGHTS names a local file.

    OVSS_CLIP_WEIGHTS=/path/to/ViT-B-16.pt [OVSS_CLIP_MODEL=ViT-B-16] python -m pytest tests/test_real_weights.py
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ovss_cli.clip.config import ClipConfig, build_dense_clip
from ovss_cli.data.transforms import to_clip_tensor
from ovss_cli.methods.zeroshot import ZeroShotSegmenter

WEIGHTS = os.environ.get("OVSS_CLIP_WEIGHTS")
pytestmark = [pytest.mark.weights,
              pytest.mark.skipif(not WEIGHTS, reason="set OVSS_CLIP_WEIGHTS=/path/to/ViT-B-16.pt to run")]


@pytest.fixture(scope="module")
def zero_shot():
    config = ClipConfig(name=os.environ.get("OVSS_CLIP_MODEL", "ViT-B-16"), pretrained=WEIGHTS, image_size=384)
    dense, text = build_dense_clip(config)
    return ZeroShotSegmenter(dense.eval(), text)


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
    scores = zero_shot.scores(to_clip_tensor(image)[None])[0]
    prediction = scores.argmax(dim=0)
    truth = torch.zeros_like(prediction)
    truth[:, 192:] = 1
    assert (prediction == truth).float().mean() > 0.75
