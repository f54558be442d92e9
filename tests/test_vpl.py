"""VPL's second phase: regional semantic contrast, the decoder on a frozen CLIP, its checkpoints, exports and the
whole weakly-supervised chain on synthetic VOC-format data."""

from __future__ import annotations

import json
import math
import shlex
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.data.dataset import SegmentationSet
from ovss_cli.data.toy import toy_sample
from ovss_cli.engine.trainer import Trainer
from ovss_cli.errors import OvssError
from ovss_cli.evaluate.runner import evaluate_dataset
from ovss_cli.loading import load_segmenter
from ovss_cli.losses.rsc import label_regions, rsc_loss
from ovss_cli.methods.registry import build_model
from ovss_cli.recipes import load_recipe
from ovss_cli.runtime.distributed import DistInfo
from ovss_cli.runtime.seeding import seed_everything
from ovss_cli.wsss.prototype_store import clip_identity
from tests.helpers import write_voc

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
QUICK = RECIPES / "quickstart_vpl.yaml"
# The quickstart shrunk for tests: a 64 px crop (4 x 4 patches) and a small decoder.
SMALL = ["clip.image_size=64", "data.crop_size=64", "vpl.embed_dim=32", "vpl.heads=2", "vpl.transformer_layers=1",
         "data.batch_size=4", "train.log_every=1", "train.eval_benches=[]"]
runner = CliRunner()


# ------------------------------------------------------------------ RSC
def simplex(classes: int) -> torch.Tensor:
    """Unit vectors with equal pairwise cosine -1/(K-1) (a regular simplex)."""
    return F.normalize(torch.eye(classes) - 1.0 / classes, dim=-1)


def test_rsc_is_at_its_minimum_when_regions_equal_their_prototypes():
    tau, prototypes = 0.5, simplex(4)
    regions = prototypes.clone().requires_grad_(True)
    loss = rsc_loss(regions, torch.arange(1, 5), prototypes, tau)
    # by hand: -log(e^{1/tau} / (e^{1/tau} + 3 e^{-1/(3 tau)}))
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 3 * math.exp(-1 / (3 * tau))))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert float(regions.grad.abs().max()) < 1e-6  # a stationary point
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):  # and a minimum: every nearby region embedding scores worse
        moved = prototypes + 0.05 * torch.randn(prototypes.shape, generator=generator)
        assert float(rsc_loss(moved, torch.arange(1, 5), prototypes, tau)) > loss.item()


def test_rsc_gradient_points_a_region_toward_its_own_prototype():
    tau, prototypes = 0.1, torch.eye(3)
    region = F.normalize(prototypes[0] + prototypes[1], dim=0).requires_grad_(True)  # torn between classes 1 and 2
    rsc_loss(region[None], torch.tensor([1]), prototypes, tau).backward()
    descent = -region.grad
    # by hand: the descent direction is (v1 - v2)/2 - p3 v3, p3 = 1 / (1 + 2 e^{(1/sqrt 2)/tau})
    p3 = 1 / (1 + 2 * math.exp(1 / math.sqrt(2) / tau))
    expected = 0.5 * (prototypes[0] - prototypes[1]) - p3 * prototypes[2]
    assert torch.allclose(F.normalize(descent, dim=0), F.normalize(expected, dim=0), atol=1e-5)
    assert float(descent @ prototypes[0]) > 0 > float(descent @ prototypes[1])


