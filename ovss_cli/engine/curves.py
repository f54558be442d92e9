"""Training curves of runs, read from their metrics.jsonl: series, summaries and a PNG chart.

The chart is drawn with OpenCV (no plotting library): one panel per quantity (loss, learning
rate, each mIoU), one colour per run, so several runs compare at a glance. No torch needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np

from ovss_cli.errors import OvssError, UsageError

METRICS_FILE = "metrics.jsonl"
PANEL_WIDTH, PANEL_HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 30, 34
# Line colours (RGB), distinct on white; a run keeps its colour in every panel.
RUN_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def find_runs(paths: list[Path]) -> list[Path]:
    """Run folders (holding metrics.jsonl) named by `paths`; a folder of runs (runs/<name>) gives all of them."""
    runs: list[Path] = []
    for path in paths:
        if (path / METRICS_FILE).is_file():
            runs.append(path)
            continue
        inside = sorted(p.parent for p in path.glob(f"*/{METRICS_FILE}")) if path.is_dir() else []
        if not inside:
            raise UsageError(f"{path} holds no {METRICS_FILE}; pass a run folder such as runs/quickstart/<timestamp> "
                             "(or runs/quickstart for all its runs)")
        runs.extend(inside)
    return runs


def read_records(run_dir: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (a half-written last line of a killed run is skipped)."""
    records = []
    for line in (Path(run_dir) / METRICS_FILE).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def curve_keys(records: list[dict]) -> list[str]:
    """The quantities worth a curve: loss, lr, then every mIoU/<benchmark>, in that order."""
    keys = {key for record in records for key in record}
    miou = sorted(key for key in keys if key.startswith("mIoU/"))
    return [key for key in ("loss", "lr") if key in keys] + miou


def series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and finite values of `key` (the last record wins when a resumed run logged a step twice)."""
    points: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            points[int(record["step"])] = float(value)
    steps = np.array(sorted(points), dtype=np.float64)
    return steps, np.array([points[int(s)] for s in steps], dtype=np.float64)


def summarize(records: list[dict]) -> dict:
    """Last step, last and lowest loss, last lr, and for each mIoU its best (with step) and last value."""
    summary: dict = {"steps": max((int(r["step"]) for r in records), default=0)}
    for key in curve_keys(records):
        steps, values = series(records, key)
        if not len(values):
            continue
        summary[key] = {"last": values[-1], "min": values.min(), "max": values.max(),
                        "best_step": int(steps[values.argmax() if key.startswith("mIoU/") else values.argmin()])}
    return summary


def merged_rows(records: list[dict], keys: list[str], count: int) -> list[dict]:
    """About `count` evenly spaced steps with every key's value at that step (training and eval records merged)."""
    by_step: dict[int, dict] = {}
    for record in records:
        by_step.setdefault(int(record["step"]), {}).update(record)
    steps = sorted(by_step)
    if len(steps) > count:
        picks = np.unique(np.linspace(0, len(steps) - 1, count).round().astype(int))
        steps = [steps[i] for i in picks]
    return [{"step": step, **{key: by_step[step].get(key) for key in keys}} for step in steps]


def tick_labels(values: list[float]) -> list[str]:
    """The values with the fewest significant digits (at least 3) that still tell them apart."""
    for digits in range(3, 10):
        labels = [f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.{digits - 1}e}" for v in values]
        if len(set(labels)) == len(set(values)):
            return labels
    return labels


def _panel(key: str, runs: list[tuple[str, list[dict]]]) -> np.ndarray:
    canvas = np.full((PANEL_HEIGHT, PANEL_WIDTH, 3), 255, np.uint8)
    data = [series(records, key) for _, records in runs]
    steps = np.concatenate([s for s, _ in data]) if data else np.zeros(0)
    values = np.concatenate([v for _, v in data]) if data else np.zeros(0)
    cv2.putText(canvas, key, (LEFT, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    x0, x1, y0, y1 = LEFT, PANEL_WIDTH - RIGHT, PANEL_HEIGHT - BOTTOM, TOP
    cv2.rectangle(canvas, (x0, y1), (x1, y0), (0, 0, 0), 1)
    if not len(values):
        return canvas
    s_lo, s_hi = float(steps.min()), float(steps.max())
    v_lo, v_hi = float(values.min()), float(values.max())
    if s_hi == s_lo:  # one step: centre it
        s_lo, s_hi = s_lo - 1, s_hi + 1
    if v_hi == v_lo:
        v_lo, v_hi = v_lo - 0.5 * (abs(v_lo) or 1), v_hi + 0.5 * (abs(v_hi) or 1)

    def to_pixel(s: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = x0 + (s - s_lo) / (s_hi - s_lo) * (x1 - x0)
        y = y0 - (v - v_lo) / (v_hi - v_lo) * (y0 - y1)
        return np.stack([x, y], axis=-1).round().astype(np.int32)

    fractions = (0.0, 0.5, 1.0)  # y ticks at the bottom, middle and top, x ticks at both ends
    labels = tick_labels([v_lo + fraction * (v_hi - v_lo) for fraction in fractions])
    for fraction, label in zip(fractions, labels):
        y = int(round(y0 - fraction * (y0 - y1)))
        cv2.line(canvas, (x0 - 4, y), (x0, y), (0, 0, 0), 1)
        cv2.putText(canvas, label, (4, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for step, x in ((s_lo, x0), (s_hi, x1)):
        label = f"{int(step)}"
        cv2.putText(canvas, label, (max(0, x - 4 * len(label)), y0 + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(canvas, "step", ((x0 + x1) // 2 - 12, y0 + 28), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    for index, (s, v) in enumerate(data):
        colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        points = to_pixel(s, v)
        if len(points) == 1:
            cv2.circle(canvas, tuple(int(c) for c in points[0]), 3, colour, -1, cv2.LINE_AA)
        elif len(points):
            cv2.polylines(canvas, [points.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
    return canvas


def _key_strip(names: list[str]) -> np.ndarray:
    row = 20
    canvas = np.full((8 + row * len(names), PANEL_WIDTH, 3), 255, np.uint8)
    for index, name in enumerate(names):
        top = 4 + index * row
        cv2.line(canvas, (LEFT, top + row // 2), (LEFT + 28, top + row // 2), RUN_COLOURS[index % len(RUN_COLOURS)],
                 3, cv2.LINE_AA)
        cv2.putText(canvas, name, (LEFT + 36, top + row // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def draw_curves(runs: list[tuple[str, list[dict]]]) -> np.ndarray:
    """RGB chart: the run names with their colours, then one panel per quantity any run logged."""
    keys: list[str] = []
    for _, records in runs:
        keys += [key for key in curve_keys(records) if key not in keys]
    panels = [_key_strip([name for name, _ in runs])] + [_panel(key, runs) for key in keys]
    return np.concatenate(panels, axis=0)


def write_png(path: Path, picture: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise OvssError(f"cannot write {path}")
