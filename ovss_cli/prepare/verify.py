"""`ovss prepare DATASET --verify`: check a prepared folder without changing it.

For every benchmark the dataset produces: both folders exist, every label (or every id of the
benchmark's split file) has its label and its image, label values are class ids or the ignore
value, and each label map has its image's size. Counts are compared with the official ones.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ovss_cli.data.benchmarks import BENCHMARKS, get_benchmark
from ovss_cli.data.io import read_image, read_label, read_split_ids
from ovss_cli.errors import OvssError
from ovss_cli.prepare.common import SplitCount, check_counts, list_files
from ovss_cli.prepare.registry import BENCHMARK_COUNTS
from ovss_cli.progress import track

MAX_LISTED = 3


def check_pair(label_path: Path, image_path: Path, num_classes: int, ignore: int) -> str | None:
    """A problem with one label/image pair, or None. The image is decoded in full (a truncated file is a problem)."""

    if not label_path.is_file():
        return f"{label_path} is missing"
    if not image_path.is_file():
        return f"{image_path} (the image of {label_path.name}) is missing"
    try:
        label = read_label(label_path)
    except OvssError as err:
        return str(err)
    values = np.unique(label)
    bad = values[((values >= num_classes) & (values != ignore)) | (values < 0)]
    if bad.size:
        return f"{label_path} holds values {bad[:5].tolist()} outside 0..{num_classes - 1} and the ignore value {ignore}"
    try:
        height, width = read_image(image_path).shape[:2]
    except OvssError as err:
        return str(err)
    if label.shape != (height, width):
        return f"{label_path} is {label.shape[1]}x{label.shape[0]} but its image is {width}x{height}"
    return None


def _check_args(args: tuple) -> str | None:
    return check_pair(*args)


def verify_benchmark(name: str, root: Path, workers: int, progress: bool) -> tuple[int, list[str]]:
    """(number of pairs checked, problems) for one benchmark of ovss_cli.data.benchmarks."""

    benchmark = get_benchmark(name)
    image_dir, label_dir = root / benchmark.image_dir, root / benchmark.label_dir
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            return 0, [f"{name}: folder {folder} does not exist"]
    if benchmark.split_file is not None:
        split_file = root / benchmark.split_file
        if not split_file.is_file():
            return 0, [f"{name}: split file {split_file} does not exist"]
        stems = read_split_ids(split_file)
    else:
        stems = [path.stem for path in list_files(label_dir, benchmark.label_suffix)]
    tasks = [(label_dir / f"{stem}{benchmark.label_suffix}", image_dir / f"{stem}{benchmark.image_suffix}",
              benchmark.num_eval_classes, benchmark.ignore_index) for stem in stems]
    if workers > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(track(pool.map(_check_args, tasks, chunksize=max(1, len(tasks) // (workers * 8))),
                                 len(tasks), f"verifying {name}", enabled=progress))
    else:
        results = list(track(map(_check_args, tasks), len(tasks), f"verifying {name}", enabled=progress))
    return len(tasks), [f"{name}: {problem}" for problem in results if problem is not None]


def verify_dataset(dataset: str, root: Path, workers: int = 1, strict_counts: bool = True,
                   progress: bool = True) -> list[str]:
    """Summary lines for every benchmark `dataset` produces; OvssError listing the first problems."""

    names = [name for name, benchmark in BENCHMARKS.items() if benchmark.prepare == dataset]
    problems: list[str] = []
    counts = []
    for name in names:
        checked, found = verify_benchmark(name, root, workers, progress)
        problems += found
        counts.append(SplitCount(name, checked, checked, BENCHMARK_COUNTS.get(name)))
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise OvssError(f"{dataset} under {root} failed verification: {listed}{more}; "
                        f"run `ovss prepare {dataset} --data-root {root}` to redo what is missing")
    return [f"ok {line}" if not line.startswith("warning") else line for line in check_counts(counts, strict_counts)]
