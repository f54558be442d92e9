"""`ovss benchmark train|eval` on CPU with a tiny recipe, and the timing helper against a known duration."""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.perf.bench import time_calls, time_in_turns
from tests.helpers import QUICKSTART, TINY

runner = CliRunner()


def test_time_calls_excludes_warmup_and_measures_per_call():
    calls = []

    def sleepy():
        calls.append(1)
        time.sleep(0.02)

    seconds, _ = time_calls(sleepy, repeats=3, warmup=2, device="cpu")
    assert len(calls) == 5
    assert 0.02 <= seconds < 1.0  # each call sleeps 20 ms (a busy machine may stretch it, never shorten it)


def test_time_in_turns_alternates_the_calls_and_keeps_wall_and_cpu_time_apart():
    order = []

    def sleepy():
        order.append("sleep")
        time.sleep(0.02)

    def busy():
        order.append("busy")
        end = time.process_time() + 0.02
        while time.process_time() < end:
            pass

    timings = time_in_turns({"sleep": sleepy, "busy": busy}, rounds=3, warmup=1, device="cpu")
    assert order == ["sleep", "busy"] + ["sleep", "busy"] * 3  # warm-ups first, then one of each per round
    assert len(timings["sleep"].wall) == len(timings["busy"].cpu) == 3
    assert timings["sleep"].median() >= 0.02 and timings["sleep"].median("cpu") < 0.01  # sleeping takes no CPU
    assert timings["busy"].median("cpu") >= 0.02


def table_rows(output: str, columns: int) -> list[list[str]]:
    """Cells of the rows of the tables with `columns` columns."""
    rows = [re.split(r"\s*│\s*", line)[1:-1] for line in output.splitlines() if line.startswith("│")]
    return [row for row in rows if len(row) == columns]


def rates(output: str) -> list[float]:
    """img/s column of the two speed-table rows (model, encoder ceiling)."""
    return [float(row[2]) for row in table_rows(output, 5)]


def test_benchmark_train_reports_the_step_the_encoder_ceiling_and_the_cost_model(tmp_path):
    result = runner.invoke(app, ["benchmark", "train", str(QUICKSTART), *TINY, "--steps", "2", "--warmup", "1",
                                 "--profile", str(tmp_path)])
    assert result.exit_code == 0, result.output
    model, encoder = rates(result.output)
    assert model > 0 and encoder > 0
    ratio = float(re.search(r"at ([\d.]+)% of the image-encoder-only ceiling", result.output).group(1))
    # the table prints img/s to 0.01 and the ratio to 0.1 %: the printed ratio lies in the range they allow
    low, high = 100 * (model - 0.005) / (encoder + 0.005), 100 * (model + 0.005) / (encoder - 0.005)
    assert low - 0.05 <= ratio <= high + 0.05
    assert re.search(r"by process CPU time: step [\d.]+ s, encoder [\d.]+ s", result.output)
    parts = {row[0]: float(row[1]) for row in table_rows(result.output, 3)}
    total = parts.pop("total")
    assert {"image encoder", "text encoder", "aggregation", "upsampling decoder"} <= set(parts)
    assert all(flops > 0 for name, flops in parts.items() if name != "loss and the rest")
    assert sum(parts.values()) == pytest.approx(total, rel=1e-3)
    assert re.search(r"training step: [\d.]+ GFLOP in [\d.]+ ms = [\d.]+ GFLOP/s, [\d.]+% of peak", result.output)
    for name in ("train_step_ops.txt", "image_encoder_ops.txt"):
        assert "Self CPU" in (tmp_path / name).read_text()


def test_benchmark_eval_reports_inference_speed():
    result = runner.invoke(app, ["benchmark", "eval", str(QUICKSTART), *TINY, "--bench", "voc20", "--images", "1",
                                 "--warmup", "0", "--image-size", "48"])
    assert result.exit_code == 0, result.output
    assert "text encoding of 20 classes" in result.output and "5 views/image" in result.output
    assert all(rate > 0 for rate in rates(result.output))
    result = runner.invoke(app, ["benchmark", "eval", str(QUICKSTART), "--bench", "ade15"])
    assert result.exit_code == 2 and "did you mean 'ade150'" in result.output


def test_benchmark_pseudolabel_times_batched_and_single_with_and_without_crf():
    result = runner.invoke(app, ["benchmark", "pseudolabel", "--images", "3", "--batch", "2", "--clip-model",
                                 "ovss-tiny", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    names = [re.split(r"\s*│\s*", row)[1] for row in rows]
    assert names == ["one at a time, no CRF", "batched (2), no CRF", "one at a time, with CRF", "batched (2), with CRF"]
    for row in rows:
        cells = re.split(r"\s*│\s*", row)
        rate, seconds = float(cells[2]), float(cells[3])
        assert rate > 0 and rate == pytest.approx(1 / seconds, rel=0.05)  # img/s and s/img describe one timing
    assert re.search(r"dense CRF alone, 375x500, 21 labels, 10 iterations: \d+ ms/image", result.output)
    assert "3 VOC-sized images" in result.output.replace("\n", " ")
