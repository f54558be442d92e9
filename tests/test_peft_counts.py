"""Trainable-parameter counts on real-size CLIP ViT-B/16 and ViT-L/14, built on the meta device (shapes only)."""

from __future__ import annotations

import torch

from ovss_cli.peft import FinetuneConfig, apply_finetune


def _meta_clip(name: str):
    import open_clip

    with torch.device("meta"):
        return open_clip.model.CLIP(**open_clip.get_model_config(name))


def _count(name: str, **options) -> tuple[int, dict]:
    handle = apply_finetune(_meta_clip(name), FinetuneConfig(**options))
    return handle.trainable_parameter_count(), handle.summary()


def _expected(vision: int, text: int, vision_layers: int, text_layers: int) -> dict[str, int]:
    """Hand counts; every target matrix is square d x d except the MLP (d x 4d)."""
    encoders = ((vision, vision_layers), (text, text_layers))
    return {
        # CAT-Seg: q and v of every layer of both encoders
        "attention": sum(layers * 2 * d * d for d, layers in encoders),
        # rank 64 on q, k, v, out: r * (d_in + d_out) per matrix
        "lora": sum(layers * 4 * 64 * 2 * d for d, layers in encoders),
        # 128 * 127 / 2 free entries per 128-block, d / 128 blocks per matrix, 4 matrices per layer
        "oft": sum(layers * 4 * (d // 128) * (128 * 127 // 2) for d, layers in encoders),
        # down (d x 128 + 128) and up (128 x d + d), after attention and after the MLP
        "adapter": sum(layers * 2 * (2 * d * 128 + 128 + d) for d, layers in encoders),
        # 250 prompts of width d in every vision block but the last
        "vpt": 250 * vision * (vision_layers - 1),
        # scale + shift per output channel of in_proj (3d), out_proj, c_fc (4d), c_proj, ln_1, ln_2
        "ssf": sum(layers * 2 * (3 * d + d + 4 * d + d + d + d) for d, layers in encoders),
        "frozen": 0,
    }


def test_vit_b_counts():
    expected = _expected(768, 512, 12, 12)
    assert expected["attention"] == 20_447_232 and expected["lora"] == 7_864_320
    assert expected["oft"] == 3_901_440 and expected["adapter"] == 7_901_184
    for mode, count in expected.items():
        assert _count("ViT-B-16", mode=mode)[0] == count, mode
    full, summary = _count("ViT-B-16", mode="full")
    assert full == summary["clip_parameters"] == 149_620_737 and summary["trainable_percent_of_clip"] == 100.0


def test_vit_l_counts():
    expected = _expected(1024, 768, 24, 12)
    assert expected["attention"] == 64_487_424
    for mode, count in expected.items():
        assert _count("ViT-L-14-336", mode=mode)[0] == count, mode


def test_vit_b_hclip_layout():
    dcrc_released = 12 * 10 * 10 + 48 * 48  # one 10x10 block mixer per layer + the 48x48 slice mixer
    count, summary = _count("ViT-B-16", mode="hclip")
    assert summary["pop_shape"] == [128, 128, 48, 10]
    assert count == 128 * 128 * 48 * 10 + dcrc_released == 7_864_320 + 3_504
    # the paper's convention counts skew-symmetric (text) blocks at q^2/2
    assert summary["paper_count"] == 48 * 4 * 128 * 128 // 2 + 48 * 6 * 128 * 128 + dcrc_released
    assert _count("ViT-B-16", mode="hclip", dcrc="paper")[0] == 7_864_320 + 2 * 10 * 10 + 2 * 48 * 48 + 48 * 10
    assert _count("ViT-B-16", mode="hclip", dcrc_block_mixing="per_slice")[0] == 7_864_320 + 48 * 100 + 48 * 48
    count_dcrc_only, summary_q64 = _count("ViT-B-16", mode="hclip", block_size=64, pop=False)
    assert summary_q64["pop_shape"] == [64, 64, 48, 20] and count_dcrc_only == 12 * 20 * 20 + 48 * 48


def test_vit_l_hclip_layout():
    count, summary = _count("ViT-L-14-336", mode="hclip")
    assert summary["pop_shape"] == [128, 128, 96, 14]
    assert summary["pop_values"] == 22_020_096
    # text layer j uses slices 4j..4j+3 of its 6 slots; the text slots of slices 48..95 are unused
    assert summary["pop_values_in_use"] == 128 * 128 * (48 * 6 + 96 * 8) == 17_301_504
    assert summary["dcrc_parameters"] == 24 * 14 * 14 + 96 * 96 == 13_920
    assert count == 22_020_096 + 13_920
