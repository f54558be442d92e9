"""A run folder is never corrupted: one writer at a time, a resume is validated before anything is
written, killed writes leave nothing behind, and no checkpoint holds non-finite numbers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ovss_cli.engine.runs import LOCK_NAME, RunLock
from ovss_cli.errors import OvssError
from ovss_cli.fileio import TEMP_MARK
from ovss_cli.methods.catseg import CATSegModel
from tests.helpers import TINY, error_line, poison_training_loss
from tests.helpers import train_quickstart as train


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    result = train(*TINY, "--output", str(run))
    assert result.exit_code == 0, result.output
    return run


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failed_resume_leaves_the_run_folder_untouched(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # another decoder width: the checkpoint does not fit, so the resume must fail
    result = train(*TINY, "decoder.text_guidance_dim=8", "train.iterations=8", "--output", str(run), "--resume", "auto")
    assert result.exit_code == 1 and "does not fit" in error_line(result.output)
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # recipe.yaml included: the run still describes the recipe it was trained with


def test_a_second_writer_is_refused_with_one_line(tmp_path):
    run = tmp_path / "busy"
    run.mkdir()
    (run / LOCK_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")  # this process is alive
    result = train(*TINY, "--output", str(run))
    assert result.exit_code == 1
    line = error_line(result.output)
    assert f"run folder {run} is in use by ovss process {os.getpid()}" in line
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written beside the lock
    assert (run / LOCK_NAME).read_text() == f"{os.getpid()} {socket.gethostname()}\n"


def test_lock_ownership_is_exclusive_and_released(tmp_path):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        assert (run / LOCK_NAME).read_text().split() == [str(os.getpid()), socket.gethostname()]
        with pytest.raises(OvssError, match="is in use"):
            RunLock(run).acquire()
        (run / "metrics.jsonl").write_text("")
    assert not (run / LOCK_NAME).exists() and (run / "metrics.jsonl").is_file()
    assert not lock._held
    with RunLock(tmp_path / "unused"):
        pass
    assert not (tmp_path / "unused").exists()  # a folder only the lock used is removed again


def test_a_stale_lock_is_taken_over_and_killed_writes_are_swept(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / LOCK_NAME).write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    leftovers = [run / "checkpoints" / f".step_00000006.safetensors{TEMP_MARK}4242", run / f".recipe.yaml{TEMP_MARK}77"]
    for path in leftovers:
        path.write_bytes(b"half a file")
    result = train(*TINY, "train.iterations=7", "--output", str(run), "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert not any(path.exists() for path in leftovers)
    assert not (run / LOCK_NAME).exists()
    assert (run / "checkpoints" / "step_00000007.json").is_file()
    # a lock held on another machine is never judged from here
    (run / LOCK_NAME).write_text(f"{_dead_pid()} some-other-host\n")
    result = train(*TINY, "train.iterations=8", "--output", str(run), "--resume", "auto")
    assert result.exit_code == 1 and "in use by ovss process" in error_line(result.output)


def test_a_divergent_update_is_never_saved_and_the_named_checkpoint_is_finite(tmp_path, monkeypatch):
    def nan_gradient(model, out):
        # finite loss (0 * sqrt(0) = 0) whose gradient is 0 * inf = nan: the update, not the loss, diverges
        anchor = next(p for p in model.parameters() if p.requires_grad)
        return {**out, "loss": out["loss"] + 0.0 * torch.sqrt(anchor.sum() * 0.0)}

    poison_training_loss(monkeypatch, CATSegModel, 3, nan_gradient)
    run = tmp_path / "diverged"
    result = train(*TINY, "train.checkpoint_every=1", "train.keep_last=10", "--output", str(run))
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "non-finite by step 3" in line and "step_00000002.safetensors" in line
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.suffix == ".json") == [
        "step_00000001.json", "step_00000002.json"]
    named = load_file(str(checkpoints / "step_00000002.safetensors"))
    assert all(torch.isfinite(t).all() for t in named.values() if t.is_floating_point())
    state = torch.load(checkpoints / "step_00000002.state.pt", weights_only=True)
    moments = [t for s in state["optimizer"]["state"].values() for t in s.values() if torch.is_tensor(t)]
    assert moments and all(torch.isfinite(t).all() for t in moments)
