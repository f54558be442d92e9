"""Resumable, checksum-verified HTTP downloads with a progress display.

Bytes go to `<name>.part`; a cut connection is resumed with an HTTP Range request from the
bytes already on disk (also across separate runs). Only a complete file whose checksum (or,
where none is published, whose size) matches is renamed to its final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ovss_cli.errors import OvssError

CHUNK = 1 << 20


class DownloadError(OvssError):
    """A download failed in a way a re-run or a manual download can fix."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not match the published checksum."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "md5" or "sha256"
    value: str


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


class _ByteProgress:
    """A rich bar on a terminal, a line every few seconds otherwise."""

    def __init__(self, label: str, total: int | None, done: int, enabled: bool):
        self.label, self.total, self.done = label, total, done
        self.enabled = enabled
        self._bar = None
        self._last = time.monotonic()
        if enabled and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, completed=done)

    def advance(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, total=self.total)
        elif self.enabled and time.monotonic() - self._last >= 10:
            self._last = time.monotonic()
            total = f"/{self.total / 1e6:.0f}" if self.total else ""
            print(f"{self.label}: {self.done / 1e6:.0f}{total} MB", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _content_range_total(header: str | None) -> tuple[int, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); '*' total -> None."""
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    if not match:
        raise DownloadError(f"server sent an invalid Content-Range header {header!r}")
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _fetch_once(url: str, part: Path, expected_size: int | None, timeout: float,
                progress: _ByteProgress) -> int | None:
    """One request: append to `part` from its current size. Returns the total size if the server said."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "ovss-prepare"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and expected_size in (None, have):
            return have  # the .part already holds every byte
        raise
    with response:
        if have and response.status == 206:
            start, total = _content_range_total(response.headers.get("Content-Range"))
            if start != have:
                raise DownloadError(f"server resumed {url} at byte {start} instead of {have}")
            mode = "ab"
        else:
            # The server ignored the Range request (or there was none): start again from zero.
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode, have = "wb", 0
            progress.done = 0
        progress.total = total or expected_size
        with open(part, mode) as handle:
            while True:
                block = response.read(CHUNK)
                if not block:
                    break
                handle.write(block)
                progress.advance(len(block))
    return total


def download(url: str, destination: Path, checksum: Checksum | None = None, size: int | None = None,
             attempts: int = 5, timeout: float = 60.0, progress: bool = True,
             manual_hint: str = "") -> Path:
    """Download `url` to `destination`, resuming cut transfers; verify the checksum, else the size.

    Raises DownloadError with one actionable line when the server cannot be reached (`manual_hint`
    is appended: where to put a file fetched by hand), ChecksumError (the bad file is deleted).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    display = _ByteProgress(f"downloading {destination.name}", size,
                            part.stat().st_size if part.exists() else 0, progress)
    total = size
    try:
        for attempt in range(attempts):
            before = part.stat().st_size if part.exists() else 0
            try:
                reported = _fetch_once(url, part, total, timeout, display)
                total = reported if reported is not None else total
            except urllib.error.HTTPError as err:
                raise DownloadError(f"{url} answered HTTP {err.code}; {manual_hint or 'download it by hand'}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as err:
                after = part.stat().st_size if part.exists() else 0
                if after == before:
                    if attempt == 0 or attempt == attempts - 1:
                        reason = getattr(err, "reason", err)
                        raise DownloadError(f"cannot reach {url} ({reason}); {manual_hint or 'download it by hand'}") from None
                    time.sleep(min(2 ** attempt, 10))
                continue
            have = part.stat().st_size if part.exists() else 0
            if total is None or have >= total:
                break
        else:
            have = part.stat().st_size if part.exists() else 0
            raise DownloadError(f"download of {url} stopped at {have} bytes after {attempts} attempts; "
                                "run the same command again to resume")
    finally:
        display.close()
    _verify(part, destination, checksum, total)
    os.replace(part, destination)
    return destination


def _verify(part: Path, destination: Path, checksum: Checksum | None, size: int | None) -> None:
    have = part.stat().st_size
    if size is not None and have != size:
        part.unlink()
        raise ChecksumError(f"{destination.name}: got {have} bytes, expected {size}; the file was deleted, "
                            "run again to download it afresh")
    if checksum is not None:
        actual = file_digest(part, checksum.algorithm)
        if actual != checksum.value.lower():
            part.unlink()
            raise ChecksumError(f"{destination.name}: {checksum.algorithm} {actual} does not match the published "
                                f"{checksum.value}; the file was deleted, run again to download it afresh")
