"""Getting a dataset's raw files into place: already there, from --from, or downloaded.

For each official archive of a dataset, in order of preference:
1. its contents already sit under the data root (extracted before, by us or by hand);
2. the archive file is in the archive folder (--from DIR, else <root>/downloads): extract it;
3. an extracted copy of its contents is in --from: hard-link (else copy) it into place;
4. with --download: fetch it from the official URL, verify its published checksum, extract it
   (an archive without a published checksum is never downloaded: it must come by hand).
Otherwise one error line lists what to fetch by hand and where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ovss_cli.data.benchmarks import DatasetMissingError
from ovss_cli.errors import UsageError
from ovss_cli.fileio import write_text
from ovss_cli.prepare.archive import safe_extract
from ovss_cli.prepare.common import echo, link_or_copy
from ovss_cli.prepare.download import DownloadError, download
from ovss_cli.prepare.registry import Archive, DatasetSpec
from ovss_cli.progress import track

MARKERS = ".ovss/extracted"


def _marker(root: Path, archive: Archive, state: str) -> Path:
    return root / MARKERS / f"{archive.name}.{state}"


def is_in_place(root: Path, archive: Archive) -> bool:
    """Extracted completely by us, or present from elsewhere and not left half-extracted by us."""
    if _marker(root, archive, "done").exists():
        return True
    if _marker(root, archive, "extracting").exists():
        return False
    if archive.superseded_by and all((root / item).exists() for item in archive.superseded_by):
        return True
    return all((root / archive.extract_to / item).exists() for item in archive.contents)


def extract_archive(root: Path, archive: Archive, file: Path, progress: bool) -> None:
    """Extract with markers around it, so an interrupted extraction is redone, not trusted."""
    write_text(_marker(root, archive, "extracting"), str(file))
    safe_extract(file, root / archive.extract_to, progress=progress, max_bytes=archive.max_unpacked)
    write_text(_marker(root, archive, "done"), str(file))
    _marker(root, archive, "extracting").unlink()


def link_extracted(root: Path, archive: Archive, source: Path, progress: bool) -> None:
    """Hard-link (else copy) an extracted copy of the archive's contents from `source`."""

    write_text(_marker(root, archive, "extracting"), str(source))
    pairs = []
    for item in archive.contents:
        origin, target = source / item, root / archive.extract_to / item
        if origin.is_file():
            pairs.append((origin, target))
            continue
        for folder, _, files in os.walk(origin):
            relative = Path(folder).relative_to(origin)
            pairs.extend((Path(folder) / name, target / relative / name) for name in files)
    for origin, target in track(pairs, len(pairs), f"linking {archive.name} contents", enabled=progress):
        link_or_copy(origin, target)
    write_text(_marker(root, archive, "done"), str(source))
    _marker(root, archive, "extracting").unlink()


def downloadable(archive: Archive) -> bool:
    """Only an archive with a public URL and a published checksum is downloaded (else it could be swapped)."""
    return bool(archive.urls) and archive.checksum is not None


def _fetch_by_hand_line(spec: DatasetSpec, missing: list[Archive], folder: Path) -> str:
    parts = []
    for archive in missing:
        where = archive.urls[0] if archive.urls else f"register at {spec.homepage}"
        if archive.urls and archive.checksum is None:
            where += "; no checksum is published for it, so ovss never downloads it"
        parts.append(f"{archive.name} ({archive.approx_size}, {where})")
    direct = all(downloadable(archive) for archive in missing)
    fix = "or run again with --download" if direct else "then run again"
    return (f"missing raw files for {spec.name}: {'; '.join(parts)} - put them in {folder} "
            f"(or pass --from DIR holding them), {fix}")


def ensure_raw_files(spec: DatasetSpec, root: Path, source: Path | None, allow_download: bool,
                     progress: bool = True) -> None:
    """Make every archive of `spec` present, extracted, under `root`; see the module docstring."""
    if source is not None and not source.is_dir():
        raise UsageError(f"--from {source} is not a folder; point it at the folder holding the downloaded archives")
    archive_folder = source if source is not None else root / "downloads"
    missing: list[Archive] = []
    for archive in spec.archives:
        if is_in_place(root, archive):
            continue
        file = archive_folder / archive.name
        if file.is_file():
            echo(f"extracting {file} into {root / archive.extract_to}")
            extract_archive(root, archive, file, progress)
        elif source is not None and all((source / item).exists() for item in archive.contents):
            echo(f"linking the extracted {archive.name} contents from {source}")
            link_extracted(root, archive, source, progress)
        else:
            missing.append(archive)
    if not missing:
        return
    if not allow_download or not all(downloadable(archive) for archive in missing):
        raise DatasetMissingError(_fetch_by_hand_line(spec, missing, archive_folder))  # exit 2: the user can fix it
    for archive in missing:
        file = _download_archive(spec, archive, archive_folder, progress)
        echo(f"extracting {file} into {root / archive.extract_to}")
        extract_archive(root, archive, file, progress)


def _download_archive(spec: DatasetSpec, archive: Archive, folder: Path, progress: bool) -> Path:
    hint = _fetch_by_hand_line(spec, [archive], folder)
    error: DownloadError | None = None
    for url in archive.urls:
        echo(f"downloading {url}")
        try:
            return download(url, folder / archive.name, archive.checksum, progress=progress, manual_hint=hint)
        except DownloadError as err:
            error = err
    assert error is not None  # urls is never empty here: checked by the caller
    raise error
