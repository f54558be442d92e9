"""`ovss prepare` end to end on tiny synthetic archives with the official names, internal paths and formats."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
import tifffile
import typer
from PIL import Image
from typer.testing import CliRunner

from ovss_cli.commands.prepare import prepare

VOCAB = Path(__file__).resolve().parents[1] / "ovss_cli" / "data" / "vocab"


def _cli() -> typer.Typer:
    try:
        from ovss_cli.cli import friendly_errors
    except ImportError:  # cli.py may import commands that are still being written
        from ovss_cli.errors import OvssError

        def friendly_errors(command):
            def wrapper(*args, **kwargs):
                try:
                    return command(*args, **kwargs)
                except OvssError as err:
                    typer.echo(f"error: {err}", err=True)
                    raise typer.Exit(err.exit_code) from None

            import functools

            return functools.wraps(command)(wrapper)
    app = typer.Typer()
    app.callback()(lambda: None)
    app.command("prepare")(friendly_errors(prepare))
    return app


def run_cli(*args: str, expect: int = 0):
    result = CliRunner().invoke(_cli(), ["prepare", *args, "--no-progress"])
    assert result.exit_code == expect, result.output
    return result


# ---------------------------------------------------------------- archive builders (real formats)

def jpeg(height: int, width: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def palette_png(indices: np.ndarray) -> bytes:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def mat(variables: dict) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return path


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return path


def read_png(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# ---------------------------------------------------------------- COCO-Stuff

STUFF_RAW = np.array([[0, 10, 11, 12], [91, 181, 255, 200]], dtype=np.uint8)
# 0-based stuffthingmap ids minus the unused thing ids below them: 12 -> 11, 91 (banner) -> 80, 181 (wood) -> 170.
STUFF_EXPECTED = np.array([[0, 10, 255, 11], [80, 170, 255, 255]], dtype=np.uint8)


def coco_stuff_archives(folder: Path, train_ids=("000000000009",)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    make_zip(folder / "train2017.zip", {f"train2017/{i}.jpg": jpeg(2, 4) for i in train_ids})
    make_zip(folder / "val2017.zip", {"val2017/000000000139.jpg": jpeg(2, 4)})
    maps = {f"train2017/{i}.png": png(STUFF_RAW) for i in train_ids}
    maps["val2017/000000000139.png"] = png(STUFF_RAW[::-1])
    make_zip(folder / "stuffthingmaps_trainval2017.zip", maps)


def test_coco_stuff(tmp_path: Path):
    coco_stuff_archives(tmp_path / "raw")
    root = tmp_path / "datasets"
    result = run_cli("coco-stuff", "--from", str(tmp_path / "raw"), "--data-root", str(root),
                     "--no-count-check", "--workers", "2")
    assert "official split has 118287" in result.output
    out = root / "coco-stuff/annotations_detectron2"
    np.testing.assert_array_equal(read_png(out / "train2017/000000000009.png"), STUFF_EXPECTED)
    np.testing.assert_array_equal(read_png(out / "val2017/000000000139.png"), STUFF_EXPECTED[::-1])
    assert (root / "coco-stuff/images/train2017/000000000009.jpg").is_file()
    vocabulary = json.loads((VOCAB / "coco_stuff171.json").read_text())
    assert (vocabulary[80], vocabulary[170], vocabulary[11]) == ("banner", "wood", "stop sign")
    run_cli("coco-stuff", "--data-root", str(root), "--verify", "--no-count-check")
    # Strict counts: a 1-image subset is not the official split.
    result = run_cli("coco-stuff", "--data-root", str(root), "--verify", expect=1)
    assert "--no-count-check" in result.output


def test_coco_stuff_lut_matches_vocabulary_size():
    from ovss_cli.prepare.coco_stuff import train_id_lut

    lut = train_id_lut()
    used = lut[lut != 255]
    assert used.tolist() == list(range(171)) == list(range(len(json.loads((VOCAB / "coco_stuff171.json").read_text()))))


# ---------------------------------------------------------------- ADE20K-150

def test_ade20k_150_from_extracted_folder_is_hard_linked(tmp_path: Path):
    raw = tmp_path / "raw" / "ADEChallengeData2016"
    (raw / "images/validation").mkdir(parents=True)
    (raw / "annotations/validation").mkdir(parents=True)
    (raw / "images/validation/ADE_val_00000001.jpg").write_bytes(jpeg(2, 3))
    (raw / "annotations/validation/ADE_val_00000001.png").write_bytes(png(np.array([[0, 1, 150], [2, 0, 75]], np.uint8)))
    root = tmp_path / "datasets"
    run_cli("ade20k", "--from", str(tmp_path / "raw"), "--data-root", str(root), "--no-count-check", "--workers", "1")
    label = read_png(root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png")
    np.testing.assert_array_equal(label, [[255, 0, 149], [1, 255, 74]])
    image = root / "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg"
    assert image.stat().st_ino == (raw / "images/validation/ADE_val_00000001.jpg").stat().st_ino


# ---------------------------------------------------------------- ADE20K-847

def ade_seg_png(values: np.ndarray) -> bytes:
    """ADE20K full encoding: R = value // 256 * 10, G = value % 256."""
    rgb = np.zeros((*values.shape, 3), dtype=np.uint8)
    rgb[..., 0] = values // 256 * 10
    rgb[..., 1] = values % 256
    rgb[..., 2] = 7  # instance channel, ignored
    return png(rgb[..., ::-1])  # cv2 writes BGR


