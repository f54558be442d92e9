"""`ovss convert`: official CAT-Seg checkpoints -> ovss checkpoints, on the tiny CLIP.

The synthetic "official" file is made by an independent inverse mapping written here (ovss keys ->
the official detectron2 names and layouts), so a wrong rule in either direction breaks a round trip.
"""

import json

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from ovss_cli import cli
from ovss_cli.loading import load_segmenter
from ovss_cli.methods.registry import build_model
from ovss_cli.recipes import load_recipe

runner = CliRunner()
CLIP = "sem_seg_head.predictor.clip_model."
AGGREGATOR = "sem_seg_head.predictor.transformer."
STAGE_PARTS = {"up": "up", "conv1": "conv.double_conv.0", "norm1": "conv.double_conv.1",
               "conv2": "conv.double_conv.3", "norm2": "conv.double_conv.4"}


def official_aggregator_name(name: str) -> str:
    """ovss decoder key (without 'decoder.') -> official Aggregator key."""
    parts = name.split(".")
    if parts[0] == "cost_embed":
        return ".".join(["conv1", *parts[1:]])
    if parts[0] == "appearance_guidance":
        return ".".join(["guidance_projection", *parts[1:]])
    if parts[0] == "text_guidance":
        return ".".join(["text_guidance_projection", *parts[1:]])
    if parts[0] == "upsampler":
        if parts[1] == "guidance_projections":
            return ".".join(["decoder_guidance_projection", *parts[2:]])
        if parts[1] == "head":
            return ".".join(["head", *parts[2:]])
        if parts[1] == "stages":
            return f"decoder{int(parts[2]) + 1}.{STAGE_PARTS[parts[3]]}.{parts[4]}"
    if parts[0] == "layers":
        layer = parts[1]
        if parts[2] == "spatial":
            if parts[3] == "guidance_norm":
                return f"layers.{layer}.swin_block.guidance_norm.{parts[4]}"
            rest = parts[5:]
            if rest[0] == "mlp":
                rest = ["mlp", {"0": "fc1", "2": "fc2"}[rest[1]], *rest[2:]]
            return ".".join([f"layers.{layer}.swin_block.block_{int(parts[4]) + 1}", *rest])
        if parts[2] == "classes":
            rest = parts[3:]
            if rest[0] in ("q", "k", "v"):
                return ".".join([f"layers.{layer}.attention.attention", *rest])
            if rest[0] == "mlp":
                return ".".join([f"layers.{layer}.attention.MLP", *rest[1:]])
            if rest[0] == "padding_token":
                return f"layers.{layer}.attention.padding_tokens"
            return ".".join([f"layers.{layer}.attention", *rest])
    raise AssertionError(f"no official name for decoder.{name}")


