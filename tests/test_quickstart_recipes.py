"""The toy quickstarts of every method train on the CPU; a run that fails early leaves no folder behind."""

import json
import math

import pytest
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.engine.runs import remove_if_unstarted

runner = CliRunner()
FEW_STEPS = ["train.iterations=3", "train.log_every=1", "train.checkpoint_every=3", "train.eval_limit=2"]


@pytest.mark.parametrize("recipe, command, method, mode", [
    ("quickstart_hclip", "train", "catseg", "hclip"),
    ("quickstart_infoclip", "distill", "infoclip", "attention"),
])
def test_toy_quickstart_trains_a_few_steps(tmp_path, recipe, command, method, mode):
    run = tmp_path / "run"
    result = runner.invoke(app, [command, recipe, *FEW_STEPS, "--output", str(run)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert any("mIoU/toy" in r for r in records)
    sidecar = json.loads((run / "checkpoints" / "step_00000003.json").read_text())
    assert (sidecar["method"], sidecar["finetune_mode"]) == (method, mode)
    assert "whole image; ovss evaluate defaults to sliding windows" in result.output


def test_a_block_size_that_does_not_fit_suggests_one_and_leaves_no_folder(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "quickstart", "finetune.mode=hclip", "--output", str(run)])
    assert result.exit_code == 2
    assert "does not divide the text width 64" in result.output and "finetune.block_size=64" in result.output
    assert not run.exists()


def test_a_run_failing_before_its_first_step_removes_its_folder(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", "quickstart", "train.eval_benches=[ade150]", "--data-root", str(tmp_path),
                                 "--output", str(run)])
    assert result.exit_code == 2 and "ovss prepare ade20k" in result.output
    assert not run.exists()


def test_folders_with_checkpoints_or_metrics_are_kept(tmp_path):
    with_checkpoint = tmp_path / "a"
    (with_checkpoint / "checkpoints").mkdir(parents=True)
    (with_checkpoint / "checkpoints" / "step_00000010.safetensors").write_bytes(b"x")
    with_metrics = tmp_path / "b"
    with_metrics.mkdir()
    (with_metrics / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    bare = tmp_path / "c"
    bare.mkdir()
    (bare / "recipe.yaml").write_text("name: c\n")
    assert remove_if_unstarted(with_checkpoint) is False and with_checkpoint.exists()
    assert remove_if_unstarted(with_metrics) is False and with_metrics.exists()
    assert remove_if_unstarted(bare) is True and not bare.exists()


def test_the_readme_quickstart_lists_every_toy_recipe():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Quickstart"): readme.index("## Real use")]
    for path in sorted((root / "recipes").glob("quickstart*.yaml")):
        assert re.search(rf"\b{path.stem}\b", section), path.stem
