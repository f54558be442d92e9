"""CLIP weights in every published form load to the same network, built with the activation the weights were trained with.

A tiny QuickGELU CLIP is saved as an OpenAI-style TorchScript archive (traced and scripted), an
open_clip state dict, safetensors and a hub folder; each must load to bit-identical tensors and
the same activation. ovss's dense features are checked against a plain open_clip forward.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import open_clip
import pytest
import torch
import yaml
from safetensors.torch import save_file

from ovss_cli.clip.dense import DenseCLIP
from ovss_cli.clip.norm import OPENAI_NORM, ImageNorm
from ovss_cli.clip.zoo import create_clip, open_clip_warnings_as_errors, uses_quick_gelu
from ovss_cli.errors import OvssError, UsageError

INCEPTION = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def quick_tiny():
    model = create_clip("ovss-tiny", quick_gelu=True, random_init_seed=3).eval()
    assert uses_quick_gelu(model)
    return model


def example_inputs():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 64, 64, generator=generator), open_clip.get_tokenizer("ovss-tiny")(["a cat"])


def save_torchscript(model, path, how: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer notes
        module = torch.jit.trace(model, example_inputs(), check_trace=False) if how == "traced" else torch.jit.script(model)
        torch.jit.save(module, str(path))
    return path


def save_folder(model, directory, file_name: str, quick_gelu: bool = True, mean=INCEPTION):
    directory.mkdir()
    config = {"model_cfg": {**open_clip.get_model_config("ovss-tiny"), "quick_gelu": quick_gelu},
              "preprocess_cfg": {"mean": list(mean), "std": list(mean), "interpolation": "bilinear"}}
    (directory / "open_clip_config.json").write_text(json.dumps(config))
    tensors = {key: value.contiguous() for key, value in model.state_dict().items()}
    if file_name.endswith(".safetensors"):
        save_file(tensors, str(directory / file_name))
    else:
        torch.save(tensors, directory / file_name)
    return directory


def save_form(model, tmp_path, form: str):
    if form in ("traced", "scripted"):
        return save_torchscript(model, tmp_path / f"{form}.pt", form)
    if form == "state dict":
        torch.save(model.state_dict(), tmp_path / "tiny.pt")
        return tmp_path / "tiny.pt"
    if form == "safetensors":
        save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
        return tmp_path / "tiny.safetensors"
    return save_folder(model, tmp_path / "hub", form)


def assert_same_tensors(loaded, reference):
    expected = reference.state_dict()
    state = loaded.state_dict()
    assert set(state) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


@pytest.mark.parametrize("form", ["traced", "scripted", "open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_self_describing_forms_load_bit_identical_with_their_activation(quick_tiny, tmp_path, form):
    loaded = create_clip("ovss-tiny", str(save_form(quick_tiny, tmp_path, form)))  # quick_gelu: auto
    assert_same_tensors(loaded, quick_tiny)
    assert uses_quick_gelu(loaded)  # ovss-tiny's own config says GELU: the weights decided


@pytest.mark.parametrize("form", ["state dict", "safetensors"])
def test_plain_state_dicts_load_bit_identical_with_the_requested_activation(quick_tiny, tmp_path, form):
    path = str(save_form(quick_tiny, tmp_path, form))
    loaded = create_clip("ovss-tiny", path, quick_gelu=True)
    assert_same_tensors(loaded, quick_tiny)
    assert uses_quick_gelu(loaded)
    # They record no activation: auto falls back to the model config's (GELU for ovss-tiny).
    assert not uses_quick_gelu(create_clip("ovss-tiny", path))


def test_torchscript_activation_is_read_from_the_archive(tmp_path):
    gelu = create_clip("ovss-tiny", random_init_seed=4).eval()
    loaded = create_clip("ovss-tiny", str(save_torchscript(gelu, tmp_path / "gelu.pt", "traced")))
    assert not uses_quick_gelu(loaded)
    assert_same_tensors(loaded, gelu)


def test_quick_gelu_weights_are_refused_in_a_gelu_config(quick_tiny, tmp_path):
    archive = str(save_torchscript(quick_tiny, tmp_path / "openai.pt", "traced"))
    folder = str(save_folder(quick_tiny, tmp_path / "hub", "open_clip_model.safetensors"))
    for path in (archive, folder):
        with pytest.raises(UsageError, match="clip.quick_gelu=false contradicts .* trained with QuickGELU"):
            create_clip("ovss-tiny", path, quick_gelu=False)


def test_hub_folder_normalisation_reaches_the_dense_model(quick_tiny, tmp_path):
    folder = save_folder(quick_tiny, tmp_path / "hub", "open_clip_model.safetensors")
    dense = DenseCLIP(create_clip("ovss-tiny", str(folder)), 64)
    assert dense.norm == ImageNorm(INCEPTION, INCEPTION, "bilinear")
    image = torch.full((3, 2, 2), 255.0)
    assert torch.allclose(dense.norm.normalize(image), torch.ones(3, 2, 2))  # (1 - 0.5) / 0.5
    # an explicit recipe value wins over the folder's
    override = create_clip("ovss-tiny", str(folder), norm={"mean": [0.0, 0.0, 0.0], "std": None})
    assert DenseCLIP(override, 64).norm.mean == (0.0, 0.0, 0.0) and DenseCLIP(override, 64).norm.std == INCEPTION


def test_text_context_and_missing_tensors_are_one_line_errors(quick_tiny, tmp_path):
    state = {key: value.contiguous() for key, value in quick_tiny.state_dict().items()}
    short = {**state, "positional_embedding": state["positional_embedding"][:64].clone()}
    save_file(short, str(tmp_path / "short.safetensors"))
    with pytest.raises(OvssError, match="text context of 64 tokens, model ovss-tiny 77"):
        create_clip("ovss-tiny", str(tmp_path / "short.safetensors"))
    partial = {key: value for key, value in state.items() if key != "ln_final.weight"}
    save_file({**partial, "extra.weight": torch.zeros(2)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(OvssError, match=r"1 missing \(ln_final.weight\); 1 unexpected \(extra.weight\)"):
        create_clip("ovss-tiny", str(tmp_path / "partial.safetensors"))


@pytest.fixture
def tiny_tag(monkeypatch, quick_tiny, tmp_path):
    """An open_clip pretrained tag for ovss-tiny, as open_clip lists its own: QuickGELU, Inception statistics, a local file."""
    path = tmp_path / "tag.safetensors"
    save_file({key: value.contiguous() for key, value in quick_tiny.state_dict().items()}, str(path))
    cfg = {"file": str(path), "mean": INCEPTION, "std": INCEPTION, "interpolation": "bicubic", "quick_gelu": True}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "ovss-tiny", {"tinytag": cfg})
    return "tinytag"


def test_tag_config_gives_activation_and_normalisation_with_or_without_weights(quick_tiny, tiny_tag):
    loaded = create_clip("ovss-tiny", tiny_tag)
    assert_same_tensors(loaded, quick_tiny)
    for model in (loaded, create_clip("ovss-tiny", tiny_tag, load_weights=False)):
        assert uses_quick_gelu(model)
        assert DenseCLIP(model, 64).norm == ImageNorm(INCEPTION, INCEPTION, "bicubic")


def test_openai_tag_builds_quick_gelu_and_openai_statistics_without_download():
    model = create_clip("ViT-B-16", "openai", load_weights=False)
    assert uses_quick_gelu(model) and DenseCLIP(model, 224).norm == OPENAI_NORM


def test_official_catseg_recipe_converts_into_a_quick_gelu_model():
    """`ovss convert` builds the recipe's model without weights: it must still be OpenAI's QuickGELU CLIP."""
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe

    assert build_model(load_recipe("recipes/catseg_vitb.yaml"), pretrained=False).dense.quick_gelu


def test_open_clip_mismatch_warnings_become_errors(tiny_tag, tmp_path):
    # open_clip itself only warns (warnings.warn) when a GELU config meets QuickGELU tag weights
    with pytest.raises(OvssError, match="QuickGELU mismatch"):
        with open_clip_warnings_as_errors("loading"):
            open_clip.create_model("ovss-tiny", pretrained=tiny_tag)
    # and only logs (logging.warning) when it cannot load tower weights
    with pytest.raises(OvssError, match="open_clip warned while loading: Invalid file path"):
        with open_clip_warnings_as_errors("loading"):
            open_clip.create_model("ovss-tiny", pretrained_image_path=str(tmp_path / "absent.pt"))
    with pytest.warns(UserWarning, match="not from open_clip"):  # other libraries' warnings go on as usual
        with open_clip_warnings_as_errors("building"):
            open_clip.create_model("ovss-tiny", pretrained=None)  # its "no weights loaded" note: ovss loads them itself
            warnings.warn("not from open_clip")


def test_checkpoint_records_activation_and_refuses_another(tmp_path):
    from ovss_cli.clip.config import check_checkpoint_clip
    from ovss_cli.engine.trainer import checkpoint_sidecar
    from ovss_cli.loading import load_segmenter
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import recipe_from_dict
    from ovss_cli.runtime.checkpoint import read_sidecar, save_checkpoint

    data = yaml.safe_load(open("recipes/quickstart.yaml", encoding="utf-8"))
    data["clip"].update(quick_gelu=True, image_mean=list(INCEPTION))
    recipe = recipe_from_dict(data)
    model = build_model(recipe).eval()
    weights = save_checkpoint(tmp_path, "best", model, checkpoint_sidecar(recipe, model, step=1))
    sidecar = read_sidecar(weights)
    assert sidecar["clip"]["quick_gelu"] is True and sidecar["clip"]["image_mean"] == list(INCEPTION)
    assert sidecar["clip"]["image_std"] == list(OPENAI_NORM.std)

    reloaded = load_segmenter(weights)
    assert reloaded.dense.quick_gelu and reloaded.image_norm == model.image_norm
    gelu = build_model(recipe_from_dict({**data, "clip": {**data["clip"], "quick_gelu": False}}))
    with pytest.raises(OvssError, match="trained with QuickGELU CLIP but the model it is loaded into runs GELU"):
        check_checkpoint_clip(gelu.dense, sidecar, str(weights))
    # a sidecar whose recipe was edited to GELU is refused by load_segmenter too
    sidecar["recipe"]["clip"]["quick_gelu"] = False
    weights.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(OvssError, match="trained with QuickGELU"):
        load_segmenter(weights)


def test_sidecars_from_before_activation_records_load_as_gelu_with_openai_statistics(tmp_path):
    from ovss_cli.engine.trainer import checkpoint_sidecar
    from ovss_cli.loading import load_segmenter
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import recipe_from_dict
    from ovss_cli.runtime.checkpoint import save_checkpoint

    data = yaml.safe_load(open("recipes/quickstart.yaml", encoding="utf-8"))
    recipe = recipe_from_dict(data)
    model = build_model(recipe).eval()
    sidecar = checkpoint_sidecar(recipe, model, step=1)
    sidecar["recipe"]["clip"] = dict(data["clip"])  # the old sidecar recorded the recipe's keys only
    weights = save_checkpoint(tmp_path, "best", model, sidecar)
    reloaded = load_segmenter(weights)
    assert not reloaded.dense.quick_gelu and reloaded.image_norm == OPENAI_NORM


def test_dense_features_equal_a_plain_open_clip_forward(quick_tiny, tmp_path):
    """Where ovss and open_clip compute the same thing (every block but the dense last one, and the
    class token through the regular last block), they agree on the same weights and activation."""
    archive = save_torchscript(quick_tiny, tmp_path / "openai.pt", "traced")
    save_file({key: value.contiguous() for key, value in quick_tiny.state_dict().items()}, str(tmp_path / "w.safetensors"))
    dense = DenseCLIP(create_clip("ovss-tiny", str(archive)), 64).eval()
    reference = open_clip.create_model("ovss-tiny", pretrained=str(tmp_path / "w.safetensors"), force_quick_gelu=True).eval()
    gelu_reference = open_clip.create_model("ovss-tiny", pretrained=str(tmp_path / "w.safetensors")).eval()
    images, tokens = example_inputs()
    layers = list(range(dense.vision_layers - 1))

    def block_outputs(model):
        outputs = []
        hooks = [block.register_forward_hook(lambda module, args, out: outputs.append(out))
                 for block in model.visual.transformer.resblocks]
        with torch.no_grad():
            embedding = model.encode_image(images)
        for hook in hooks:
            hook.remove()
        return outputs, embedding

    with torch.no_grad():
        features = dense.encode_image_dense(images, layers)
        x, _ = dense._embed_patches(images)
        for block in dense.clip.visual.transformer.resblocks:
            x = block(x)
        cls = dense.clip.visual.ln_post(x[:, 0]) @ dense.clip.visual.proj
    outputs, embedding = block_outputs(reference)
    gelu_outputs, _ = block_outputs(gelu_reference)
    for layer, guidance in zip(layers, features.guidance):
        patches = outputs[layer][:, 1:].transpose(1, 2).reshape(guidance.shape)
        assert (guidance - patches).abs().max() < 1e-5, layer
        gelu_patches = gelu_outputs[layer][:, 1:].transpose(1, 2).reshape(guidance.shape)
        assert (guidance - gelu_patches).abs().max() > 1e-4  # the activation is visible at this tolerance
    assert (cls - embedding).abs().max() < 1e-5
    with torch.no_grad():
        assert (dense.encode_text(tokens) - reference.encode_text(tokens)).abs().max() < 1e-5


def test_clip_es_inputs_use_the_models_statistics_and_interpolation(quick_tiny, tmp_path):
    from ovss_cli.wsss.clip_features import ClipEsBackbone

    folder = save_folder(quick_tiny, tmp_path / "hub", "open_clip_model.safetensors")  # 0.5 statistics, bilinear
    backbone = ClipEsBackbone(create_clip("ovss-tiny", str(folder)))
    image = torch.randint(0, 256, (32, 48, 3), dtype=torch.uint8).numpy()
    assert torch.allclose(backbone.prepare_image(image)[0], torch.from_numpy(image).permute(2, 0, 1) / 127.5 - 1, atol=1e-6)
    from PIL import Image

    resized = backbone.prepare_image(image, scale=2.0)[0]  # 64 x 96, resized with the weights' bilinear
    expected = torch.from_numpy(np.array(Image.fromarray(image).resize((96, 64), Image.BILINEAR))).permute(2, 0, 1)
    assert torch.allclose(resized, expected / 127.5 - 1, atol=1e-6)


def test_text_cache_key_names_the_activation(quick_tiny, tmp_path):
    from ovss_cli.clip.config import ClipConfig, build_dense_clip

    path = str(save_form(quick_tiny, tmp_path, "safetensors"))
    keys = {build_dense_clip(ClipConfig(name="ovss-tiny", pretrained=path, image_size=64, quick_gelu=flag))[1].model_id
            for flag in (True, False)}
    assert len(keys) == 2 and any(key.endswith("|QuickGELU") for key in keys)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would create the marker folder
        import os

        return os.makedirs, (self.marker,)


def test_clip_weights_that_run_code_are_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"visual.proj": torch.zeros(2), "payload": _RunsCode(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(OvssError, match="neither a TorchScript archive nor a state dict of tensors"):
        create_clip("ovss-tiny", str(tmp_path / "evil.pt"))
    assert not marker.exists()