def test_regions_are_masked_means_and_absent_classes_contribute_nothing():
    features = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 2, 2)  # [B, C, h, w]
    labels = torch.full((2, 4, 4), 255)
    labels[0, :2, :2] = 2  # one whole cell of image 0
    labels[0, 0, 2] = 2  # and one pixel of its top-right cell
    labels[0, 2:, :] = 0  # background: no prototype, no region
    regions, classes = label_regions(features, labels, num_classes=4)
    assert classes.tolist() == [2]  # image 1 is all ignore: nothing
    expected = (4 * features[0, :, 0, 0] + 1 * features[0, :, 0, 1]) / 5  # the nearest-upsampled masked average
    assert torch.allclose(regions[0], expected)
    empty = features.clone().requires_grad_(True)
    none, none_classes = label_regions(empty, torch.full((2, 4, 4), 255), num_classes=4)
    loss = rsc_loss(none, none_classes, simplex(3), 0.1)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(empty.grad).all() and float(empty.grad.abs().sum()) == 0.0


# ------------------------------------------------------------------ the model on frozen CLIP
def toy_pseudo_folder(folder: Path, count: int = 8) -> Path:
    """A pseudo-label folder in `ovss pseudolabel`'s format, labelled with the toy ground truth (toy class c -> c+1)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(64):
        label = toy_sample(index, "train")[1]
        cv2.imwrite(str(folder / f"toy_train_{index:05d}.png"), np.where(label == 255, 255, label + 1).astype(np.uint8))
    (folder / "pseudolabel.json").write_text(json.dumps({"method": "clip-es", "dataset": "toy", "split": "train"}))
    return folder


def prototypes_file(path: Path, recipe) -> Path:
    from ovss_cli.wsss.names import prompt_names
    from ovss_cli.wsss.prototype_store import clip_identity, save_prototypes

    vectors = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(3)), dim=-1)
    save_prototypes(path, vectors, vectors.clone(), {"clip_identity": clip_identity(recipe.clip),
                                             "class_names": list(prompt_names("toy"))})
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Six steps of the shrunk quickstart on toy pseudo-labels, with the trainer kept for inspection."""
    from ovss_cli.methods.vpl import load_training_prototypes

    base = tmp_path_factory.mktemp("vpl")
    pseudo = toy_pseudo_folder(base / "pseudo")
    recipe = load_recipe(QUICK, [*SMALL, f"data.pseudo_labels={pseudo}", "train.iterations=6",
                                 "train.checkpoint_every=3", f"vpl.prototypes={base / 'p.safetensors'}"])
    prototypes_file(base / "p.safetensors", recipe)
    seed_everything(0)
    model = build_model(recipe)
    load_training_prototypes(recipe, model)
    before = {k: v.clone() for k, v in model.dense.clip.state_dict().items()}
    trainer = Trainer(recipe, model, DistInfo(), base / "run")
    result = trainer.fit()
    return trainer, before, result, base


def test_clip_gets_no_gradient_no_optimizer_state_and_stays_bit_identical(trained):
    trainer, before, _, _ = trained
    clip = trainer.model.dense.clip
    assert all(not p.requires_grad and p.grad is None for p in clip.parameters())
    clip_ids = {id(p) for p in clip.parameters()}
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert optimised and not clip_ids & {id(p) for p in optimised}
    assert not clip_ids & {id(p) for p in trainer.optimizer.state}
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    assert all(p in trainer.optimizer.state for p in trainer.model.decoder.parameters())  # the decoder did train


def test_a_checkpoint_holds_the_decoder_and_prototypes_and_refuses_another_clip(trained, tmp_path):
    trainer, _, result, base = trained
    tensors = load_file(str(result.checkpoint))
    assert {k.split(".")[0] for k in tensors} == {"decoder", "prototypes", "clip_fingerprint"}
    stored = load_file(str(base / "p.safetensors"))["prototypes"]
    assert torch.equal(tensors["prototypes"], stored)
    model = load_segmenter(result.checkpoint)
    assert all(torch.equal(v, tensors[k]) for k, v in model.state_dict().items())
    # the same run's recipe pointed at other CLIP weights: loading refuses
    from ovss_cli.clip.zoo import create_clip

    other = tmp_path / "other_tiny.pt"
    torch.save(create_clip("ovss-tiny", random_init_seed=1).state_dict(), other)
    copy = tmp_path / "ckpt"
    shutil.copytree(result.checkpoint.parent, copy)
    sidecar = copy / result.checkpoint.with_suffix(".json").name
    meta = json.loads(sidecar.read_text())
    meta["recipe"]["clip"]["pretrained"] = str(other)
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(OvssError, match="other CLIP weights"):
        load_segmenter(copy / result.checkpoint.name)


