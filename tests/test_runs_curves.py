"""`ovss runs`: curves of metrics.jsonl as tables and a chart; TensorBoard when it is installed."""

import json

import cv2
import numpy as np
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.engine import curves, runs
from ovss_cli.engine.curves import BOTTOM, LEFT, PANEL_HEIGHT, PANEL_WIDTH, RIGHT, RUN_COLOURS, TOP

runner = CliRunner()


def write_run(folder, losses, lrs, miou):
    folder.mkdir(parents=True)
    lines = [json.dumps({"step": 10 * (i + 1), "loss": loss, "lr": lr}) for i, (loss, lr) in enumerate(zip(losses, lrs))]
    lines += [json.dumps({"step": step, "mIoU/toy": value}) for step, value in miou]
    lines.append('{"step": 999, "loss": 0.')  # the half-written line of a killed run
    (folder / "metrics.jsonl").write_text("\n".join(lines))
    return folder


def near(picture, x, y, colour, radius=2):
    patch = picture[y - radius : y + radius + 1, x - radius : x + radius + 1].astype(int)
    return np.abs(patch - np.array(colour)).sum(-1).min() < 40


def test_one_run_summary_steps_and_chart(tmp_path):
    run = write_run(tmp_path / "runs/toy/a", losses=[1.0, 0.75, 0.5, 0.25, 0.0], lrs=[1e-3] * 5,
                    miou=[(30, 40.0), (50, 80.0)])
    result = runner.invoke(app, ["runs", str(run)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "0.0000 (0.0000)" in result.output  # last loss (lowest loss)
    assert "80.00 (80.00 @50)" in result.output  # last mIoU (best @ step)
    chart = cv2.cvtColor(cv2.imread(str(run / "curves.png")), cv2.COLOR_BGR2RGB)
    strip = 8 + 20  # the run key: one row
    assert chart.shape == (strip + 3 * PANEL_HEIGHT, PANEL_WIDTH, 3)  # loss, lr, mIoU/toy
    # Loss falls linearly from 1 at step 10 to 0 at step 50: (step 30, 0.5) is the middle of the loss panel.
    x = (LEFT + PANEL_WIDTH - RIGHT) // 2
    y = strip + ((PANEL_HEIGHT - BOTTOM) + TOP) // 2
    assert near(chart, x, y, RUN_COLOURS[0])
    assert not near(chart, x, strip + TOP + 10, RUN_COLOURS[0])  # nothing near the top in the middle
    # mIoU goes 40 -> 80 between steps 30 and 50: bottom-left to top-right corner of its panel.
    top = strip + 2 * PANEL_HEIGHT
    assert near(chart, LEFT, top + PANEL_HEIGHT - BOTTOM - 1, RUN_COLOURS[0])
    assert near(chart, PANEL_WIDTH - RIGHT - 1, top + TOP + 1, RUN_COLOURS[0])


def test_several_runs_compare_in_one_chart(tmp_path):
    write_run(tmp_path / "runs/toy/a", [1.0, 0.5], [1e-3, 1e-3], [(20, 50.0)])
    write_run(tmp_path / "runs/toy/b", [1.0, 0.9], [1e-3, 1e-3], [(20, 70.0)])
    out = tmp_path / "cmp.png"
    result = runner.invoke(app, ["runs", str(tmp_path / "runs/toy"), "--out", str(out)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "toy/a" in result.output and "toy/b" in result.output
    assert "50.00 (50.00 @20)" in result.output and "70.00 (70.00 @20)" in result.output
    chart = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    loss_panel = chart[8 + 40 : 8 + 40 + PANEL_HEIGHT]
    for colour in RUN_COLOURS[:2]:
        assert (np.abs(loss_panel.astype(int) - colour).sum(-1) < 10).sum() > 50


def test_a_folder_without_metrics_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["runs", str(tmp_path)])
    assert result.exit_code == 2 and "metrics.jsonl" in result.output


def test_series_keeps_the_last_record_of_a_repeated_step():
    records = [{"step": 10, "loss": 1.0}, {"step": 20, "loss": "nan"}, {"step": 10, "loss": 0.5}]
    steps, values = curves.series(records, "loss")
    assert steps.tolist() == [10.0] and values.tolist() == [0.5]


def test_tensorboard_is_on_when_installed(tmp_path, monkeypatch, capsys):
    made = []
    monkeypatch.setattr(runs.RunLog, "_tensorboard", lambda self: made.append(self) or "writer")
    monkeypatch.setattr(runs, "tensorboard_installed", lambda: True)
    assert runs.RunLog(tmp_path, True)._writer == "writer"
    monkeypatch.setattr(runs, "tensorboard_installed", lambda: False)
    assert runs.RunLog(tmp_path, True)._writer is None
    assert runs.RunLog(tmp_path, True, tensorboard=True)._writer == "writer"  # asked for: tried (and warns if absent)
    assert runs.RunLog(tmp_path, True, tensorboard=False)._writer is None
    assert len(made) == 2


def test_tick_labels_carry_the_digits_that_tell_close_values_apart():
    # three digits would print 0.501 three times; four tell them apart
    assert curves.tick_labels([0.5006, 0.50105, 0.5015]) == ["0.5006", "0.501", "0.5015"]
    assert curves.tick_labels([0.0, 50.0, 100.0]) == ["0", "50", "100"]
    assert curves.tick_labels([12340.0, 12350.0]) == ["1.23e+04", "1.24e+04"]