def test_ade20k_full(tmp_path: Path):
    vocabulary = json.loads((VOCAB / "ade847.json").read_text())
    ids = json.loads((VOCAB / "ade847_ids.json").read_text())
    assert (ids[0], ids[1], ids[2], ids[11]) == (2978, 312, 2420, 1831)  # wall, building, sky, person
    objectnames = [f"filler {i}" for i in range(max(ids))]
    for value, name in zip(ids, vocabulary):
        objectnames[value - 1] = name  # class value v names objectnames[v - 1]
    objectnames[0], objectnames[4] = "flibbet", "wall"  # "wall" also at value 5: a name never picks the id
    index = {
        "filename": ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg", "ADE_train_00000001.jpg"],
        "folder": ["ADE20K_2021_17_01/images/ADE/validation/abbey"] * 2 + ["ADE20K_2021_17_01/images/ADE/training/abbey"],
        "objectnames": objectnames,
        "objectPresence": np.zeros((len(objectnames), 3), dtype=np.int64),
    }
    small = np.array([[2978, 312, 2420], [5, 0, 1831], [5000, 2978, 2978]])
    big = np.zeros((600, 700), dtype=np.int64)
    big[:, :350], big[:, 350:] = 2978, 2420  # wall | sky
    prefix = "ADE20K_2021_17_01/images/ADE/"
    members = {
        "ADE20K_2021_17_01/index_ade20k.pkl": pickle.dumps(index),
        prefix + "validation/abbey/ADE_val_00000001.jpg": jpeg(3, 3),
        prefix + "validation/abbey/ADE_val_00000001_seg.png": ade_seg_png(small),
        prefix + "validation/abbey/ADE_val_00000002.jpg": jpeg(600, 700),
        prefix + "validation/abbey/ADE_val_00000002_seg.png": ade_seg_png(big),
        prefix + "training/abbey/ADE_train_00000001.jpg": jpeg(2, 2),
        prefix + "training/abbey/ADE_train_00000001_seg.png": ade_seg_png(np.zeros((2, 2), np.int64)),
    }
    make_zip(tmp_path / "ADE20K_2021_17_01.zip", members)
    root = tmp_path / "datasets"
    run_cli("ade20k-full", "--from", str(tmp_path), "--data-root", str(root), "--no-count-check")
    base = root / "ADE20K_2021_17_01"
    label = tifffile.imread(base / "annotations_detectron2/validation/ADE_val_00000001.tif")
    assert label.dtype == np.uint16
    # wall -> 0, building -> 1, sky -> 2, person -> 11 by their official ids; the second "wall" (5), 0 and
    # 5000 (beyond the index) -> 65535.
    np.testing.assert_array_equal(label, [[0, 1, 2], [65535, 65535, 11], [65535, 0, 0]])
    resized = tifffile.imread(base / "annotations_detectron2/validation/ADE_val_00000002.tif")
    assert resized.shape == (512, 597)  # shorter side 600 -> 512, 700 * 512 / 600 = 597.3
    assert set(np.unique(resized[:, :290])) == {0} and set(np.unique(resized[:, 310:])) == {2}
    with Image.open(base / "images_detectron2/validation/ADE_val_00000002.jpg") as image:
        assert image.size == (597, 512)
    small_image = base / "images_detectron2/validation/ADE_val_00000001.jpg"
    assert small_image.stat().st_ino == (base / "images/ADE/validation/abbey/ADE_val_00000001.jpg").stat().st_ino
    assert not (base / "annotations_detectron2/validation/ADE_train_00000001.tif").exists()
    run_cli("ade20k-full", "--data-root", str(root), "--verify", "--no-count-check")


