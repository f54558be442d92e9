"""Atomic file writes: readers see the old file or the whole new one, never a half-written one.

Every writer of ovss goes through `atomic_path`: the content goes to a hidden temporary sibling
`.<name>.ovss-tmp-<pid>` and is renamed onto the final name only when complete. The temporary
never ends in the final suffix, so a `*.png` or `*.json` listing never sees it, and
`remove_temporaries` finds those a killed run left behind. Every final file gets the umask's mode,
also from writers that create theirs 0600 (safetensors), so checkpoints and exports stay readable
by the other users of a shared machine as any other file.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

from ovss_cli.errors import OvssError
from ovss_cli.textutil import first_line

TEMP_MARK = ".ovss-tmp-"


def temporary_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode() -> int:
    """The mode a new regular file gets here (0o644 under the usual umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `path` that replaces `path` only if the block succeeds.

    `durable` also fsyncs the file and its folder, so the new file survives a power cut
    (checkpoints, exports); bulk outputs that a re-run can redo (prepared labels) skip it.
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.chmod(temporary, umask_mode())
        if durable:
            _fsync_file(temporary)
        os.replace(temporary, path)
    except OSError as err:  # full disk, unwritable folder, a folder in the way: one line, nothing half-written
        raise OvssError(f"cannot write {path} ({first_line(err)}); check that the folder is writable and the disk "
                        "is not full") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
    if durable:
        _fsync_dir(path.parent)


def atomic_write(path: Path, write: Callable[[Path], None], durable: bool = True) -> None:
    """Call `write(temporary)` for a writer that takes a file name (safetensors, torch.save, onnx)."""
    with atomic_path(path, durable) as temporary:
        write(temporary)


def write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable) as temporary:
        temporary.write_bytes(data)


def write_text(path: Path, text: str, durable: bool = True) -> None:
    with atomic_path(path, durable) as temporary:
        temporary.write_text(text, encoding="utf-8")


def write_json(path: Path, payload, durable: bool = True) -> None:
    """Indented JSON; NaN/Infinity are kept (metrics of an empty class are NaN)."""
    write_text(path, json.dumps(payload, indent=2, allow_nan=True), durable)


def remove_temporaries(*folders: Path) -> int:
    """Delete the temporaries a killed run left in `folders` (call while no writer runs); returns how many."""
    removed = 0
    for folder in folders:
        if Path(folder).is_dir():
            for leftover in Path(folder).glob(f".*{TEMP_MARK}*"):
                if leftover.is_file():
                    leftover.unlink(missing_ok=True)
                    removed += 1
    return removed
