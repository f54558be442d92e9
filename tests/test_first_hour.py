"""What a new user meets first: process options, help texts, usage errors, run folders."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ovss_cli.cli import app
from ovss_cli.runtime import distributed

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def one_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert len(lines) == 1, output
    return lines[0]


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    launched = []
    monkeypatch.setattr("torch.distributed.run.run", lambda *args: launched.append(args))
    return launched


@pytest.mark.parametrize("command", [
    ["evaluate", "--bench", "toy", "--limit", "1"],
    ["pseudolabel", "--dataset", "toy", "--split", "val", "--limit", "1", "--out", "OUT"],
    ["prototypes", "--dataset", "toy", "--split", "train", "--limit", "1", "--out", "OUT/p.safetensors"],
    ["train", str(QUICKSTART), "--output", "OUT/run"],
], ids=["evaluate", "pseudolabel", "prototypes", "train"])
def test_gpus_without_cuda_is_a_usage_error_naming_nproc(tmp_path, no_cuda, command):
    command = [part.replace("OUT", str(tmp_path)) for part in command]
    result = runner.invoke(app, [*command, "--gpus", "3"])
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "--gpus 3" in line and "no CUDA device" in line and "--nproc 3" in line
    assert no_cuda == []  # nothing was launched
    assert not (tmp_path / "run").exists()


def test_gpus_and_nproc_together_are_refused(tmp_path):
    result = runner.invoke(app, ["evaluate", "--bench", "toy", "--gpus", "2", "--nproc", "2"])
    assert result.exit_code == 2 and "give one of them" in one_line(result.output)


def test_nproc_relaunches_cpu_processes(monkeypatch):
    calls = []
    monkeypatch.setattr("torch.distributed.run.run", lambda config: calls.append(config))
    monkeypatch.setattr(distributed, "LAUNCH_ARGV", ["evaluate", "--bench", "toy", "--nproc", "3"])
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.relaunch_if_needed(1, nproc=3) is True
    config = calls[0]
    assert str(config.nproc_per_node) == "3" and config.module and config.training_script == "ovss_cli"
    assert config.training_script_args == ["evaluate", "--bench", "toy", "--nproc", "3"]
    assert distributed.process_device("auto", 3) == "cpu"
    with pytest.raises(Exception, match="use --gpus"):
        distributed.process_device("cuda", 3)


def test_missing_data_fails_before_the_device_check(tmp_path, no_cuda):
    result = runner.invoke(app, ["evaluate", "--bench", "pc459", "--data-root", str(tmp_path), "--gpus", "2"])
    assert result.exit_code == 2 and "ovss prepare pascal-context" in one_line(result.output)


def test_uncached_weights_fail_before_the_relaunch_with_the_recipe_key(tmp_path, no_cuda, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    result = runner.invoke(app, ["train", str(QUICKSTART), "clip.name=ViT-B-16", "clip.pretrained=openai",
                                 "--nproc", "2", "--output", str(tmp_path / "run")])
    assert result.exit_code == 1
    line = one_line(result.output)
    assert "clip.pretrained=/path/to/ViT-B-16.pt" in line and "--pretrained" not in line
    assert no_cuda == [] and not (tmp_path / "run").exists()


def _commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer ships its own click: no isinstance against click's)
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _expected_default(option) -> str | None:
    """What `[default: ...]` must say for `option`, or None when it has no default to show."""
    if isinstance(option.show_default, str):
        return f"({option.show_default})"
    if option.required or option.default is None or option.show_default is False:
        return None
    if option.is_flag and option.secondary_opts:
        return (option.opts if option.default else option.secondary_opts)[0].lstrip("-")
    if option.is_flag:
        return None  # a plain --flag: off unless given
    return str(option.default)


def test_every_option_help_renders_its_text_and_default(monkeypatch):
    """Rich must not eat any part of a help text (it once took `[default: ...]` for markup)."""
    import typer.main
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 2000)  # one line per option (read when help renders)
    root = typer.main.get_command(app)
    checked = 0
    for path, command in _commands(root):
        result = runner.invoke(app, [*path, "--help"], terminal_width=2000)
        assert result.exit_code == 0, result.output
        lines = [" ".join(line.replace("│", " ").split()).lstrip("* ") for line in result.output.splitlines()]
        for option in command.params:
            if option.param_type_name != "option" or option.name == "help":
                continue
            row = next((line for line in lines if line.startswith(option.opts[0] + " ")), None)
            assert row is not None, (path, option.opts)
            assert " ".join((option.help or "").split()) in row, (path, option.opts, row)
            default = _expected_default(option)
            if default is not None:
                assert row.endswith(f"[default: {default}]"), (path, option.opts, row)
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_checkpoints_follow_the_umask(tmp_path, mask):
    import os
    import stat

    from ovss_cli.runtime.checkpoint import save_weights

    previous = os.umask(mask)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")  # safetensors alone writes 0600
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "w.safetensors").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("bf16, expected", [(True, "bf16-mixed"), (False, "fp16-mixed")])
def test_auto_precision_uses_fp16_where_the_gpu_has_no_bf16(monkeypatch, bf16, expected):
    from ovss_cli.runtime.precision import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert resolve_precision("auto", "cuda:0") == expected
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16-mixed", "cuda") == "bf16-mixed"  # an explicit choice is kept


USAGE_ERRORS = [
    ["evaluate", "--bench", "toy", "--device", "tpu"],
    ["evaluate", "--bench", "toy", "--precision", "fp8"],
    ["evaluate", "--bench", "toy", "--gpus", "2", "--nproc", "2"],
    ["predict", "x.png", "--classes", "a", "--device", "gpu"],
    ["export", "no-such-run", "--out", "e"],
    ["pseudolabel", "--out", "o", "--scales", "a"],
    ["pseudolabel", "--out", "o", "--dataset", "vocc"],
    ["pseudolabel", "--method", "vpl"],
    ["train", str(QUICKSTART), "optim.lrr=1"],
    ["train", "no-such-recipe"],
]


@pytest.mark.parametrize("argv", USAGE_ERRORS, ids=[" ".join(a[:2]) + "…" for a in USAGE_ERRORS])
def test_usage_errors_answer_before_torch_is_imported(tmp_path, argv):
    code = ("import sys\nfrom ovss_cli.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as exit:\n"
            "    print('torch' in sys.modules, exit.code)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=tmp_path,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.stdout.split() == ["False", "2"], done.stdout + done.stderr


def test_vpl_names_every_missing_option_at_once():
    result = runner.invoke(app, ["pseudolabel", "--method", "vpl"])
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "--out DIR" in line and "--prototypes FILE" in line and "ovss prototypes" in line


def test_a_missing_voc_split_is_named_as_asked(tmp_path):
    result = runner.invoke(app, ["pseudolabel", "--dataset", "voc", "--split", "train", "--data-root", str(tmp_path),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    line = one_line(result.output)
    assert "PASCAL VOC train" in line and " val" not in line
