"""Label PNGs that viewers show in colour and that read back as ids; overlays that carry their legend."""

import json

import cv2
import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.data.io import encode_label_png, read_label, voc_palette
from ovss_cli.evaluate.visualize import legend, overlay, overlay_with_legend, palette
from tests.helpers import make_ade847

runner = CliRunner()


def test_voc_palette_is_the_published_colour_map():
    colours = voc_palette()
    # Hand-checked entries of the PASCAL VOC colour map: background, aeroplane, bicycle, bird, boat, person, ignore.
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 4: (0, 0, 128), 15: (192, 128, 128),
                255: (224, 224, 192)}
    for index, rgb in expected.items():
        assert tuple(colours[index]) == rgb
    assert len({tuple(c) for c in colours}) == 256  # every id its own colour
    assert np.array_equal(palette(3), colours[:3])


def test_palette_label_png_reads_back_as_ids_and_shows_colours(tmp_path):
    label = np.array([[0, 1, 2], [255, 20, 3]])
    path = tmp_path / "l.png"
    path.write_bytes(encode_label_png(label, num_classes=21))
    with Image.open(path) as image:
        assert image.mode == "P"
        assert np.array_equal(np.array(image), label)
    assert np.array_equal(read_label(path), label)
    shown = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # what a viewer shows
    assert tuple(shown[0, 1]) == (128, 0, 0) and tuple(shown[1, 0]) == (224, 224, 192)


def test_more_than_255_classes_write_uint16_ids(tmp_path):
    label = np.array([[0, 300], [846, 254]])
    path = tmp_path / "l.png"
    path.write_bytes(encode_label_png(label, num_classes=847))
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and np.array_equal(stored, label)
    assert np.array_equal(read_label(path), label)


def test_overlay_blends_each_class_colour_and_leaves_ignore_alone():
    image = np.full((2, 2, 3), 100, np.uint8)
    label = np.array([[0, 1], [2, 255]])
    colours = palette(3)
    out = overlay(image, label, colours, alpha=0.5)
    assert tuple(out[0, 1]) == (114, 50, 50)  # (128 + 100) / 2, (0 + 100) / 2
    assert tuple(out[1, 0]) == (50, 114, 50)
    assert tuple(out[1, 1]) == (100, 100, 100)


def test_legend_on_the_overlay_lists_only_the_classes_present():
    image = np.zeros((200, 300, 3), np.uint8)
    label = np.zeros((200, 300), np.int64)
    label[:, 150:] = 3
    names = ["cat", "grass", "sky", "sand", "water"]
    colours = palette(5)
    picture = overlay_with_legend(image, label, names, colours)
    assert picture.shape == image.shape
    key = legend(names, [0, 3], colours)
    height, width = key.shape[:2]
    assert height < 60  # two rows, not five
    plain = overlay(image, label, colours)
    expected = (0.8 * key + 0.2 * plain[:height, :width]).round().astype(np.uint8)
    assert np.array_equal(picture[:height, :width], expected)
    assert np.array_equal(picture[height:], plain[height:])
    swatch = picture[10, 20].astype(float)  # first row's swatch: class 0 (black), second row's: class 3
    assert np.allclose(swatch, 0.8 * colours[0] + 0.2 * plain[10, 20], atol=1)
    assert np.allclose(picture[32, 20], (0.8 * colours[3] + 0.2 * plain[32, 20]).round(), atol=1)
    small = overlay_with_legend(image[:20, :20], label[:20, :20], names, colours)  # no room: the legend goes beside
    assert small.shape[1] > 20 and np.array_equal(small[:20, :20], overlay(image[:20, :20], label[:20, :20], colours))


def test_predict_writes_palette_labels_and_overlay_with_legend(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "img.png"), np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8))
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(images), "--classes", "cat, grass, sky", "--clip-model", "ovss-tiny",
                                 "--pretrained", "", "--image-size", "64", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out / "img_label.png") as image:
        assert image.mode == "P"
        ids = np.array(image)
    assert ids.shape == (40, 56) and ids.max() <= 2
    summary = json.loads((out / "classes.json").read_text())
    present = sorted(summary["area_fraction"]["img"])
    assert present == sorted({["cat", "grass", "sky"][i] for i in np.unique(ids)})
    shown = cv2.cvtColor(cv2.imread(str(out / "img_label.png")), cv2.COLOR_BGR2RGB)
    assert np.array_equal(shown, voc_palette()[ids])
    assert cv2.imread(str(out / "img_overlay.png")).shape[0] >= 40
    assert not (out / "img_legend.png").exists()


def test_evaluate_saves_the_scored_predictions(tmp_path, oracle):
    (tmp_path / "ADE20K_2021_17_01/annotations_detectron2/validation").mkdir(parents=True)
    preds, _ = make_ade847(tmp_path, np.random.default_rng(0), count=2)
    saved = tmp_path / "saved"
    result = runner.invoke(app, ["evaluate", "--bench", "ade847", "--data-root", str(tmp_path), "--mode", "whole",
                                 "--save-predictions", str(saved)])
    assert result.exit_code == 0, result.output
    for i, pred in enumerate(preds):
        stem = saved / "ade847" / f"ADE_frame_{i:08d}"
        stored = cv2.imread(f"{stem}_label.png", cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint16 and np.array_equal(stored, pred)  # 847 classes: uint16 ids
        assert cv2.imread(f"{stem}_overlay.png") is not None


def test_pseudo_labels_are_palette_pngs_of_the_ids(tmp_path):
    out = tmp_path / "pseudo"
    result = runner.invoke(app, ["pseudolabel", "--dataset", "toy", "--split", "val", "--limit", "2", "--no-crf",
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for path in sorted(out.glob("*.png")):
        with Image.open(path) as image:
            assert image.mode == "P"
            ids = np.array(image)
        assert ids.max() <= 5 and np.array_equal(read_label(path), ids)  # 0 background, 1..5 toy classes
        shown = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        assert np.array_equal(shown, voc_palette()[ids])
