"""Run folders and what goes in them: resolved recipe, metrics.jsonl, evaluation JSON, TensorBoard events.

    runs/<recipe name>/<timestamp>/
        recipe.yaml  metrics.jsonl  checkpoints/  eval/step_00005000.json  tensorboard/
Only rank 0 writes (`RunLog(..., is_main=False)` is a no-op).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from ovss_cli.errors import OvssError
from ovss_cli.fileio import write_json, write_text
from ovss_cli.runtime.checkpoint import resolve_checkpoint, step_checkpoints

RUNS_ROOT = Path("runs")
LOCK_NAME = ".ovss.lock"
LOCK_GRACE_S = 10.0  # a lock file still empty after this long was left by a writer killed while creating it


def new_run_dir(name: str, root: Path = RUNS_ROOT) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, suffix = root / name / stamp, 2
    while candidate.exists():
        candidate, suffix = root / name / f"{stamp}-{suffix}", suffix + 1
    return candidate


def choose_run_dir(name: str, output: Path | None, resume: str | None, root: Path = RUNS_ROOT) -> Path:
    """--output if given; with --resume PATH the checkpoint's run; with --resume auto the newest run of this
    recipe that has a checkpoint; else a new timestamped folder."""
    if output is not None:
        return Path(output)
    if resume and resume != "auto":
        weights = resolve_checkpoint(Path(resume))
        if weights.parent.name == "checkpoints":
            return weights.parent.parent
        return new_run_dir(name, root)
    if resume == "auto":
        runs = sorted((p for p in (root / name).glob("*") if p.is_dir()), key=lambda p: p.name, reverse=True)
        for run in runs:
            if step_checkpoints(run / "checkpoints"):
                return run
    return new_run_dir(name, root)


def tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class RunLock:
    """Exclusive ownership of a run folder: `<run>/.ovss.lock`, created with O_EXCL, holds "pid host".

    A second writer is refused with one line; a lock whose process is gone (same host) is taken over.
    Released on exit; a run folder this lock created and nothing else used is removed again."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self._created_dir = False
        self._held = False

    def _stale(self) -> bool:
        try:
            text = self.path.read_text(encoding="utf-8").split()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        except OSError:
            return False
        if len(text) != 2 or not text[0].isdigit():
            return age > LOCK_GRACE_S
        pid, host = int(text[0]), text[1]
        return host == socket.gethostname() and not _process_alive(pid)

    def _describe_owner(self) -> str:
        try:
            pid, host = self.path.read_text(encoding="utf-8").split()
            return f"ovss process {pid} on {host}"
        except (OSError, ValueError):
            return "another ovss process"

    def acquire(self) -> "RunLock":
        self._created_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                break
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(self.owner + "\n")
            self._held = True
            return self
        raise OvssError(f"run folder {self.run_dir} is in use by {self._describe_owner()} (lock {self.path}); "
                        "wait for that run to end or choose another --output")

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            if self.path.read_text(encoding="utf-8").strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass
        if self._created_dir:
            try:
                self.run_dir.rmdir()  # only succeeds if nothing was written: a run that failed validation
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def remove_if_unstarted(run_dir: Path) -> bool:
    """Delete a run folder this invocation created when the run failed before logging a step:
    it holds only the resolved recipe. A folder with checkpoints or metrics is never touched."""

    run_dir = Path(run_dir)
    if any((run_dir / "checkpoints").glob("*")):
        return False
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _finite(value):
    return value if not isinstance(value, float) or math.isfinite(value) else str(value)


class RunLog:
    """Append-only training records of one run (rank 0 only)."""

    def __init__(self, run_dir: Path, is_main: bool, tensorboard: bool | None = None):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard or (tensorboard is None and tensorboard_installed()):
                self._writer = self._tensorboard()

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("train.tensorboard is set but the `tensorboard` package is missing (pip install tensorboard); "
                  "logging to metrics.jsonl only (plot it with `ovss runs`)", file=sys.stderr)
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records logged after `step` (a resumed run re-does those steps and logs them again)."""
        if not self.is_main or not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text(encoding="utf-8").splitlines()
                if _logged_step(line) <= step]
        write_text(self.metrics_path, "".join(f"{line}\n" for line in kept))

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({k: _finite(v) for k, v in record.items()}) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._writer.add_scalar(key, value, record["step"])

    def write_eval(self, step: int, results: dict) -> Path | None:
        if not self.is_main:
            return None
        path = self.run_dir / "eval" / f"step_{step:08d}.json"
        write_json(path, {"step": step, "results": results})
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class StepReporter:
    """Step, loss, lr, img/s, ETA and peak memory: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total, self.start = total, start
        self.enabled = enabled
        self._progress = None
        self._task = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                      TextColumn("{task.fields[status]}"), transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=total, completed=start, status="")

    @staticmethod
    def describe(record: dict) -> str:
        parts = [f"loss {record['loss']:.4f}", f"lr {record['lr']:.3g}", f"{record['img_per_s']:.1f} img/s"]
        if "eta_s" in record:
            parts.append(f"ETA {format_duration(record['eta_s'])}")
        if record.get("peak_mem_mb"):
            parts.append(f"mem {record['peak_mem_mb']:.0f} MB")
        return ", ".join(parts)

    def advance(self, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def report(self, record: dict) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=record["step"], status=self.describe(record))
        else:
            print(f"step {record['step']}/{self.total}: {self.describe(record)}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._progress is not None:
            self._progress.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Throughput:
    """Images per second and ETA over the steps since the last report."""

    def __init__(self):
        self._time = time.perf_counter()
        self._images = 0
        self._steps = 0

    def add(self, images: int) -> None:
        self._images += images
        self._steps += 1

    def measure(self, remaining_steps: int) -> dict:
        now = time.perf_counter()
        elapsed = max(now - self._time, 1e-9)
        result = {"img_per_s": self._images / elapsed, "eta_s": remaining_steps * elapsed / max(self._steps, 1)}
        self._time, self._images, self._steps = now, 0, 0
        return result


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a blank or half-written line (a killed run) counts as after any step."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf
