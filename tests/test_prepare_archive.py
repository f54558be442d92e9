"""Safe extraction: zip/tar slip and escaping links are refused before anything is written."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from ovss_cli.prepare.archive import UnsafeArchiveError, safe_extract
from tests.helpers import write_zip_link_chain


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as handle:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                handle.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                handle.addfile(info, io.BytesIO(data))
    return path


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_regular_archives_extract(tmp_path: Path):
    archive = _tar(tmp_path / "ok.tgz", [("top/a.txt", b"alpha"), ("top/sub/b.txt", b"beta"),
                                         _link("top/sub/link", "../a.txt", tarfile.SYMTYPE)])
    target = tmp_path / "out"
    assert safe_extract(archive, target, progress=False) == 3
    assert (target / "top/sub/b.txt").read_bytes() == b"beta"
    assert (target / "top/sub/link").read_bytes() == b"alpha"  # a link that stays inside is fine

    with zipfile.ZipFile(tmp_path / "ok.zip", "w") as handle:
        handle.writestr("z/one.txt", "1")
    safe_extract(tmp_path / "ok.zip", target, progress=False)
    assert (target / "z/one.txt").read_text() == "1"


@pytest.mark.parametrize("entries", [
    [("good.txt", b"fine"), ("../escaped.txt", b"evil")],
    [("good.txt", b"fine"), ("/tmp/absolute-ovss-test.txt", b"evil")],
    [("good.txt", b"fine"), ("a/../../escaped.txt", b"evil")],
    [("good.txt", b"fine"), _link("inner/link", "../../escaped.txt", tarfile.SYMTYPE)],
    [("good.txt", b"fine"), _link("inner/abs", "/etc/passwd", tarfile.SYMTYPE)],
    [("good.txt", b"fine"), _link("hard", "../escaped.txt", tarfile.LNKTYPE)],
], ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "symlink-absolute", "hardlink-out"])
def test_tar_slip_is_refused_and_nothing_written(tmp_path: Path, entries):
    archive = _tar(tmp_path / "evil.tgz", entries)
    target = tmp_path / "area" / "out"
    with pytest.raises(UnsafeArchiveError, match="refusing to extract evil.tgz"):
        safe_extract(archive, target, progress=False)
    assert _files_under(tmp_path / "area") == []  # not even the harmless member (nor the folder) was written
    assert not Path("/tmp/absolute-ovss-test.txt").exists()


def test_zip_slip_and_zip_symlink_are_refused(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as handle:
        handle.writestr("fine.txt", "ok")
        handle.writestr("../../escaped.txt", "evil")
    with pytest.raises(UnsafeArchiveError):
        safe_extract(tmp_path / "evil.zip", tmp_path / "out", progress=False)
    assert _files_under(tmp_path / "out") == []
    assert not (tmp_path / "escaped.txt").exists()

    with zipfile.ZipFile(tmp_path / "link.zip", "w") as handle:
        info = zipfile.ZipInfo("inner/link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        handle.writestr(info, "../../outside")
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        safe_extract(tmp_path / "link.zip", tmp_path / "out2", progress=False)
    assert not os.path.lexists(tmp_path / "out2" / "inner" / "link")


def test_a_zip_link_chain_is_refused_before_anything_is_written(tmp_path: Path):
    # each link looks harmless on its own text; together they lead out of the target
    write_zip_link_chain(tmp_path / "chain.zip", "harmless.txt")
    area = tmp_path / "area"
    with pytest.raises(UnsafeArchiveError, match="is a link"):
        safe_extract(tmp_path / "chain.zip", area / "out", progress=False)
    assert _files_under(tmp_path / "area") == []


def test_a_tar_link_chain_is_refused_before_anything_is_written(tmp_path: Path):
    archive = _tar(tmp_path / "chain.tgz", [("harmless.txt", b"ok"), _link("a/b", "..", tarfile.SYMTYPE),
                                            _link("a/b/c", "..", tarfile.SYMTYPE), ("a/b/c/escaped.txt", b"evil")])
    target = tmp_path / "area" / "out"
    with pytest.raises(UnsafeArchiveError, match="outside the target folder"):
        safe_extract(archive, target, progress=False)
    assert _files_under(tmp_path / "area") == []
    assert not (tmp_path / "escaped.txt").exists()


@pytest.mark.parametrize("entries", [
    [_link("loop", "loop/x", tarfile.SYMTYPE)],  # a link through itself never ends
    [_link("d/up", "..", tarfile.SYMTYPE), _link("out", "d/up/..", tarfile.SYMTYPE)],  # inside text, outside target
    [_link("d/up", "..", tarfile.SYMTYPE), ("d/up/../escaped.txt", b"evil")],
], ids=["loop", "via-link", "write-via-link"])
def test_tar_links_are_resolved_through_each_other(tmp_path: Path, entries):
    with pytest.raises(UnsafeArchiveError):
        safe_extract(_tar(tmp_path / "evil.tgz", entries), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_members_expanding_past_the_bound_are_refused(tmp_path: Path):
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("zeros.bin", bytes(2_000_000))  # deflates to about 2 kB
    assert (tmp_path / "bomb.zip").stat().st_size < 10_000
    with pytest.raises(UnsafeArchiveError, match="expand to"):
        safe_extract(tmp_path / "bomb.zip", tmp_path / "out", progress=False, max_bytes=1_000_000)
    assert not (tmp_path / "out").exists()
    assert safe_extract(tmp_path / "bomb.zip", tmp_path / "out", progress=False, max_bytes=2_000_000) == 1
    assert (tmp_path / "out" / "zeros.bin").stat().st_size == 2_000_000


def test_truncated_archive_is_a_clear_error(tmp_path: Path):
    archive = _tar(tmp_path / "ok.tgz", [("a.bin", os.urandom(50_000))])
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(archive.read_bytes()[:20_000])
    from ovss_cli.errors import OvssError

    with pytest.raises(OvssError, match="download it again") as caught:
        safe_extract(broken, tmp_path / "out", progress=False)
    assert "\n" not in str(caught.value)
