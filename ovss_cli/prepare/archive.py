"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: absolute paths, `..` components,
links whose target leaves the extraction folder, and device or FIFO entries make the whole
archive refused (zip/tar slip), so a hostile or corrupt archive writes nothing at all.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
import zipfile
from pathlib import Path

from ovss_cli.errors import OvssError


class UnsafeArchiveError(OvssError):
    """An archive member would land outside the extraction folder."""


def _stays_inside(relative: str) -> bool:
    """Whether `relative` (a posix path inside an archive) stays inside the extraction folder."""
    if not relative or relative.startswith("/") or "\\" in relative or (len(relative) > 1 and relative[1] == ":"):
        return False
    normalized = posixpath.normpath(relative)
    return normalized != ".." and not normalized.startswith("../")


def _check_name(archive: Path, name: str) -> None:
    if not _stays_inside(name.rstrip("/") or "."):
        raise UnsafeArchiveError(
            f"refusing to extract {archive.name}: member '{name}' would be written outside the target folder; "
            "the archive is not the official one or is corrupt, download it again"
        )


def _check_link(archive: Path, member_name: str, link_target: str, hard: bool) -> None:
    # A symlink is resolved from its own folder, a tar hard link from the archive root.
    base = "" if hard else posixpath.dirname(member_name)
    if link_target.startswith("/") or not _stays_inside(posixpath.join(base, link_target) or "."):
        raise UnsafeArchiveError(
            f"refusing to extract {archive.name}: link '{member_name}' -> '{link_target}' points outside the "
            "target folder; the archive is not the official one or is corrupt, download it again"
        )


def _zip_members(archive: Path, handle: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    members = handle.infolist()
    for info in members:
        _check_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            _check_link(archive, info.filename, handle.read(info).decode("utf-8", "replace"), hard=False)
        elif stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded, a plain file
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: member '{info.filename}' is a special file")
    return members


def _tar_members(archive: Path, handle: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = handle.getmembers()
    for info in members:
        _check_name(archive, info.name)
        if info.issym() or info.islnk():
            _check_link(archive, info.name, info.linkname, hard=info.islnk())
        elif not (info.isfile() or info.isdir()):
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: member '{info.name}' is a special file")
    return members


def list_members(archive: Path) -> list[str]:
    """Member names of a zip or tar archive (after the safety checks)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            return [info.filename for info in _zip_members(archive, handle)]
    with _open_tar(archive) as handle:
        return [info.name for info in _tar_members(archive, handle)]


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as err:
        raise OvssError(f"{archive} is neither a zip nor a readable tar archive ({err}); download it again") from None


def safe_extract(archive: Path, target: Path, progress: bool = True) -> int:
    """Extract a zip, tar, tar.gz or tgz archive into `target` after checking every member.

    Returns the number of members. Raises UnsafeArchiveError (nothing written) for a member
    escaping `target`, OvssError for an unreadable archive.
    """
    from ovss_cli.progress import track

    target.mkdir(parents=True, exist_ok=True)
    description = f"extracting {archive.name}"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                members = _zip_members(archive, handle)
                for info in track(members, len(members), description, enabled=progress):
                    if stat.S_ISLNK(info.external_attr >> 16):
                        _make_symlink(target / info.filename, handle.read(info).decode("utf-8"))
                    else:
                        handle.extract(info, target)
                return len(members)
        with _open_tar(archive) as handle:
            members = _tar_members(archive, handle)
            for info in track(members, len(members), description, enabled=progress):
                # The "data" filter repeats our checks inside tarfile itself and drops odd permissions.
                handle.extract(info, target, filter="data")
            return len(members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise OvssError(f"cannot extract {archive} ({err}); the file is probably truncated, download it again") from None


def _make_symlink(path: Path, link_target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    os.symlink(link_target, path)
