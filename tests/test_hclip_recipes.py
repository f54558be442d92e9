"""H-CLIP and PEFT-baseline recipes (H-CLIP Tables 1, 3 and 4): each validates, carries the released protocol,
sets the intended `finetune:` options, and states in its header how to run it and how many CLIP parameters train."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.recipes import load_recipe
from tests.helpers import RECIPES, assert_official_protocol

runner = CliRunner()

VIT_B = ("ViT-B-16", 384, [3, 7])
VIT_L = ("ViT-L-14-336", 336, [7, 15])

# ViT-B/16: 12 + 12 layers, widths 768 (vision) / 512 (text); released DCRC: one b x b block mixer per layer + a 48 x 48
# slice mixer. These are hand-derived, independent of the peft package.
LAYERS, V, T = 12, 768, 512


def _pop_plus_dcrc(q: int) -> int:
    blocks = V // q + T // q
    return q * q * 4 * LAYERS * blocks + LAYERS * blocks**2 + (4 * LAYERS) ** 2


HCLIP = {"mode": "hclip", "block_size": 128, "pop": True, "dcrc": "released", "dcrc_order": "mixing_first",
         "dcrc_block_mixing": "per_layer", "text_orthogonal": True, "vision_orthogonal": False}

# file stem -> (backbone, finetune settings it must have, CLIP parameters the dry run counts)
EXPECTED = {
    "hclip": (VIT_B, HCLIP, _pop_plus_dcrc(128)),
    # ViT-L/14@336: 24 vision / 12 text layers, 1024 / 768 wide -> 128x128x96x14 tensor, 24 block mixers of 14x14
    "hclip_vitl": (VIT_L, HCLIP, 128 * 128 * 96 * 14 + 24 * 14**2 + 96**2),
    "hclip_pop_only": (VIT_B, {**HCLIP, "dcrc": "none"}, 128 * 128 * 48 * 10),
    "hclip_dcrc_only": (VIT_B, {**HCLIP, "pop": False}, LAYERS * 10**2 + 48**2),
    "hclip_block64": (VIT_B, {**HCLIP, "block_size": 64}, _pop_plus_dcrc(64)),
    "hclip_block256": (VIT_B, {**HCLIP, "block_size": 256}, _pop_plus_dcrc(256)),
    "hclip_no_orthogonality": (VIT_B, {**HCLIP, "text_orthogonal": False}, _pop_plus_dcrc(128)),
    "hclip_all_orthogonal": (VIT_B, {**HCLIP, "vision_orthogonal": True}, _pop_plus_dcrc(128)),
    "peft_lora": (VIT_B, {"mode": "lora", "lora_rank": 64, "lora_alpha": 64.0, "targets": ["q", "k", "v", "out"],
                          "encoders": ["vision", "text"]}, LAYERS * 4 * 64 * 2 * (V + T)),
    # 128-blocks stored as their 128*127/2 free skew-symmetric entries, 480 blocks over both encoders
    "peft_oft": (VIT_B, {"mode": "oft", "block_size": 128, "targets": ["q", "k", "v", "out"],
                         "encoders": ["vision", "text"]}, 4 * LAYERS * (V + T) // 128 * (128 * 127 // 2)),
    # every vision block but the last (run densely)
    "peft_vpt": (VIT_B, {"mode": "vpt", "vpt_length": 250, "vpt_depth": None}, 250 * V * (LAYERS - 1)),
    "peft_adapter": (VIT_B, {"mode": "adapter", "adapter_bottleneck": 128, "adapter_targets": ["attn", "mlp"],
                             "encoders": ["vision", "text"]},
                     2 * LAYERS * sum(2 * d * 128 + 128 + d for d in (V, T))),
    # scale + shift after in_proj (3d), out_proj, c_fc (4d), c_proj, ln_1, ln_2: 2 * 11 d per layer
    "peft_ssf": (VIT_B, {"mode": "ssf", "encoders": ["vision", "text"],
                         "ssf_targets": ["qkv", "out", "mlp_fc", "mlp_proj", "ln_1", "ln_2"]}, LAYERS * 2 * 11 * (V + T)),
    "catseg_frozen": (VIT_B, {"mode": "frozen"}, 0),
}


def _header(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]


def _header_clip_count(path: Path) -> int:
    match = re.search(r"--dry-run\): CLIP ([\d,]+) \+ decoder", "\n".join(_header(path)))
    assert match, f"{path.name}: the header must state the dry run's trainable CLIP count"
    return int(match.group(1).replace(",", ""))


def test_the_hand_derived_counts_match_the_documented_ones():
    # docs/peft.md's exact ViT-B/16 counts; guards the formulas above against slips
    assert (EXPECTED["hclip"][2], EXPECTED["peft_lora"][2], EXPECTED["peft_oft"][2]) == (7_867_824, 7_864_320, 3_901_440)
    assert (EXPECTED["peft_adapter"][2], EXPECTED["peft_ssf"][2], EXPECTED["peft_vpt"][2]) == (7_901_184, 337_920, 2_112_000)
    assert (EXPECTED["hclip_block64"][2], EXPECTED["hclip_block256"][2]) == (3_939_264, 15_731_244)
    assert EXPECTED["hclip_vitl"][2] == 22_034_016


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_recipe_validates_and_its_header_says_how_to_run_it(stem):
    path = RECIPES / f"{stem}.yaml"
    recipe = load_recipe(path)
    assert recipe.name == stem
    header = "\n".join(_header(path))
    assert f"ovss train recipes/{stem}.yaml --gpus 4" in header
    assert "--resume auto" in header
    assert f"ovss evaluate --bench all --checkpoint runs/{stem}/<timestamp>" in header
    published = re.search(r"mIoU A-847 / PC-459 / A-150 / PC-59 / PAS-20 / PAS-20b = ([\d.]+(?: / [\d.]+){5})", header)
    assert published, "the header must quote the paper row's six mIoU values"
    assert _header_clip_count(path) == EXPECTED[stem][2]


@pytest.mark.parametrize("stem", sorted(EXPECTED))
def test_recipe_carries_the_released_protocol_and_its_finetune_settings(stem):
    (clip, size, guidance), finetune, _ = EXPECTED[stem]
    recipe = load_recipe(RECIPES / f"{stem}.yaml")
    assert_official_protocol(recipe, clip, size, guidance)
    for key, value in finetune.items():
        assert getattr(recipe.finetune, key) == value, f"finetune.{key}"


@pytest.mark.parametrize("stem, documented", [("hclip", 7_867_824), ("peft_lora", 7_864_320)])
def test_dry_run_through_the_cli_prints_the_documented_clip_count(stem, documented):
    recipe = RECIPES / f"{stem}.yaml"
    result = runner.invoke(app, ["train", str(recipe), "clip.name=ViT-B-16", "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = re.findall(r"│ (clip/\S+)\s+│\s+\d+ │\s+([\d,]+) │", result.output)
    assert rows, result.output
    assert sum(int(count.replace(",", "")) for _, count in rows) == documented
    assert _header_clip_count(recipe) == documented