def test_a_vpl_run_resumes_to_the_same_decoder(trained, tmp_path):
    trainer, _, result, base = trained
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for path in (base / "run" / "checkpoints").glob("step_00000003*"):
        shutil.copy(path, run / "checkpoints" / path.name)
    model = build_model(trainer.recipe)  # prototypes left at zero: the checkpoint brings them back
    resumed = Trainer(trainer.recipe, model, DistInfo(), run).fit(resume="auto")
    assert resumed.step == 6
    expected, got = load_file(str(result.checkpoint)), load_file(str(resumed.checkpoint))
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.parametrize("fmt", ["open_clip", "onnx"])
def test_export_of_a_vpl_checkpoint_scores_like_the_checkpoint(trained, tmp_path, fmt):
    _, _, result, _ = trained
    model = load_segmenter(result.checkpoint)
    names = ["sky", "grass", "water"]
    model.set_vocabulary(names)
    images = torch.randn(1, 3, 64, 64)
    expected = model.scores(images)
    out = tmp_path / ("export" if fmt == "open_clip" else "model.onnx")
    args = ["export", str(result.checkpoint), "--format", fmt, "--out", str(out)]
    done = runner.invoke(app, [*args, *(["--classes", ", ".join(names)] if fmt == "onnx" else [])])
    assert done.exit_code == 0, done.output
    if fmt == "open_clip":
        exported = load_segmenter(out)
        exported.set_vocabulary(names)
        assert torch.allclose(exported.scores(images), expected, atol=1e-5)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out))
        scores = session.run(None, {"images": images.numpy()})[0]
        assert np.allclose(scores, expected.numpy(), atol=1e-4)


def test_a_vpl_model_segments_only_its_classes(trained):
    model = load_segmenter(trained[2].checkpoint)
    with pytest.raises(Exception, match="not one of them"):
        model.set_vocabulary(["sky", "cat"])


# ------------------------------------------------------------------ recipes
@pytest.mark.parametrize("file, iterations, bench, box", [("vpl_voc.yaml", 30_000, "voc21", 0.4),
                                                          ("vpl_coco.yaml", 80_000, "coco81", 0.7)])
def test_vpl_recipes_carry_the_protocol(file, iterations, bench, box):
    from ovss_cli.commands.wsss import default_wsss_recipe
    from ovss_cli.recipes import recipe_from_dict

    recipe = load_recipe(RECIPES / file)
    assert (recipe.clip.name, recipe.clip.pretrained, recipe.clip.templates) == ("ViT-B-16", "openai",
                                                                                   ["a clean origami {}."])
    assert (recipe.data.crop_size, recipe.data.batch_size, recipe.train.iterations) == (320, 4, iterations)
    optim = recipe.optim
    assert (optim.lr, optim.lr * recipe.vpl.head_lr_multiplier, optim.weight_decay) == pytest.approx((2e-4, 2e-3, 0.01))
    assert (optim.schedule, optim.warmup_iters, recipe.train.eval_benches) == ("poly", 50, [bench])
    assert (recipe.vpl.rsc_weight, recipe.vpl.rsc_tau, recipe.clip_es.box_threshold) == (0.1, 0.1, box)
    # the built-in defaults of `ovss pseudolabel` / `ovss prototypes` are this recipe's settings
    defaults = recipe_from_dict(default_wsss_recipe(recipe.data.benchmark.split("-")[0]))
    assert (defaults.clip, defaults.clip_es, defaults.prototypes) == (
        recipe.clip.__class__(**{**recipe.clip.__dict__, "image_size": defaults.clip.image_size}),
        recipe.clip_es, recipe.prototypes)