def to_official(ours: dict) -> dict:
    """An ovss CAT-Seg state dict as the official detectron2 model's state dict."""
    official, fused = {}, {}
    for key, tensor in ours.items():
        if key.startswith("dense.clip."):
            name = key[len("dense.clip."):]
            if ".parametrizations.in_proj_weight." in name:
                attn, part = name.split(".parametrizations.in_proj_weight.")
                fused.setdefault(attn, {})[part] = tensor
            else:
                official[CLIP + name] = tensor
        elif key.startswith("decoder.upsampler.guidance_upsamplers."):
            index, kind = key.split(".")[-2:]
            official[f"upsample{int(index) + 1}.{kind}"] = tensor
        else:
            name = official_aggregator_name(key[len("decoder."):])
            official[AGGREGATOR + name] = tensor.reshape(1, 1, -1) if "padding_" in name else tensor
    for attn, parts in fused.items():
        _, k, _ = parts["original"].chunk(3)
        official[f"{CLIP}{attn}.q_proj_weight"] = parts["0.q"]
        official[f"{CLIP}{attn}.k_proj_weight"] = k
        official[f"{CLIP}{attn}.v_proj_weight"] = parts["0.v"]
    return official


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    """quickstart with class padding on, so the official (1, 1, C) padding tokens are part of the round trip."""
    data = yaml.safe_load(open("recipes/quickstart.yaml", encoding="utf-8"))
    data["decoder"]["pad_len"] = 8
    path = tmp_path_factory.mktemp("recipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def original(recipe_path):
    """The tiny CAT-Seg with every tensor random; fused q/v rows kept equal to the trainable q/v (a trained model's state)."""
    model = build_model(load_recipe(recipe_path), pretrained=False)
    generator = torch.Generator().manual_seed(0)
    state = {key: torch.randn(value.shape, generator=generator) * 0.2 for key, value in model.state_dict().items()}
    for key in state:
        if key.endswith(".parametrizations.in_proj_weight.original"):
            prefix = key[: -len("original")]
            _, k, _ = state[key].chunk(3)
            state[key] = torch.cat([state[prefix + "0.q"], k, state[prefix + "0.v"]])
    model.load_state_dict(state)
    return model.eval()


def write_official(path, state, wrap=True):
    torch.save({"model": state, "iteration": 79999} if wrap else state, path)


def run_convert(source, recipe, out):
    return runner.invoke(cli.app, ["convert", str(source), "--recipe", str(recipe), "--out", str(out)])


def test_round_trip_every_tensor_and_scores(tmp_path, recipe_path, original):
    official = to_official(original.state_dict())
    # ViT-B's shifted Swin block carries its window mask as a buffer; it is derived, not learnt
    official[AGGREGATOR + "layers.0.swin_block.block_2.attn_mask"] = torch.zeros(4, 36, 36)
    write_official(tmp_path / "model_final.pth", official)

    result = run_convert(tmp_path / "model_final.pth", recipe_path, tmp_path / "out")
    assert result.exit_code == 0, result.output

    written = load_file(str(tmp_path / "out" / "checkpoints" / "best.safetensors"))
    expected = original.state_dict()
    assert set(written) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(written[key], tensor), key
    sidecar = json.loads((tmp_path / "out" / "checkpoints" / "best.json").read_text())
    assert sidecar["method"] == "catseg" and sidecar["finetune_mode"] == "attention"
    assert sidecar["converted_from"] == "model_final.pth" and sidecar["window"] == 96

    loaded = load_segmenter(tmp_path / "out")
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    classes = ["cat", "grass", "sky"]
    original.set_vocabulary(classes)
    loaded.set_vocabulary(classes)
    reference = original.scores(images)
    assert reference.std() > 0
    assert torch.equal(loaded.scores(images), reference)


def test_pretraining_grid_positions_are_resized_bicubically(tmp_path, recipe_path, original):
    official = to_official(original.state_dict())
    # the official CLIP keeps ovss-tiny's pre-training grid (64 px / 16 = 4x4) and resizes on the fly
    positions = torch.randn(1 + 4 * 4, 64, generator=torch.Generator().manual_seed(2))
    official[CLIP + "visual.positional_embedding"] = positions
    write_official(tmp_path / "model_base.pth", official, wrap=False)

    result = run_convert(tmp_path / "model_base.pth", recipe_path, tmp_path / "out")
    assert result.exit_code == 0, result.output

    grid = positions[1:].T.reshape(1, 64, 4, 4)
    resized = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).reshape(64, 36).T
    written = load_file(str(tmp_path / "out" / "checkpoints" / "best.safetensors"))
    assert torch.equal(written["dense.clip.visual.positional_embedding"], torch.cat([positions[:1], resized]))


@pytest.mark.parametrize("change", ["missing", "extra", "half_split"])
def test_unmatched_keys_are_one_line_and_exit_1(tmp_path, recipe_path, original, change):
    official = to_official(original.state_dict())
    if change == "missing":
        removed = AGGREGATOR + "layers.0.attention.MLP.0.weight"
        del official[removed]
        named = "decoder.layers.0.classes.mlp.0.weight"
    elif change == "extra":
        named = CLIP + "visual.transformer.prompt_tokens"
        official[named] = torch.zeros(1, 4, 64)
    else:
        named = CLIP + "transformer.resblocks.1.attn.k_proj_weight"
        del official[named]
        named = CLIP + "transformer.resblocks.1.attn.q_proj_weight"
    write_official(tmp_path / "model_final.pth", official)

    result = run_convert(tmp_path / "model_final.pth", recipe_path, tmp_path / "out")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and named in lines[0]
    assert not (tmp_path / "out" / "checkpoints" / "best.safetensors").exists()


def test_wrong_backbone_shape_names_the_recipes(tmp_path, recipe_path, original):
    official = to_official(original.state_dict())
    official[AGGREGATOR + "conv1.weight"] = torch.zeros(32, 1, 5, 5)
    write_official(tmp_path / "model_final.pth", official)
    result = run_convert(tmp_path / "model_final.pth", recipe_path, tmp_path / "out")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "decoder.cost_embed.weight" in lines[0] and "catseg_vitl.yaml" in lines[0]


@pytest.mark.parametrize("content", ["garbage", "pickled_object", "tensor_list"])
def test_not_a_checkpoint_is_one_line(tmp_path, recipe_path, content):
    source = tmp_path / "model_final.pth"
    if content == "garbage":
        source.write_bytes(b"this is not a checkpoint\n" * 10)
    elif content == "pickled_object":
        torch.save({"model": {"w": torch.zeros(1)}, "config": torch.nn.Linear(1, 1)}, source)
    else:
        torch.save([torch.zeros(2)], source)
    result = run_convert(source, recipe_path, tmp_path / "out")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "model_final.pth" in lines[0]
