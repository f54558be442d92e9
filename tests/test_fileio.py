"""Atomic writes: a failed write keeps the old file, leaves no temporary, and files follow the umask."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ovss_cli import fileio
from ovss_cli.errors import OvssError


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "w.json"
    fileio.write_json(target, {"step": 1})

    def broken(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OvssError, match=r"cannot write .*w\.json \(disk full\); check that the folder is writable"):
        fileio.atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.json"]


def test_a_failed_rename_leaves_no_temporary(tmp_path, monkeypatch):
    def crash(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OvssError, match="cannot write .*a.png"):
        fileio.write_bytes(tmp_path / "a.png", b"\x89PNG", durable=False)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("durable", [True, False])
def test_files_are_created_with_the_umask_mode(tmp_path, durable):
    previous = os.umask(0o027)
    try:
        fileio.write_text(tmp_path / "t.txt", "x", durable)
    finally:
        os.umask(previous)
    assert (tmp_path / "t.txt").stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027; mkstemp would give 0o600


def test_temporaries_never_match_the_final_suffix_and_are_swept(tmp_path):
    target = tmp_path / "a.png"
    leftover = fileio.temporary_path(target)
    leftover.write_bytes(b"half")  # what a killed run leaves behind
    (tmp_path / "b.png").write_bytes(b"done")
    assert [p.name for p in tmp_path.glob("*.png")] == ["b.png"]
    assert fileio.remove_temporaries(tmp_path, tmp_path / "missing") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png"]


def test_label_maps_round_trip_through_the_one_reader(tmp_path):
    from ovss_cli.data.io import read_image, read_label, write_label, write_png

    small = np.array([[0, 1, 254], [255, 7, 3]], dtype=np.int64)
    large = np.array([[0, 458, 65535], [300, 1, 2]], dtype=np.int64)  # PC-459 ids need 16 bits
    write_label(tmp_path / "a.png", small)
    write_label(tmp_path / "b.tif", large)
    assert np.array_equal(read_label(tmp_path / "a.png"), small)
    assert np.array_equal(read_label(tmp_path / "b.tif"), large)
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # pure red must stay red (RGB in, RGB out)
    write_png(tmp_path / "c.png", rgb)
    assert np.array_equal(read_image(tmp_path / "c.png"), rgb)