def test_ade847_names_only_check_the_ids(capsys):
    from ovss_cli.prepare.ade20k_full import IGNORE, class_value_lut

    vocabulary = ["wall", "sky"]
    lut = class_value_lut([3, 1], ["sky", "x", "wall"], vocabulary)
    assert lut.tolist() == [IGNORE, 1, IGNORE, 0]
    assert capsys.readouterr().err == ""
    lut = class_value_lut([3, 1], ["wall", "x", "sky"], vocabulary)  # another release: same ids, a warning
    assert lut.tolist() == [IGNORE, 1, IGNORE, 0]
    assert "names 2 of the 2 class values differently" in capsys.readouterr().err


def test_ade_index_with_code_is_refused(tmp_path: Path):
    from ovss_cli.errors import OvssError
    from ovss_cli.prepare.ade20k_full import load_index

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    (tmp_path / "index_ade20k.pkl").write_bytes(pickle.dumps({"filename": [Evil()]}))
    with pytest.raises(OvssError, match="refusing to load"):
        load_index(tmp_path / "index_ade20k.pkl")


# ---------------------------------------------------------------- PASCAL-Context

def test_pascal_context(tmp_path: Path):
    names459 = json.loads((VOCAB / "pc459.json").read_text())
    val_ids = (VOCAB / "pascal_context_val_ids.txt").read_text().split()[:2]
    label_map = np.array([[0, 2, 397, 1], [458, 284, 3, 420]], dtype=np.uint16)
    make_tar(tmp_path / "VOCtrainval_03-May-2010.tar",
             {f"VOCdevkit/VOC2010/JPEGImages/{i}.jpg": jpeg(2, 4) for i in [*val_ids, "2008_999999"]})
    labels_txt = "".join(f"{n}: {name}\n" for n, name in enumerate(names459, start=1)).encode()
    members = {f"trainval/{i}.mat": mat({"LabelMap": label_map}) for i in [*val_ids, "2008_999999"]}
    members["labels.txt"] = labels_txt
    make_tar(tmp_path / "trainval.tar.gz", members)
    root = tmp_path / "datasets"
    result = run_cli("pascal-context", "--from", str(tmp_path), "--data-root", str(root), "--no-count-check")
    assert "pc459 val: found 2 items but the official split has 5104" in result.output
    base = root / "VOCdevkit/VOC2010/annotations_detectron2"
    pc459 = tifffile.imread(base / f"pc459_val/{val_ids[0]}.tif")
    assert pc459.dtype == np.uint16
    np.testing.assert_array_equal(pc459, [[65535, 1, 396, 0], [457, 283, 2, 419]])
    # aeroplane (2) -> 0, table (397) -> diningtable 49, person (284) -> 36, tree (420) -> 52, wood (458) -> 58.
    pc59 = read_png(base / f"pc59_val/{val_ids[1]}.png")
    np.testing.assert_array_equal(pc59, [[255, 0, 49, 255], [58, 36, 255, 52]])
    assert not (base / "pc59_val/2008_999999.png").exists()  # not a validation image
    assert (root / "VOCdevkit/VOC2010/pascalcontext_val.txt").read_text().split()[:2] == val_ids
    run_cli("pascal-context", "--data-root", str(root), "--verify", "--no-count-check")


# ---------------------------------------------------------------- VOC 2012 + SBD

