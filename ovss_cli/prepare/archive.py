"""Safe extraction of zip and tar archives.

Every member is checked before anything is written, so a hostile or corrupt archive writes
nothing at all. Refused: absolute paths and `..` components; a destination that, after following
the archive's own symlinks, leaves the extraction folder (a chain such as `a/b -> ..`,
`a/b/c -> ..`, then `a/b/c/x`); any link inside a zip (the official zips hold none); device and
FIFO entries; and members that together expand past `max_bytes` (a zip bomb).
"""

from __future__ import annotations

import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from ovss_cli.errors import OvssError
from ovss_cli.progress import track
from ovss_cli.textutil import first_line

MAX_LINK_DEPTH = 40  # deeper link chains are loops or attacks


class UnsafeArchiveError(OvssError):
    """An archive member would land outside the extraction folder, or the archive is a bomb."""


def _refuse(archive: Path, what: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"refusing to extract {archive.name}: {what}; the archive is not the official one "
                              "or is corrupt, download it again")


def _resolve(path: str, links: dict[str, str], depth: int = 0) -> str | None:
    """Where the archive-relative `path` lands once the archive's own symlinks (`links`: member ->
    target) are followed, as a normalized relative path; None when it leaves the extraction folder."""
    if depth > MAX_LINK_DEPTH or path.startswith("/") or "\\" in path or (len(path) > 1 and path[1] == ":"):
        return None
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(part)
        target = links.get("/".join(parts))
        if target is not None:  # a symlink of the archive: continue from where it points
            resolved = _resolve(posixpath.join(*parts[:-1], target) if len(parts) > 1 else target, links, depth + 1)
            if resolved is None:
                return None
            parts = resolved.split("/") if resolved else []
    return "/".join(parts)


def _check_destinations(archive: Path, members: list[tuple[str, str, str]]) -> None:
    """`members`: (name, kind 'file'/'dir'/'symlink'/'hardlink', link target) in extraction order.

    Links are keyed by where they really land (their parent folder resolved through the links
    created before them), so a chain of links cannot hide an escape."""
    links: dict[str, str] = {}
    hard_links: dict[str, str] = {}
    for name, kind, target in members:
        stripped = name.rstrip("/")
        if _resolve(stripped, {}) is None:
            raise _refuse(archive, f"member '{name}' would be written outside the target folder")
        parent = _resolve(posixpath.dirname(stripped), links)
        if parent is None:
            raise _refuse(archive, f"member '{name}' would be written outside the target folder")
        location = posixpath.join(parent, posixpath.basename(stripped)) if parent else posixpath.basename(stripped)
        if kind == "symlink":
            links[location] = target
        elif kind == "hardlink":
            hard_links[name] = target
    # checked against every link of the archive: a later link may redirect an earlier one's target
    for location, target in links.items():
        if _resolve(posixpath.join(posixpath.dirname(location), target), links) is None:
            raise _refuse(archive, f"link '{location}' -> '{target}' points outside the target folder")
    for name, target in hard_links.items():  # a tar hard link names its target from the archive root
        if _resolve(target, links) is None:
            raise _refuse(archive, f"link '{name}' -> '{target}' points outside the target folder")


def _check_size(archive: Path, sizes: list[int], max_bytes: int | None) -> None:
    total = sum(sizes)
    if max_bytes is not None and total > max_bytes:
        raise _refuse(archive, f"its members expand to {total / 1e9:.1f} GB, more than the "
                               f"{max_bytes / 1e9:.1f} GB its official release can hold")


def _zip_members(archive: Path, handle: zipfile.ZipFile, max_bytes: int | None) -> list[zipfile.ZipInfo]:
    members = handle.infolist()
    for info in members:
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(archive, f"member '{info.filename}' is a link, and the official zips hold none")
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no type recorded, a plain file
            raise _refuse(archive, f"member '{info.filename}' is a special file")
    _check_destinations(archive, [(info.filename, "file", "") for info in members])
    _check_size(archive, [info.file_size for info in members], max_bytes)
    return members


def _tar_members(archive: Path, handle: tarfile.TarFile, max_bytes: int | None) -> list[tarfile.TarInfo]:
    members = handle.getmembers()
    listed = []
    for info in members:
        if info.issym() or info.islnk():
            if info.linkname.startswith("/"):
                raise _refuse(archive, f"link '{info.name}' -> '{info.linkname}' points outside the target folder")
            listed.append((info.name, "symlink" if info.issym() else "hardlink", info.linkname))
        elif info.isfile() or info.isdir():
            listed.append((info.name, "file", ""))
        else:
            raise _refuse(archive, f"member '{info.name}' is a special file")
    _check_destinations(archive, listed)
    _check_size(archive, [info.size for info in members if info.isfile()], max_bytes)
    return members


def _open_tar(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as err:
        raise OvssError(f"{archive} is neither a zip nor a readable tar archive ({first_line(err)}); "
                        "download it again") from None


def _extract_zip_member(handle: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    destination = target / posixpath.normpath(info.filename.rstrip("/"))
    if info.is_dir():
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    # zipfile stops at the declared size and checks the CRC, so no member writes more than was checked
    with handle.open(info) as source, open(destination, "wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 20)


def safe_extract(archive: Path, target: Path, progress: bool = True, max_bytes: int | None = None) -> int:
    """Extract a zip, tar, tar.gz or tgz archive into `target` after checking every member.

    Returns the number of members. Raises UnsafeArchiveError (nothing written) for a member
    escaping `target` or members larger than `max_bytes` together, OvssError for an unreadable archive.
    """

    description = f"extracting {archive.name}"
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as handle:
                members = _zip_members(archive, handle, max_bytes)
                target.mkdir(parents=True, exist_ok=True)
                for info in track(members, len(members), description, enabled=progress):
                    _extract_zip_member(handle, info, target)
                return len(members)
        with _open_tar(archive) as handle:
            members = _tar_members(archive, handle, max_bytes)
            target.mkdir(parents=True, exist_ok=True)
            for info in track(members, len(members), description, enabled=progress):
                # The "data" filter repeats the checks inside tarfile itself and drops odd permissions.
                handle.extract(info, target, filter="data")
            return len(members)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as err:
        raise OvssError(f"cannot extract {archive} ({first_line(err)}); the file is probably truncated, "
                        "download it again") from None
