"""`ovss train` end to end on the toy set with a tiny CLIP: DDP equivalence, exact resume, learning,
frozen parameters untouched, clear errors, and a NaN stop that leaves the last checkpoint intact."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ovss_cli.engine.trainer import Trainer
from ovss_cli.methods.catseg import CATSegModel
from tests.helpers import QUICKSTART, ROOT, TINY, error_line, poison_training_loss
from tests.helpers import train_quickstart as train

pytestmark = pytest.mark.usefixtures("single_thread")



def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:08d}.safetensors"))



@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted single-process run of TINY."""
    run = tmp_path_factory.mktemp("reference") / "run"
    result = train(*TINY, "--output", str(run))
    assert result.exit_code == 0, result.output
    return run


def test_run_folder_has_recipe_metrics_and_complete_checkpoints(reference):
    assert sorted(losses(reference)) == [1, 2, 3, 4, 5, 6]
    names = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert names == [f"step_0000000{s}.{ext}" for s in (3, 6) for ext in ("json", "safetensors", "state.pt")]
    sidecar = json.loads((reference / "checkpoints" / "step_00000006.json").read_text())
    assert (sidecar["method"], sidecar["step"], sidecar["clip"]["name"], sidecar["window"]) == ("catseg", 6, "ovss-tiny", 32)
    assert sidecar["class_names"] == ["sky", "grass", "sand", "water", "brick"]
    assert "# Resolved recipe" in (reference / "recipe.yaml").read_text()
    state = torch.load(reference / "checkpoints" / "step_00000006.state.pt", weights_only=True)
    assert state["step"] == 6 and state["global_batch"] == 4


def test_only_the_intended_parameters_change(reference):
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe
    from ovss_cli.runtime.seeding import seed_everything

    seed_everything(0)  # the trainer initialises the model from the recipe seed
    model = build_model(load_recipe(QUICKSTART, TINY))
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    final = weights(reference, 6)
    assert set(initial) <= set(final)
    frozen = set(initial) - trainable
    assert any(".attn.parametrizations.in_proj_weight.original" in n for n in frozen)
    for name in frozen:  # every frozen CLIP tensor (incl. k rows, MLPs, norms, embeddings) is bit-identical
        assert torch.equal(final[name], initial[name]), name
    # CAT-Seg attention mode trains q and v of every block of both encoders, and the decoder
    clip_trainable = sorted(n for n in trainable if n.startswith("dense."))
    assert len(clip_trainable) == 2 * (3 + 2) and all(n.endswith((".q", ".v")) for n in clip_trainable)
    changed = [n for n in trainable if not torch.equal(final[n], initial[n])]
    assert sorted(changed) == sorted(trainable)


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(reference, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "ovss_cli", "train", str(QUICKSTART), *TINY, "--nproc", "2",
                           "--output", str(run)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    single, double = weights(reference, 6), weights(run, 6)
    assert set(single) == set(double)
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-5, msg=name)
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)


@pytest.mark.parametrize("variant", [["optim.accumulate_steps=2"], ["train.activation_checkpointing=true"]],
                         ids=["accumulation", "activation-checkpointing"])
