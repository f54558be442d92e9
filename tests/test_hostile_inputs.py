"""Bad and hostile inputs through the real command line.

Every case must end with exit code 1 or 2, exactly one `error:` line on stderr and no traceback,
no file written outside the folder the command was told to write to, and every file that existed
before (the inputs) byte-identical afterwards.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.commands import common
from ovss_cli.engine.runs import LOCK_NAME
from tests.helpers import QUICKSTART, TINY, PixelOracle, write_zip_link_chain

runner = CliRunner()


@dataclass
class Case:
    """`build(tmp)` lays out the inputs and returns (argv, the folder the command may write to or None)."""

    name: str
    build: Callable[[Path], tuple[list[str], Path | None]]
    exit_code: int
    says: str  # a piece of the error line
    oracle: bool = False  # evaluate with a per-pixel oracle instead of a CLIP model


# ---------------------------------------------------------------- input builders

def _jpeg(seed: int = 0, size: tuple[int, int] = (16, 20)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", pixels)[1].tobytes()


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _ade150_prepared(root: Path, image: bytes) -> None:
    _write(root / "ADEChallengeData2016/annotations_detectron2/validation/ADE_val_00000001.png",
           _png(np.zeros((16, 20), np.uint8)))
    _write(root / "ADEChallengeData2016/images/validation/ADE_val_00000001.jpg", image)


def zip_link_chain(tmp: Path):
    downloads = tmp / "downloads"
    downloads.mkdir()
    write_zip_link_chain(downloads / "ADEChallengeData2016.zip", "ADEChallengeData2016/readme.txt")
    root = tmp / "data"
    return ["prepare", "ade20k", "--from", str(downloads), "--data-root", str(root), "--no-progress"], root


def tar_link_chain(tmp: Path):
    downloads = tmp / "downloads"
    downloads.mkdir()
    with tarfile.open(downloads / "VOCtrainval_11-May-2012.tar", "w") as handle:
        for name, kind in (("a/b", tarfile.SYMTYPE), ("a/b/c", tarfile.SYMTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, ".."
            handle.addfile(info)
        info = tarfile.TarInfo("a/b/c/escaped.txt")
        info.size = 4
        handle.addfile(info, io.BytesIO(b"evil"))
    root = tmp / "data"
    return ["prepare", "voc", "--from", str(downloads), "--data-root", str(root), "--no-progress"], root


def truncated_zip(tmp: Path):
    downloads = tmp / "downloads"
    downloads.mkdir()
    whole = io.BytesIO()
    with zipfile.ZipFile(whole, "w") as handle:
        handle.writestr("ADEChallengeData2016/images/validation/x.jpg", os.urandom(40_000))
    _write(downloads / "ADEChallengeData2016.zip", whole.getvalue()[:25_000])
    root = tmp / "data"
    return ["prepare", "ade20k", "--from", str(downloads), "--data-root", str(root), "--no-progress"], root


def unverifiable_download(tmp: Path):
    root = tmp / "data"
    return ["prepare", "coco-stuff", "--download", "--data-root", str(root), "--no-progress"], root


def pickle_with_code(tmp: Path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    downloads = tmp / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "ADE20K_2021_17_01.zip", "w") as handle:
        handle.writestr("ADE20K_2021_17_01/index_ade20k.pkl", pickle.dumps({"filename": [Evil()]}))
        handle.writestr("ADE20K_2021_17_01/images/readme.txt", "fine")
    root = tmp / "data"
    return ["prepare", "ade20k-full", "--from", str(downloads), "--data-root", str(root), "--no-progress"], root


def verify_truncated_jpeg(tmp: Path):
    root = tmp / "data"
    whole = _jpeg()
    _ade150_prepared(root, whole[: len(whole) // 2])
    return ["prepare", "ade20k", "--verify", "--data-root", str(root), "--no-count-check", "--no-progress"], None


def verify_not_an_image(tmp: Path):
    root = tmp / "data"
    _ade150_prepared(root, b"#!/bin/sh\necho this is a shell script, not a JPEG\n")
    return ["prepare", "ade20k", "--verify", "--data-root", str(root), "--no-count-check", "--no-progress"], None


def evaluate_truncated_jpeg(tmp: Path):
    root = tmp / "data"
    whole = _jpeg()
    _ade150_prepared(root, whole[: len(whole) - 200])
    return ["evaluate", "--bench", "ade150", "--data-root", str(root), "--mode", "whole",
            "--out", str(tmp / "out" / "r.json")], tmp / "out"


def split_id_with_a_folder(tmp: Path):
    root = tmp / "data"
    voc = root / "VOCdevkit/VOC2012"
    _write(voc / "JPEGImages/2007_000032.jpg", _jpeg())
    _write(voc / "SegmentationClassAug/2007_000032.png", _png(np.zeros((16, 20), np.uint8)))
    _write(voc / "ImageSets/Segmentation/val.txt", b"2007_000032\n../../../../outside\n")
    return ["evaluate", "--bench", "voc21", "--data-root", str(root), "--mode", "whole",
            "--out", str(tmp / "out" / "r.json")], tmp / "out"


def nan_learning_rate(tmp: Path):
    return ["train", str(QUICKSTART), *TINY, "optim.lr=nan", "--output", str(tmp / "run")], tmp / "run"


def infinite_override(tmp: Path):
    return ["train", str(QUICKSTART), *TINY, "optim.weight_decay=.inf", "--output", str(tmp / "run")], tmp / "run"


def sidecar_is_a_list(tmp: Path):
    _write(tmp / "ck" / "step_00000001.safetensors", b"\0" * 16)
    _write(tmp / "ck" / "step_00000001.json", b"[1, 2, 3]")
    return ["evaluate", "--bench", "toy", "--limit", "1", "--checkpoint", str(tmp / "ck" / "step_00000001.safetensors"),
            "--out", str(tmp / "out" / "r.json")], tmp / "out"


def export_onto_a_file(tmp: Path):
    _write(tmp / "ck" / "step_00000001.safetensors", b"\0" * 16)
    _write(tmp / "ck" / "step_00000001.json", b"{}")
    taken = _write(tmp / "taken.bin", b"precious")
    return ["export", str(tmp / "ck"), "--format", "open_clip", "--out", str(taken)], None


def predict_into_its_input_folder(tmp: Path):
    images = tmp / "photos"
    _write(images / "cat.png", _png(np.full((8, 8, 3), 90, np.uint8)))
    _write(images / "cat_label.png", b"the user's own file")
    return ["predict", str(images), "--classes", "cat, sky", "--out", str(images)], None


def predict_cannot_write(tmp: Path):
    images = tmp / "photos"
    _write(images / "cat.png", _png(np.full((8, 8, 3), 90, np.uint8)))
    out = tmp / "pred"
    (out / "cat_label.png").mkdir(parents=True)  # a folder where the label map should go: imwrite fails
    return ["predict", str(images), "--classes", "cat, sky", "--out", str(out)], out


def locked_run_folder(tmp: Path):
    run = tmp / "run"
    _write(run / LOCK_NAME, f"{os.getpid()} {socket.gethostname()}\n".encode())  # a live writer
    return ["train", str(QUICKSTART), *TINY, "--output", str(run)], None


CASES = [
    Case("zip link chain", zip_link_chain, 1, "is a link"),
    Case("tar link chain", tar_link_chain, 1, "outside the target folder"),
    Case("truncated zip", truncated_zip, 1, "ADEChallengeData2016.zip"),
    Case("download without checksum", unverifiable_download, 2, "never downloads it"),  # fetch it by hand: exit 2
    Case("pickle that runs code", pickle_with_code, 1, "refusing to load"),
    Case("verify: truncated JPEG", verify_truncated_jpeg, 1, "ADE_val_00000001.jpg (Truncated File Read)"),
    Case("verify: not an image", verify_not_an_image, 1, "ADE_val_00000001.jpg (cannot identify image file"),
    Case("evaluate: truncated JPEG", evaluate_truncated_jpeg, 1, "ADE_val_00000001.jpg (image file is truncated",
         oracle=True),
    Case("split id with folders", split_id_with_a_folder, 1, "'../../../../outside'", oracle=True),
    Case("optim.lr=nan", nan_learning_rate, 2, "optim.lr: expected a finite number"),
    Case("inf in a recipe", infinite_override, 2, "expected a finite number"),
    Case("sidecar is a list", sidecar_is_a_list, 1, "is not an ovss sidecar"),
    Case("export onto a file", export_onto_a_file, 2, "is an existing file"),
    Case("predict --out = input folder", predict_into_its_input_folder, 2, "is the folder the input"),
    Case("predict cannot write", predict_cannot_write, 1, "cannot write", oracle=True),
    Case("second writer of a run", locked_run_folder, 1, "is in use by ovss process"),
]


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_line_and_writes_nothing_outside(case: Case, tmp_path: Path, monkeypatch):
    if case.oracle:  # these cases need a model, not CLIP weights
        monkeypatch.setattr(common, "build_segmenter", lambda *args, **kwargs: PixelOracle(window=64))
        monkeypatch.setattr(common, "check_model_source", lambda *args, **kwargs: None)
    area = tmp_path / "area"
    (area / "cwd").mkdir(parents=True)
    monkeypatch.chdir(area / "cwd")  # default output folders (runs/, predictions/) land inside the area too
    args, out = case.build(area)
    before = _snapshot(area)
    result = runner.invoke(app, args)
    assert result.exit_code == case.exit_code, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert case.says in errors[0], errors[0]
    after = _snapshot(area)
    for name, content in before.items():  # inputs untouched
        assert after.get(name, "gone") == content, f"{name} changed"
    new = [name for name in after if name not in before]
    allowed = str(out.relative_to(area)) if out is not None else None
    outside = [name for name in new if allowed is None or not (name == allowed or name.startswith(allowed + "/"))]
    assert outside == [], outside
    assert not (tmp_path / "escaped.txt").exists() and not (area / "escaped.txt").exists()
    assert not (area / "cwd" / "pwned").exists()


def test_a_failed_torchrun_job_is_summarised_per_rank():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ovss_cli.runtime.distributed import failure_summary

    error = ChildFailedError("ovss_cli", {1: ProcessFailure(local_rank=1, pid=123, exitcode=3, error_file="")})
    assert str(error).count("\n") > 5  # torch's own report: a framed table
    assert failure_summary(error) == "rank 1 exited with code 3 (that rank's own error is printed above)"
    assert failure_summary(RuntimeError("\n\nfirst\nsecond")) == "first"


def test_any_error_message_is_printed_on_one_line():
    import typer

    from ovss_cli.cli import friendly_errors
    from ovss_cli.errors import OvssError

    def fails() -> None:
        raise OvssError("outer problem (inner library says:\n  line two\n  line three)")

    small = typer.Typer()
    small.callback()(lambda: None)
    small.command("fails")(friendly_errors(fails))
    result = runner.invoke(small, ["fails"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: outer problem (inner library says: line two line three)"


def test_images_keep_their_pixels_and_exif_orientation(tmp_path: Path):
    from PIL import Image

    from ovss_cli.data.io import read_image

    pixels = np.random.default_rng(0).integers(0, 255, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(pixels).save(tmp_path / "rotated.jpg", exif=exif.tobytes(), quality=95)
    expected = cv2.cvtColor(cv2.imread(str(tmp_path / "rotated.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    decoded = read_image(tmp_path / "rotated.jpg")
    assert decoded.shape == (20, 12, 3) and np.array_equal(decoded, expected)  # the same pixels cv2 gave
    decoded[0, 0] = 0  # callers may write into it