def test_voc_with_sbd(tmp_path: Path):
    a, b, c, d, e = "2007_000032", "2007_000033", "2007_000039", "2008_000002", "2008_000003"
    voc_b = np.array([[0, 1, 20, 255], [15, 15, 0, 0]], dtype=np.uint8)
    voc = {f"VOCdevkit/VOC2012/JPEGImages/{i}.jpg": jpeg(2, 4) for i in (a, b, c, d, e)}
    voc |= {
        f"VOCdevkit/VOC2012/SegmentationClass/{a}.png": palette_png(np.full((2, 4), 7)),
        f"VOCdevkit/VOC2012/SegmentationClass/{b}.png": palette_png(voc_b),
        f"VOCdevkit/VOC2012/SegmentationClass/{c}.png": palette_png(np.array([[0, 0, 255, 0], [0, 0, 0, 0]])),
        "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt": f"{a}\n".encode(),
        "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt": f"{b}\n{c}\n".encode(),
    }
    make_tar(tmp_path / "VOCtrainval_11-May-2012.tar", voc)

    def gtcls(value: int) -> bytes:
        segmentation = np.full((2, 4), value, dtype=np.uint8)
        return mat({"GTcls": {"Segmentation": segmentation, "Boundaries": np.zeros((1, 1)),
                              "CategoriesPresent": np.array([value])}})

    sbd = {f"benchmark_RELEASE/dataset/cls/{i}.mat": gtcls(v) for i, v in ((a, 3), (b, 4), (d, 5), (e, 6))}
    sbd |= {"benchmark_RELEASE/dataset/train.txt": f"{a}\n{d}\n".encode(),
            "benchmark_RELEASE/dataset/val.txt": f"{b}\n{e}\n".encode()}
    make_tar(tmp_path / "benchmark.tgz", sbd)
    root = tmp_path / "datasets"
    run_cli("voc", "--from", str(tmp_path), "--data-root", str(root), "--no-count-check")
    voc_root = root / "VOCdevkit/VOC2012"
    aug = voc_root / "SegmentationClassAug"
    np.testing.assert_array_equal(read_png(aug / f"{a}.png"), np.full((2, 4), 7))  # VOC wins over SBD (3)
    np.testing.assert_array_equal(read_png(aug / f"{b}.png"), voc_b)  # palette indices, not colours
    np.testing.assert_array_equal(read_png(aug / f"{d}.png"), np.full((2, 4), 5))  # from SBD GTcls
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted([a, b, c, d, e])
    assert (voc_root / "ImageSets/Segmentation/train_aug.txt").read_text().split() == sorted([a, d, e])
    np.testing.assert_array_equal(read_png(voc_root / f"annotations_detectron2/val/{b}.png"),
                                  [[255, 0, 19, 255], [14, 14, 255, 255]])
    np.testing.assert_array_equal(read_png(voc_root / f"annotations_detectron2_bg/val/{b}.png"),
                                  [[20, 0, 19, 255], [14, 14, 20, 20]])
    assert not (voc_root / f"annotations_detectron2/val/{c}.png").exists()  # only ignore left: skipped as CAT-Seg does
    np.testing.assert_array_equal(read_png(voc_root / f"annotations_detectron2_bg/val/{c}.png"),
                                  [[20, 20, 255, 20], [20, 20, 20, 20]])
    run_cli("voc", "--data-root", str(root), "--verify", "--no-count-check")

    # CAT-Seg users have DeepLab's SegmentationClassAug.zip instead of SBD: it stands in for benchmark.tgz.
    other = tmp_path / "deeplab"
    (other / "VOCdevkit/VOC2012").mkdir(parents=True)
    (other / "VOCdevkit/VOC2012/SegmentationClassAug").symlink_to(aug, target_is_directory=True)
    (tmp_path / "benchmark.tgz").unlink()
    run_cli("voc", "--from", str(tmp_path), "--data-root", str(other), "--no-count-check")
    assert (other / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split() == sorted([a, d, e])
    assert not (other / "SBD").exists()


# ---------------------------------------------------------------- COCO 2014 (WSSS)

COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with a 0-run."""
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, current, run = [], 0, 0
    for value in flat:
        if value == current:
            run += 1
        else:
            counts.append(run)
            current, run = value, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools vs numpy 2
def test_coco_2014(tmp_path: Path):
    height, width = 4, 5
    corner = np.zeros((height, width), bool)
    corner[:2, :2] = True
    stripe = np.zeros((height, width), bool)
    stripe[:, 1] = True
    annotations = [
        # the whole image as a polygon: person (id 1 -> class 1), the largest
        {"id": 1, "image_id": 9, "category_id": 1, "iscrowd": 0, "area": 20.0,
         "segmentation": [[0, 0, width, 0, width, height, 0, height]]},
        # toothbrush (id 90 -> class 80) over the top-left 2x2 corner: smaller, so it wins there
        {"id": 2, "image_id": 9, "category_id": 90, "iscrowd": 0, "area": 4.0, "segmentation": uncompressed_rle(corner)},
        # a crowd of stop signs (id 13 -> class 12) in column 1, smaller than person, larger than the corner
        {"id": 3, "image_id": 9, "category_id": 13, "iscrowd": 1, "area": 4.5, "segmentation": uncompressed_rle(stripe)},
        {"id": 4, "image_id": 42, "category_id": 13, "iscrowd": 0, "area": 4.0, "segmentation": uncompressed_rle(corner)},
    ]
    categories = [{"id": i, "name": f"c{i}", "supercategory": "s"} for i in COCO_IDS]

    def instances(split: str, images: list[tuple[int, str]], anns: list) -> bytes:
        return json.dumps({"images": [{"id": i, "file_name": f"COCO_{split}_{n}.jpg", "height": height, "width": width}
                                      for i, n in images],
                           "annotations": anns, "categories": categories}).encode()

    make_zip(tmp_path / "train2014.zip", {f"train2014/COCO_train2014_{n}.jpg": jpeg(height, width)
                                          for n in ("000000000009", "000000000010")})
    make_zip(tmp_path / "val2014.zip", {"val2014/COCO_val2014_000000000042.jpg": jpeg(height, width)})
    make_zip(tmp_path / "annotations_trainval2014.zip", {
        "annotations/instances_train2014.json": instances("train2014", [(9, "000000000009"), (10, "000000000010")],
                                                          annotations[:3]),
        "annotations/instances_val2014.json": instances("val2014", [(42, "000000000042")], annotations[3:]),
    })
    root = tmp_path / "datasets"
    run_cli("coco-2014", "--from", str(tmp_path), "--data-root", str(root), "--no-count-check")
    base = root / "coco2014"
    expected = np.array([[80, 80, 1, 1, 1], [80, 80, 1, 1, 1], [1, 12, 1, 1, 1], [1, 12, 1, 1, 1]])
    np.testing.assert_array_equal(read_png(base / "SegmentationClass/train2014/COCO_train2014_000000000009.png"), expected)
    assert not (base / "SegmentationClass/train2014/COCO_train2014_000000000010.png").exists()  # no annotations
    np.testing.assert_array_equal(read_png(base / "SegmentationClass/val2014/COCO_val2014_000000000042.png"),
                                  np.where(corner, 12, 0))
    assert (base / "JPEGImages/train2014/COCO_train2014_000000000010.jpg").is_file()
    run_cli("coco-2014", "--data-root", str(root), "--verify", "--no-count-check")


# ---------------------------------------------------------------- usage errors, offline, download

def test_unknown_dataset_suggests_the_closest(tmp_path: Path):
    result = run_cli("coco-stuf", "--data-root", str(tmp_path), expect=2)
    assert "did you mean 'coco-stuff'" in result.output


def test_missing_archives_say_what_to_fetch_and_where(tmp_path: Path):
    result = run_cli("voc", "--data-root", str(tmp_path / "d"), expect=2)  # the user can fix it: exit 2
    assert not (tmp_path / "d").exists()  # nothing fetched: no empty folders left behind
    message = result.output.strip()
    assert message.count("\n") == 0
    assert "VOCtrainval_11-May-2012.tar" in message and "benchmark.tgz" in message
    assert "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar" in message
    assert str(tmp_path / "d" / "downloads") in message and "--download" in message
    result = run_cli("ade20k-full", "--data-root", str(tmp_path / "d"), "--download", expect=2)
    assert "register at https://groups.csail.mit.edu/vision/datasets/ADE20K/" in result.output


def test_an_archive_without_a_published_checksum_is_never_downloaded(tmp_path: Path):
    # stuffthingmaps_trainval2017.zip comes over plain http with no checksum: it could be swapped in transit
    result = run_cli("coco-stuff", "--data-root", str(tmp_path / "d"), "--download", expect=2)  # fetch it by hand: a fix the user makes, exit 2
    message = result.output.strip()
    assert message.count("\n") == 0 and "stuffthingmaps_trainval2017.zip" in message
    assert "no checksum is published for it, so ovss never downloads it" in message and "--from" in message
    assert not (tmp_path / "d" / "downloads").exists()  # nothing was fetched, not even the checksummed zips


def test_download_extract_convert_over_http(tmp_path: Path, monkeypatch):
    import dataclasses
    import hashlib
    import http.server
    import threading

    from ovss_cli.prepare import registry
    from ovss_cli.prepare.download import Checksum

    served = tmp_path / "served"
    served.mkdir()
    make_zip(served / "ADEChallengeData2016.zip", {
        "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg": jpeg(2, 2),
        "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png": png(np.array([[1, 0], [3, 2]], np.uint8)),
    })
    digest = hashlib.md5((served / "ADEChallengeData2016.zip").read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/ADEChallengeData2016.zip"
        spec = registry.DATASETS["ade20k"]
        archive = dataclasses.replace(spec.archives[0], urls=(url,), checksum=Checksum("md5", digest))
        monkeypatch.setitem(registry.DATASETS, "ade20k", dataclasses.replace(spec, archives=(archive,)))
        root = tmp_path / "datasets"
        run_cli("ade20k", "--download", "--data-root", str(root), "--no-count-check")
        assert (root / "downloads/ADEChallengeData2016.zip").is_file()
        np.testing.assert_array_equal(
            read_png(root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png"),
            [[0, 255], [2, 1]])

        bad = dataclasses.replace(archive, checksum=Checksum("md5", "f" * 32))
        monkeypatch.setitem(registry.DATASETS, "ade20k", dataclasses.replace(spec, archives=(bad,)))
        other = tmp_path / "other"
        result = run_cli("ade20k", "--download", "--data-root", str(other), expect=1)
        assert "does not match" in result.output
        assert not (other / "ADEChallengeData2016").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------- interruption and resume

def test_interrupted_conversion_resumes_without_redoing_finished_files(tmp_path: Path, monkeypatch):
    from ovss_cli.fileio import TEMP_MARK
    from ovss_cli.prepare import coco_stuff
    from ovss_cli.prepare.pipeline import prepare_dataset

    ids = [f"{i:012d}" for i in range(1, 7)]
    root = tmp_path / "datasets"
    coco_stuff_archives(tmp_path / "raw", ids)
    original = coco_stuff.convert_one
    calls: list[str] = []

    def killed_on_fourth(source, target, lut):
        calls.append(source.stem)
        if len(calls) == 4:  # die half-way through writing the 4th file
            target.with_name(f".{target.name}{TEMP_MARK}999").write_bytes(b"\x89PNG trunc")
            raise KeyboardInterrupt
        return original(source, target, lut)

    monkeypatch.setattr(coco_stuff, "convert_one", killed_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset("coco-stuff", root, tmp_path / "raw", workers=1, strict_counts=False, progress=False)
    out = root / "coco-stuff/annotations_detectron2/train2017"
    finished = [p for p in sorted(out.glob("*.png")) if not p.name.startswith(".")]
    assert [p.stem for p in finished] == ids[:3]
    assert len(list(out.glob(f".*{TEMP_MARK}*"))) == 1  # the half-written file of the killed run
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}

    calls.clear()
    monkeypatch.setattr(coco_stuff, "convert_one", lambda s, t, lut: (calls.append(s.stem), original(s, t, lut))[1])
    lines = prepare_dataset("coco-stuff", root, tmp_path / "raw", workers=1, strict_counts=False, progress=False)
    assert calls == [*ids[3:], "000000000139"]  # only the unfinished train files and the val file
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == stamps
    assert not list(out.glob(f".*{TEMP_MARK}*"))
    assert sorted(p.stem for p in out.glob("*.png")) == ids
    for path in out.glob("*.png"):
        np.testing.assert_array_equal(read_png(path), STUFF_EXPECTED)
    assert any(line.startswith("warning: coco-stuff train2017: found 6 items") for line in lines)

    calls.clear()
    prepare_dataset("coco-stuff", root, tmp_path / "raw", workers=1, strict_counts=False, progress=False)
    assert calls == []  # a third run has nothing left to do


def test_verify_reports_bad_values_and_missing_images(tmp_path: Path):
    coco_stuff_archives(tmp_path / "raw")
    root = tmp_path / "datasets"
    run_cli("coco-stuff", "--from", str(tmp_path / "raw"), "--data-root", str(root), "--no-count-check")
    label = root / "coco-stuff/annotations_detectron2/train2017/000000000009.png"
    cv2.imwrite(str(label), np.full((2, 4), 200, np.uint8))
    result = run_cli("coco-stuff", "--data-root", str(root), "--verify", "--no-count-check", expect=1)
    assert "holds values [200]" in result.output
    (root / "coco-stuff/images/val2017/000000000139.jpg").unlink()
    result = run_cli("coco-stuff", "--data-root", str(root), "--verify", "--no-count-check", expect=1)
    assert "000000000139.jpg (the image of 000000000139.png) is missing" in result.output