def test_a_vpl_recipe_without_pseudo_labels_or_prototypes_says_what_to_run(tmp_path):
    missing = runner.invoke(app, ["train", str(QUICK)])
    assert missing.exit_code == 2 and "ovss pseudolabel" in missing.output
    pseudo = toy_pseudo_folder(tmp_path / "pseudo")
    no_prototypes = runner.invoke(app, ["train", str(QUICK), f"data.pseudo_labels={pseudo}", "--output",
                                        str(tmp_path / "run")])
    assert no_prototypes.exit_code == 2 and "--prototypes FILE" in no_prototypes.output


# ------------------------------------------------------------------ the chain
def test_the_chain_prototypes_pseudolabel_train_evaluate_on_voc_format_data(tmp_path):
    ids = write_voc(tmp_path / "data", count=4)
    data = tmp_path / "data"
    common = ["--recipe", str(RECIPES / "vpl_voc.yaml"), "--clip-model", "ovss-tiny", "--data-root", str(data)]
    protos = tmp_path / "p.safetensors"
    made = runner.invoke(app, ["prototypes", *common, "--split", "train_aug", "--steps", "20", "--out", str(protos)])
    assert made.exit_code == 0, made.output
    pseudo = tmp_path / "pseudo"
    labelled = runner.invoke(app, ["pseudolabel", *common, "--method", "vpl", "--prototypes", str(protos),
                                   "--split", "train_aug", "--no-crf", "--out", str(pseudo)])
    assert labelled.exit_code == 0, labelled.output
    line = labelled.output.strip().splitlines()[-1].strip()
    command = shlex.split(line)
    assert command[:3] == ["ovss", "train", str(RECIPES / "vpl_voc.yaml")] and "--prototypes" in command
    run = tmp_path / "run"
    small = [*SMALL, "train.iterations=50", "train.checkpoint_every=50", "data.workers=0", "train.device=cpu",
             "train.precision=fp32", "optim.warmup_iters=0", "optim.lr=5e-4", "data.color_jitter=false"]
    done = runner.invoke(app, [*command[1:], *small, "--output", str(run)])  # the printed line, as printed
    assert done.exit_code == 0, done.output
    scored = runner.invoke(app, ["evaluate", "--bench", "voc21", "--checkpoint", str(run), "--data-root", str(data),
                                 "--mode", "whole"])
    assert scored.exit_code == 0 and "mIoU" in scored.output, scored.output
    # Against its own labels, the trained decoder beats its untrained start on the pseudo-labelled classes.
    pseudo_root = tmp_path / "pseudo_root"
    shutil.copytree(data, pseudo_root)
    for image_id in ids:
        shutil.copy(pseudo / f"{image_id}.png", pseudo_root / "VOCdevkit/VOC2012/SegmentationClassAug")
    target = SegmentationSet("voc21", pseudo_root)
    recipe = load_recipe(run / "recipe.yaml")
    seed_everything(recipe.seed)
    untrained = build_model(recipe).eval()
    before = evaluate_dataset(untrained, target, "whole", DistInfo(), show_progress=False)["mIoU"]
    after = evaluate_dataset(load_segmenter(run), target, "whole", DistInfo(), show_progress=False)["mIoU"]
    print(f"agreement with the pseudo-labels (mIoU): untrained {before:.1f}, trained {after:.1f}")
    assert after > before + 10, (before, after)


def test_prototypes_name_the_activation_of_the_clip_they_were_learnt_with():
    from ovss_cli.clip.config import ClipConfig

    auto = clip_identity(ClipConfig(name="ViT-B-16", pretrained="openai"))
    gelu = clip_identity(ClipConfig(name="ViT-B-16", pretrained="openai", quick_gelu=False))
    assert auto == "ViT-B-16|openai|quick_gelu=auto" and gelu != auto  # same weights, another network