def test_accumulation_and_activation_checkpointing_leave_the_result_unchanged(reference, tmp_path, variant):
    run = tmp_path / "variant"
    result = train(*TINY, *variant, "--output", str(run))
    assert result.exit_code == 0, result.output
    expected, got = weights(reference, 6), weights(run, 6)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_mixed_precision_trains_and_records_its_scaler(tmp_path, precision):
    run = tmp_path / precision
    result = train(*TINY, f"train.precision={precision}", "train.iterations=3", "--output", str(run))
    assert result.exit_code == 0, result.output
    assert all(math.isfinite(v) for v in losses(run).values())
    scaler = torch.load(run / "checkpoints" / "step_00000003.state.pt", weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16-mixed")  # only fp16 needs loss scaling


def test_an_interrupted_run_resumes_to_the_same_parameters_and_losses(reference, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = Trainer.train_step
    calls = {"n": 0}

    def crash_at_step_5(self, model, batches):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # killed between the checkpoints of steps 3 and 6
        return original(self, model, batches)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_5)
    # two loader workers here, none in the reference: augmentation must not depend on the worker
    result = train(*TINY, "data.workers=2", "--output", str(run))
    assert result.exit_code != 0 and sorted(losses(run)) == [1, 2, 3, 4]
    monkeypatch.setattr(Trainer, "train_step", original)
    result = train(*TINY, "data.workers=2", "--output", str(run), "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert losses(run) == losses(reference)  # steps 4.. were logged again, not twice
    expected, resumed = weights(reference, 6), weights(run, 6)
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_toy_miou_rises_far_above_its_untrained_value(tmp_path):
    from ovss_cli.data.dataset import SegmentationSet
    from ovss_cli.evaluate.runner import evaluate_dataset
    from ovss_cli.loading import load_segmenter
    from ovss_cli.methods.registry import build_model
    from ovss_cli.recipes import load_recipe
    from ovss_cli.runtime.distributed import DistInfo
    from ovss_cli.runtime.seeding import seed_everything

    overrides = ["train.iterations=120", "train.log_every=60", "train.checkpoint_every=120", "train.eval_limit=12"]
    dataset = SegmentationSet("toy", None, limit=12)
    seed_everything(0)
    untrained = build_model(load_recipe(QUICKSTART, overrides)).eval()
    before = evaluate_dataset(untrained, dataset, "whole", DistInfo(), show_progress=False)["mIoU"]
    run = tmp_path / "quick"
    result = train(*overrides, "--output", str(run))
    assert result.exit_code == 0, result.output
    after = json.loads((run / "eval" / "step_00000120.json").read_text())["results"]["toy"]["mIoU"]
    print(f"toy mIoU before {before:.1f}, after {after:.1f}")
    assert after > before + 30, (before, after)
    # the best checkpoint of the run reloads (no pretrained download) to the same model
    reloaded = load_segmenter(run, "cpu")
    assert evaluate_dataset(reloaded, dataset, "whole", DistInfo(), show_progress=False)["mIoU"] == pytest.approx(after)


def test_a_corrupt_checkpoint_gives_one_clear_line(reference, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    latest = run / "checkpoints" / "step_00000006.safetensors"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    result = train(*TINY, "train.iterations=8", "--output", str(run), "--resume", "auto")
    assert result.exit_code == 1
    assert "step_00000006.safetensors is corrupt or truncated" in error_line(result.output)
    state = run / "checkpoints" / "step_00000003.state.pt"
    state.write_bytes(state.read_bytes()[:100])
    result = train(*TINY, "--output", str(run), "--resume", str(run / "checkpoints" / "step_00000003.safetensors"))
    assert result.exit_code == 1
    assert "step_00000003.state.pt is corrupt or truncated" in error_line(result.output)


def test_a_used_run_folder_is_not_overwritten_without_resume(reference):
    result = train(*TINY, "--output", str(reference))
    assert result.exit_code == 2 and "already holds checkpoints" in error_line(result.output)


def test_a_missing_data_folder_gives_one_clear_line(tmp_path):
    result = train("data.benchmark=coco-stuff", "--data-root", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    line = error_line(result.output)
    assert "COCO-Stuff-171 train not found" in line and "ovss prepare coco-stuff" in line


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(reference, tmp_path, monkeypatch):
    poison_training_loss(monkeypatch, CATSegModel, 4, lambda model, out: {**out, "loss": out["loss"] * float("nan")})
    run = tmp_path / "nan"
    result = train(*TINY, "--output", str(run))
    assert result.exit_code == 1
    line = error_line(result.output)
    assert "loss became nan at step 4" in line and "step_00000003.safetensors" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.suffix == ".json") == ["step_00000003.json"]
    kept, expected = weights(run, 3), weights(reference, 3)
    assert all(torch.equal(kept[name], expected[name]) for name in expected)


def test_a_run_folder_with_a_best_checkpoint_resumes_and_keeps_the_true_best(tmp_path):
    """--resume RUN_FOLDER continues from the latest step (best.* has no training state), and each step
    checkpoint records the best score including that step's own evaluation."""
    run = tmp_path / "evaluated"
    evaluated = [*TINY, "train.eval_benches=[toy]", "train.eval_every=3", "train.eval_limit=2"]
    result = train(*evaluated, "--output", str(run))
    assert result.exit_code == 0, result.output
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    best_score = sum(best["metrics"].values()) / len(best["metrics"])
    state = torch.load(run / "checkpoints" / "step_00000006.state.pt", weights_only=True)
    assert state["best_score"] == pytest.approx(best_score)
    result = train(*evaluated[:-3], "train.iterations=9", "train.eval_benches=[toy]", "train.eval_every=3",
                   "train.eval_limit=2", "--output", str(run), "--resume", str(run))
    assert result.exit_code == 0, result.output
    assert (run / "checkpoints" / "step_00000009.json").is_file()


def test_a_half_written_metrics_line_does_not_block_resume(reference, tmp_path):
    run = tmp_path / "killed"
    shutil.copytree(reference, run)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 7, "lo')  # the process died mid-write
    result = train(*TINY, "train.iterations=8", "--output", str(run), "--resume", "auto")
    assert result.exit_code == 0, result.output
    assert max(losses(run)) == 8
