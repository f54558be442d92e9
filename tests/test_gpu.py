"""CUDA-only checks (mixed precision, device placement); skipped without a GPU. CI has none."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from ovss_cli.cli import app
from tests.helpers import QUICKSTART, TINY

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
runner = CliRunner()


@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_hclip_trains_in_mixed_precision_on_cuda(tmp_path, precision):
    result = runner.invoke(app, ["train", str(QUICKSTART), *TINY, "finetune.mode=hclip", "finetune.block_size=32",
                                 "train.device=cuda", f"train.precision={precision}", "--output", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output


def test_cayley_stays_fp32_under_cuda_autocast():
    from ovss_cli.peft.blockdiag import cayley

    skew = torch.randn(4, 8, 8, device="cuda")
    skew = (skew - skew.transpose(1, 2)) / 2
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rotation = cayley(skew)
    assert rotation.dtype == torch.float32
    eye = torch.eye(8, device="cuda").expand(4, 8, 8)
    assert torch.allclose(rotation @ rotation.transpose(1, 2), eye, atol=1e-5)


def test_cuda_evaluation_matches_cpu(tmp_path):
    import json

    results = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.json"
        result = runner.invoke(app, ["evaluate", "--bench", "toy", "--limit", "4", "--device", device,
                                     "--precision", "fp32", "--out", str(out)])
        assert result.exit_code == 0, result.output
        results[device] = json.loads(out.read_text())["results"]["toy"]["mIoU"]
    assert results["cuda"] == pytest.approx(results["cpu"], abs=0.5)


def test_time_in_turns_tells_what_each_call_adds_on_cuda():
    from ovss_cli.perf.bench import time_in_turns

    held = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")  # 64 MiB another party holds throughout

    def make(mib: int):
        return lambda: torch.empty(mib * 2**20, dtype=torch.uint8, device="cuda").fill_(1)

    timings = time_in_turns({"small": make(16), "large": make(128)}, rounds=2, warmup=1, device="cuda")
    assert timings["small"].added_mb == pytest.approx(16, abs=1)
    assert timings["large"].added_mb == pytest.approx(128, abs=1)
    assert timings["large"].peak_mb >= 128 + 64
    del held
