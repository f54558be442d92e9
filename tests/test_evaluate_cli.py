import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.data.io import read_label
from tests.helpers import encode_classes_as_pixels, make_ade847, reference_miou, write_jpeg_exact

runner = CliRunner()


def test_ade847_uint16_tiff_exact_miou_through_cli(tmp_path, oracle):
    (tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation").mkdir(parents=True)
    preds, gts = make_ade847(tmp_path, np.random.default_rng(0))
    out = tmp_path / "res.json"
    result = runner.invoke(app, ["evaluate", "--bench", "ade847", "--data-root", str(tmp_path), "--mode", "whole",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["results"]["ade847"]
    expected = reference_miou(preds, gts, 847, 65535)
    assert metrics["mIoU"] == pytest.approx(expected["mIoU"], abs=1e-9)
    assert metrics["pACC"] == pytest.approx(expected["pACC"], abs=1e-9)
    assert metrics["images"] == 3
    assert "ADE20K-847" in result.output


def test_voc20b_background_rule_through_cli(tmp_path, oracle):
    rng = np.random.default_rng(1)
    label_dir = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2_bg/val"
    label_dir.mkdir(parents=True)
    preds, gts = [], []
    for i in range(2):
        gt = rng.integers(0, 21, size=(64, 64))  # 20 = background
        gt[:4] = 255
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 59, size=gt.shape))
        pred[pred == 20] = 20 + int(rng.integers(0, 39))  # background predicted as any context class
        cv2.imwrite(str(label_dir / f"2008_{i:06d}.png"), gt.astype(np.uint8))
        write_jpeg_exact(tmp_path / "VOCdevkit/VOC2012/JPEGImages" / f"2008_{i:06d}.jpg", encode_classes_as_pixels(pred))
        preds.append(np.minimum(pred, 20))
        gts.append(gt)
    out = tmp_path / "res.json"
    result = runner.invoke(app, ["evaluate", "-b", "voc20b", "--data-root", str(tmp_path), "--mode", "whole", "-o", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["results"]["voc20b"]
    assert metrics["num_classes"] == 21 and "background" in metrics["per_class_IoU"]
    assert metrics["mIoU"] == pytest.approx(reference_miou(np.stack(preds), np.stack(gts), 21, 255)["mIoU"], abs=1e-9)


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    result = runner.invoke(app, ["evaluate", "--bench", "pc459", "--data-root", str(tmp_path)])
    assert result.exit_code == 2
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "ovss prepare pascal-context" in lines[0] and str(tmp_path) in lines[0]


def test_unknown_benchmark_suggests(tmp_path):
    result = runner.invoke(app, ["evaluate", "--bench", "ade874"])
    assert result.exit_code == 2 and "did you mean 'ade847'" in result.output


def test_corrupt_image_names_the_file(tmp_path, oracle):
    label_dir = tmp_path / "ADEChallengeData2016/annotations_detectron2/validation"
    label_dir.mkdir(parents=True)
    cv2.imwrite(str(label_dir / "ADE_val_1.png"), np.zeros((8, 8), np.uint8))
    image = tmp_path / "ADEChallengeData2016/images/validation/ADE_val_1.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\xff\xd8garbage")
    result = runner.invoke(app, ["evaluate", "--bench", "ade150", "--data-root", str(tmp_path)])
    assert result.exit_code == 1 and "ADE_val_1.jpg" in result.output


def test_toy_zero_shot_end_to_end(tmp_path):
    out = tmp_path / "toy.json"
    result = runner.invoke(app, ["evaluate", "--bench", "toy", "--limit", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())["results"]["toy"]
    assert metrics["images"] == 3 and 0 <= metrics["mIoU"] <= 100
    assert "mIoU" in result.output


def test_predict_writes_label_overlay_legend(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        cv2.imwrite(str(images / f"img{i}.png"), np.random.default_rng(i).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(images), "--classes", "cat, grass, sky", "--clip-model", "ovss-tiny",
                                 "--pretrained", "", "--image-size", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for i in range(2):
        label = read_label(out / f"img{i}_label.png")
        assert label.shape == (40, 56) and label.max() <= 2
        assert cv2.imread(str(out / f"img{i}_overlay.png")).shape[0] == 40  # a 40x56 image: the legend goes beside it
    summary = json.loads((out / "classes.json").read_text())
    assert summary["classes"] == ["cat", "grass", "sky"]
    assert sum(summary["area_fraction"]["img0"].values()) == pytest.approx(1.0)
    # Two inputs with the same name would overwrite each other's outputs: refused up front.
    other = tmp_path / "other"
    other.mkdir()
    cv2.imwrite(str(other / "img0.png"), np.zeros((8, 8, 3), np.uint8))
    result = runner.invoke(app, ["predict", str(images), str(other), "--classes", "cat, sky", "--out", str(out)])
    assert result.exit_code == 2 and "same <name>_label.png" in result.output


def test_predict_needs_classes(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    result = runner.invoke(app, ["predict", str(tmp_path / "a.png")])
    assert result.exit_code == 2 and "--classes" in result.output


def test_every_command_help_shows_a_worked_example():
    commands = [[c.name] for c in app.registered_commands] + [["benchmark", "train"], ["benchmark", "eval"]]
    assert len(commands) == 13  # prepare train distill evaluate predict export convert prototypes pseudolabel recipes runs + benchmark x2
    for command in commands:
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Example: ovss " + " ".join(command) in " ".join(result.output.split()), command


def test_help_is_fast_and_shows_examples():
    import subprocess
    import sys
    import time

    start = time.monotonic()
    for command in ([], ["evaluate"], ["predict"]):
        done = subprocess.run([sys.executable, "-m", "ovss_cli", *command, "--help"], capture_output=True, text=True)
        assert done.returncode == 0
        if command:
            assert "Example: ovss " + command[0] in done.stdout
    assert time.monotonic() - start < 20
    done = subprocess.run([sys.executable, "-c", "import ovss_cli.cli, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "False"


def test_two_process_evaluation_matches_one_process(tmp_path):
    """Images are sharded over 2 gloo ranks; the all-reduced confusion matrix gives identical metrics."""
    import subprocess
    import sys

    outputs = {}
    for gpus in (1, 2):
        out = tmp_path / f"res{gpus}.json"
        done = subprocess.run([sys.executable, "-m", "ovss_cli", "evaluate", "--bench", "toy", "--limit", "5",
                               "--nproc", str(gpus), "--out", str(out), "--device", "cpu"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[gpus] = json.loads(out.read_text())["results"]["toy"]
    for key in ("mIoU", "fwIoU", "pACC", "mACC"):
        assert outputs[2][key] == pytest.approx(outputs[1][key], abs=1e-9)
    assert outputs[2]["images"] == 5
