"""Checkpoint files: atomic writes, completeness, pruning, resolution, corrupt files, RNG snapshots."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from ovss_cli.errors import OvssError
from ovss_cli.runtime import checkpoint as ckpt
from ovss_cli.runtime.seeding import rng_state, set_rng_state


def draw() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_snapshot_survives_a_weights_only_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draw()
    ckpt.save_training_state(tmp_path / "s.pt", {"rng": [rng_state()]})
    expected = [draw() for _ in range(3)]
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    assert [draw() for _ in range(3)] == expected


def test_weights_round_trip_and_truncation_is_reported(tmp_path):
    torch.manual_seed(0)
    model, other = nn.Linear(4, 3), nn.Linear(4, 3)
    path = tmp_path / "m.safetensors"
    ckpt.save_weights(model, path)
    ckpt.load_weights(other, path)
    assert torch.equal(other.weight, model.weight) and torch.equal(other.bias, model.bias)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(OvssError, match="corrupt or truncated"):
        ckpt.load_weights(other, path)
    ckpt.save_weights(nn.Linear(5, 3), path)
    with pytest.raises(OvssError, match="does not fit this model"):
        ckpt.load_weights(other, path)


def save_step(directory, step: int, with_state: bool = True) -> None:
    ckpt.save_checkpoint(directory, ckpt.step_name(step), nn.Linear(2, 2), {"step": step},
                         {"step": step} if with_state else None)


def test_only_complete_step_checkpoints_count_and_pruning_keeps_the_newest(tmp_path):
    for step in (10, 20, 30):
        save_step(tmp_path, step)
    (tmp_path / "step_00000030.json").unlink()  # crashed before its sidecar: incomplete
    save_step(tmp_path, 40, with_state=False)  # weights-only: cannot resume from it
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [10, 20]
    save_step(tmp_path, 50)
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [s for s, _ in ckpt.step_checkpoints(tmp_path)] == [20, 50]
    assert not (tmp_path / "step_00000010.safetensors").exists()


def test_a_run_folder_resolves_to_best_then_latest(tmp_path):
    directory = tmp_path / "checkpoints"
    save_step(directory, 5)
    save_step(directory, 7)
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000007.safetensors"
    ckpt.save_checkpoint(directory, ckpt.BEST, nn.Linear(2, 2), {"step": 5})
    assert ckpt.resolve_checkpoint(tmp_path).name == "best.safetensors"
    assert ckpt.resolve_checkpoint(directory / "step_00000005.json").name == "step_00000005.safetensors"
    with pytest.raises(OvssError, match="no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None
    with pytest.raises(OvssError, match="not found"):
        ckpt.resolve_checkpoint(tmp_path / "missing.safetensors")
