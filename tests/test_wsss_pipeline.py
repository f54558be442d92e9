"""CLIP-ES / VPL end to end on a tiny CLIP: features, CAMs, datasets, resumable output and the CLI."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from ovss_cli.cli import friendly_errors
from ovss_cli.clip.dense import resize_pos_embed
from ovss_cli.clip.zoo import create_clip
from ovss_cli.commands import wsss as wsss_commands
from ovss_cli.data.image_labels import mask_labels, open_image_label_set
from ovss_cli.data.io import read_label, write_label
from ovss_cli.errors import OvssError
from ovss_cli.fileio import TEMP_MARK, remove_temporaries, temporary_path
from ovss_cli.wsss.clip_es import ClipEsCams, pseudo_label
from ovss_cli.wsss.clip_features import ClipEsBackbone, block_after_ln1
from ovss_cli.wsss.config import ClipEsConfig
from ovss_cli.wsss.gradcam import gradcam_map, softmax_scores
from ovss_cli.wsss.names import background_words, prompt_names
from ovss_cli.wsss.writer import is_finished, label_path
from tests.helpers import reference_miou, write_voc

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny():
    return create_clip("ovss-tiny")


def encode_prompts(model, names):
    """Unit text embeddings of CLIP-ES's prompt for `names`, through ovss's TextEncoder."""
    from ovss_cli.clip.dense import DenseCLIP
    from ovss_cli.clip.text import TextEncoder
    from ovss_cli.wsss.names import CLIP_ES_TEMPLATE

    text = TextEncoder("ovss-tiny", [CLIP_ES_TEMPLATE], join_synonyms=True)
    dense = DenseCLIP(model, int(model.visual.image_size[0]))
    return torch.nn.functional.normalize(text.embed_classes(dense, list(names))[:, 0], dim=-1)


@pytest.fixture(scope="module")
def app():
    cli = typer.Typer()
    cli.command("prototypes")(friendly_errors(wsss_commands.prototypes))
    cli.command("pseudolabel")(friendly_errors(wsss_commands.pseudolabel))
    return cli


# ------------------------------------------------------------------ features and CAMs
def test_backbone_reproduces_open_clip_at_native_size(tiny):
    backbone = ClipEsBackbone(tiny)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    tensor = backbone.prepare_image(image)
    frozen = backbone.frozen_layers(tensor)
    last = backbone.last_block(frozen.tokens)
    visual = tiny.visual
    visual.output_tokens = True
    try:
        _, tokens = visual(tensor)
    finally:
        visual.output_tokens = False
    assert torch.allclose(last.patch_embeddings, tokens[0] @ visual.proj, atol=1e-5)
    assert torch.allclose(last.image_embedding, (tokens[0] @ visual.proj).mean(0), atol=1e-5)
    assert len(frozen.attentions) == 2 and frozen.grid == (4, 4)
    for attention in [*frozen.attentions, last.attention]:
        assert torch.allclose(attention.sum(-1), torch.ones(17), atol=1e-5)
    x = torch.randn(1, 17, 64)
    block = visual.transformer.resblocks[0]
    assert torch.allclose(block_after_ln1(block, x, block.ln_1(x))[0], block(x), atol=1e-5)


def test_images_become_patch_multiples_and_positions_interpolate(tiny):
    backbone = ClipEsBackbone(tiny)
    assert backbone.prepare_image(np.zeros((50, 70, 3), np.uint8)).shape == (1, 3, 64, 80)
    assert backbone.prepare_image(np.zeros((50, 70, 3), np.uint8), scale=0.5).shape == (1, 3, 32, 48)
    pos = torch.cat([torch.randn(1, 8), torch.full((16, 8), 0.3)])
    assert torch.equal(resize_pos_embed(pos, (4, 4), (4, 4), mode="bilinear"), pos)
    resized = resize_pos_embed(pos, (5, 6), (4, 4), mode="bilinear")
    assert resized.shape == (31, 8) and torch.equal(resized[0], pos[0])
    assert torch.allclose(resized[1:], torch.full((30, 8), 0.3), atol=1e-6)


def test_one_graph_gradcams_equal_a_fresh_pass_per_class(tiny):
    backbone = ClipEsBackbone(tiny)
    names = ("cat", "dog", "sky", "road")
    text = encode_prompts(tiny, names)
    image = np.random.default_rng(1).integers(0, 255, (48, 80, 3)).astype(np.uint8)
    cams = ClipEsCams(backbone, text[:2], text[2:], ClipEsConfig())
    result = cams(image, [1, 2])
    frozen = backbone.frozen_layers(backbone.prepare_image(image))
    for k in range(2):  # reference: CLIP-ES re-runs the last block for every class
        with torch.enable_grad():
            last = backbone.last_block(frozen.tokens)
            score = softmax_scores(last.image_embedding, text, 100.0)[k]
            (gradient,) = torch.autograd.grad(score, last.activation)
        expected = gradcam_map(last.activation[0, 1:].detach(), gradient[0, 1:])
        assert torch.allclose(result.gradcams[k], expected, atol=1e-5)
    assert result.cams.shape == (2, 48, 80) and result.patch_cams.shape == (2, 15)
    assert float(result.cams.min()) >= 0 and float(result.cams.max()) <= 1 + 1e-5


def test_batched_cams_and_labels_equal_one_at_a_time(tiny):
    text = encode_prompts(tiny, ("cat", "dog", "bird", "sky", "road"))
    rng = np.random.default_rng(3)
    # Sizes: two share the resized 48 x 80 (a batch of two), one 48 x 80 alone in its own chunk, others differ.
    sizes = [(48, 80), (45, 78), (64, 48), (48, 80), (33, 50), (64, 48)]
    images = [rng.integers(0, 255, (*size, 3)).astype(np.uint8) for size in sizes]
    keys = [[1, 3], [2], [1, 2, 3], [3], [], [2, 1]]
    for scales in ((1.0,), (1.0, 0.5)):
        config = ClipEsConfig(scales=scales)
        cams = ClipEsCams(ClipEsBackbone(tiny), text[:3], text[3:], config)
        batched = cams.batch(images, keys, max_batch=2)
        for image, image_keys, together in zip(images, keys, batched):
            alone = cams(image, image_keys)
            assert together.keys == alone.keys == image_keys and together.grid == alone.grid
            for field in ("cams", "patch_cams", "gradcams", "patch_embeddings"):
                assert getattr(together, field).shape == getattr(alone, field).shape
                assert torch.allclose(getattr(together, field), getattr(alone, field), atol=1e-5), field
            assert np.array_equal(pseudo_label(together.cams, image_keys, image, config),
                                  pseudo_label(alone.cams, image_keys, image, config))
        assert batched[4].cams.shape == (0, 33, 50)


def test_scales_average_the_per_scale_cams(tiny):
    text = encode_prompts(tiny, ("cat", "dog", "sky"))
    image = np.random.default_rng(2).integers(0, 255, (40, 56, 3)).astype(np.uint8)
    make = lambda scales: ClipEsCams(ClipEsBackbone(tiny), text[:2], text[2:], ClipEsConfig(scales=scales))(image, [2])
    single, doubled, half = make((1.0,)), make((1.0, 1.0)), make((0.5,))
    assert torch.allclose(single.cams, doubled.cams, atol=1e-6)
    mixed = make((1.0, 0.5))
    assert torch.allclose(mixed.cams, (single.cams + half.cams) / 2, atol=1e-5)
    assert mixed.grid == single.grid == (3, 4)


def test_pseudo_label_values_and_background_rule():
    cams = torch.zeros(2, 4, 5)
    cams[0, :, :2] = 0.9
    cams[1, :, 3:] = 0.8
    image = np.zeros((4, 5, 3), np.uint8)
    label = pseudo_label(cams, [3, 7], image, ClipEsConfig(crf=None))
    expected = np.array([[3, 3, 0, 7, 7]] * 4, dtype=np.uint8)  # middle column: background 1 - 0 beats 0
    assert np.array_equal(label, expected)
    with_crf = pseudo_label(cams, [3, 7], image, ClipEsConfig(confidence=0.999))
    assert set(np.unique(with_crf)) <= {0, 3, 7, 255}
    assert not pseudo_label(cams[:0], [], image, ClipEsConfig()).any()


# ------------------------------------------------------------------ data
def test_voc_image_labels_from_xml_and_from_masks(tmp_path):
    write_voc(tmp_path)
    xml = open_image_label_set("voc", "train", tmp_path)
    mask = open_image_label_set("voc", "train", tmp_path, label_source="mask", limit=2)
    assert xml.label_source == "xml" and len(xml) == 3 and len(mask) == 2
    assert [xml.image_labels(i) for i in range(3)] == [[1, 3], [2, 3], [3]]
    assert [mask.image_labels(i) for i in range(2)] == [[1, 3], [2, 3]]
    assert xml.num_classes == 21 and prompt_names("voc")[14] == "person with clothes,people,human"
    assert xml.image(0).shape == (48, 64, 3) and xml.ground_truth(0).shape == (48, 64)


def test_coco_split_lists_masks_and_reads_labels_from_them(tmp_path):
    for split in ("train2014", "val2014"):
        (tmp_path / "coco2014/JPEGImages" / split).mkdir(parents=True)
        (tmp_path / "coco2014/SegmentationClass" / split).mkdir(parents=True)
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9], mask[10:15, 12:20] = 1, 80  # person, toothbrush
    cv2.imwrite(str(tmp_path / "coco2014/SegmentationClass/train2014/COCO_train2014_000000000009.png"), mask)
    cv2.imwrite(str(tmp_path / "coco2014/JPEGImages/train2014/COCO_train2014_000000000009.jpg"),
                np.zeros((20, 30, 3), np.uint8))
    coco = open_image_label_set("coco", "train", tmp_path)
    assert len(coco) == 1 and coco.label_source == "mask" and coco.image_labels(0) == [1, 80]
    assert coco.num_classes == 81 and prompt_names("coco")[79] == "toothbrush"
    assert "keyboard" not in background_words("coco") and len(background_words("coco")) == 23
    from ovss_cli.data.benchmarks import DatasetMissingError

    with pytest.raises(DatasetMissingError, match="prepare coco-2014"):
        open_image_label_set("coco", "val", tmp_path / "elsewhere")


def test_toy_view_and_mask_labels():
    toy = open_image_label_set("toy", "val", limit=2)
    truth = toy.ground_truth(0)
    assert toy.num_classes == 6 and 0 not in np.unique(truth)  # toy has no background class
    assert toy.image_labels(0) == sorted(set(np.unique(truth).tolist()) - {255})
    assert mask_labels(np.array([[0, 4], [255, 2]]), 5) == [2, 4]


@pytest.mark.parametrize("name,split,message", [("voc", "trainaug", "no split"), ("ade", "train", "unknown WSSS"),
                                                ("toy", "train", "xml needs")])
def test_dataset_usage_errors(tmp_path, name, split, message):
    from ovss_cli.errors import UsageError

    with pytest.raises(UsageError, match=message):
        open_image_label_set(name, split, tmp_path, label_source="xml" if name == "toy" else "auto")


# ------------------------------------------------------------------ resumable output
def test_atomic_write_leaves_no_partial_output(tmp_path, monkeypatch):
    label = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = label_path(tmp_path, "a")
    write_label(path, label)
    assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), label) and is_finished(tmp_path, "a")

    def crash(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OvssError, match="cannot write .*b.png"):
        write_label(label_path(tmp_path, "b"), label)
    monkeypatch.undo()
    assert not is_finished(tmp_path, "b") and sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    temporary_path(label_path(tmp_path, "c")).write_bytes(b"\x89PNG truncated")  # a killed run's leftover
    assert not is_finished(tmp_path, "c") and remove_temporaries(tmp_path) == 1


# ------------------------------------------------------------------ the commands
def test_prototypes_then_vpl_pseudolabels_resume(tmp_path, app):
    prototypes = tmp_path / "protos" / "toy.safetensors"
    result = runner.invoke(app, ["prototypes", "--dataset", "toy", "--split", "train", "--limit", "3",
                                 "--steps", "30", "--out", str(prototypes)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(prototypes.with_suffix(".json").read_text())
    assert sidecar["clip_identity"] == "ovss-tiny|random|quick_gelu=auto" and sidecar["class_names"] == list(prompt_names("toy"))
    assert sidecar["vpl"]["steps"] == 30 and sidecar["regions"] >= 3
    from safetensors.torch import load_file

    tensors = load_file(str(prototypes))
    assert torch.allclose(tensors["prototypes"].norm(dim=-1), torch.ones(5), atol=1e-5)

    out = tmp_path / "pseudo"
    out.mkdir()
    (out / f".toy_val_00000.png{TEMP_MARK}4242").write_bytes(b"garbage from a killed run")
    args = ["pseudolabel", "--method", "vpl", "--prototypes", str(prototypes), "--dataset", "toy", "--split", "val",
            "--limit", "3", "--no-crf", "--out", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "3 written, 0 already finished" in first.output and "mIoU" in first.output
    files = sorted(p.name for p in out.iterdir() if not p.name.endswith(".json"))
    assert files == [f"toy_val_{i:05d}.png" for i in range(3)]  # the stale temporary is gone, never an output
    toy = open_image_label_set("toy", "val", limit=3)
    for i in range(3):
        label = read_label(out / files[i]).astype(np.uint8)  # palette PNGs: PIL reads the ids
        assert label.dtype == np.uint8 and label.ndim == 2 and label.shape == (96, 96)
        assert set(np.unique(label)) <= {0, *toy.image_labels(i)}
    stamps = [os.stat(out / f).st_mtime_ns for f in files]
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "0 written, 3 already finished" in second.output
    assert stamps == [os.stat(out / f).st_mtime_ns for f in files]
    changed = runner.invoke(app, [*args, "--bg-power", "2"])
    assert changed.exit_code == 2 and "other settings" in changed.output


def test_clip_es_with_crf_on_voc_layout_scores_the_written_labels(tmp_path, app):
    ids = write_voc(tmp_path)
    out = tmp_path / "pseudo"
    result = runner.invoke(app, ["pseudolabel", "--dataset", "voc", "--split", "train", "--clip-model", "ovss-tiny",
                                 "--pretrained", "", "--data-root", str(tmp_path), "--out", str(out),
                                 "--confidence", "0.6"])
    assert result.exit_code == 0, result.output
    predictions = np.stack([read_label(out / f"{i}.png") for i in ids])
    truth = np.stack([cv2.imread(str(tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug" / f"{i}.png"),
                                 cv2.IMREAD_UNCHANGED) for i in ids]).astype(np.int64)
    assert set(np.unique(predictions)) <= {0, 1, 2, 3, 255}
    scored = np.where(predictions == 255, 255, truth)  # unlabelled pixels are left out of the score
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["mIoU"] == pytest.approx(reference_miou(predictions, scored, 21, 255)["mIoU"], abs=1e-9)
    assert metrics["labelled_fraction"] == pytest.approx((scored != 255).sum() / (truth != 255).sum())
    aug = runner.invoke(app, ["pseudolabel", "--dataset", "voc", "--split", "train_aug", "--clip-model", "ovss-tiny",
                              "--pretrained", "", "--data-root", str(tmp_path), "--out", str(tmp_path / "aug"),
                              "--no-crf", "--limit", "1"])
    assert aug.exit_code == 0 and "not comparable" in aug.output


@pytest.mark.parametrize("args,message", [
    (["--method", "vpl"], "needs --prototypes"),
    (["--method", "clip-es", "--dataset", "toy", "--box-threshold", "1.5"], "box threshold"),
    (["--method", "other"], "clip-es or vpl"),
])
def test_pseudolabel_usage_errors(tmp_path, app, args, message):
    result = runner.invoke(app, ["pseudolabel", "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output


def test_prototypes_for_another_dataset_are_refused(tmp_path, app):
    prototypes = tmp_path / "p.safetensors"
    assert runner.invoke(app, ["prototypes", "--dataset", "toy", "--split", "train", "--limit", "1", "--steps", "1",
                               "--out", str(prototypes)]).exit_code == 0
    write_voc(tmp_path)
    result = runner.invoke(app, ["pseudolabel", "--method", "vpl", "--prototypes", str(prototypes), "--dataset", "voc",
                                 "--clip-model", "ovss-tiny", "--pretrained", "", "--data-root", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not this dataset" in result.output


def test_two_gloo_ranks_shard_images_and_reduce_scores(tmp_path, app):
    import subprocess
    import sys

    common = ["--dataset", "toy", "--limit", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # The real launch path: --nproc 2 relaunches the command under torchrun with 2 gloo ranks.
    for args in (["prototypes", *common, "--split", "train", "--steps", "5", "--out", str(tmp_path / "p2.safetensors")],
                 ["pseudolabel", *common, "--split", "val", "--no-crf", "--out", str(tmp_path / "two")]):
        done = subprocess.run([sys.executable, "-m", "ovss_cli", *args, "--nproc", "2"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    single = runner.invoke(app, ["pseudolabel", *common, "--split", "val", "--no-crf", "--out", str(tmp_path / "one")])
    assert single.exit_code == 0, single.output
    two, one = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("two", "one"))
    assert two["images"] == 3 and two["written"] == 3
    assert two["metrics"]["mIoU"] == pytest.approx(one["metrics"]["mIoU"], abs=1e-9)
    for i in range(3):
        name = f"toy_val_{i:05d}.png"
        assert np.array_equal(read_label(tmp_path / "two" / name), read_label(tmp_path / "one" / name))
    sidecar = json.loads((tmp_path / "p2.json").read_text())
    assert sidecar["images"] == 3 and sidecar["regions"] >= 3  # regions gathered from both ranks
