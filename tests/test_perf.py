"""The cost model: FLOPs counted per part, forward and backward, against hand counts."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from ovss_cli.clip.zoo import create_clip
from ovss_cli.perf.flops import REST, count_part_flops
from ovss_cli.perf.peak import measured_matmul_flops
from ovss_cli.runtime import threads as thread_module
from ovss_cli.runtime.threads import busy_cores_now, configure_threads, read_cpu_times, threads_per_rank


def test_tiny_clip_image_encoder_forward_flops_equal_a_hand_count():
    clip = create_clip("ovss-tiny", None)  # 64 px, patch 16, width 64, 3 blocks, 2 heads, MLP x4, embed 32
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        counted = count_part_flops(clip, lambda: clip.visual(images), {"image encoder": ("visual",)})
    b, n, w = 2, 17, 64  # 16 patches + CLS
    per_block = 2 * n * w * 3 * w + 2 * 2 * n * n * w + 2 * n * w * w + 2 * 2 * n * w * 4 * w
    hand = 2 * b * 16 * (3 * 16 * 16) * w + 3 * b * per_block + 2 * b * w * 32  # patch conv, blocks, CLS projection
    assert counted.parts["image encoder"] == hand == counted.total
    assert counted.parts[REST] == 0


class TwoParts(nn.Module):
    def __init__(self, a: int, b: int, c: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(a, b, bias=False)
        self.head = nn.Linear(b, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_backward_flops_are_charged_to_the_part_whose_forward_made_them():
    n, a, b, c = 5, 7, 11, 3
    model = TwoParts(a, b, c)
    x = torch.randn(n, a)  # the input needs no gradient: the encoder's backward is its weight gradient only
    extra = torch.randn(c, 4)

    def step() -> None:
        (model(x) @ extra).sum().backward()  # the matmul outside both parts is the "loss"

    parts = {"encoder": ("encoder",), "head": ("head",)}
    counted = count_part_flops(model, step, parts)
    assert counted.parts["encoder"] == 2 * n * a * b * 2  # forward + weight gradient
    assert counted.parts["head"] == 2 * n * b * c * 3  # forward + input gradient + weight gradient
    assert counted.parts[REST] == 2 * n * c * 4 * 2  # loss matmul forward + gradient of its left operand
    assert counted.total == sum(counted.parts.values())

    model.encoder.requires_grad_(False)  # frozen encoder, no input gradient: no backward work at all
    frozen = count_part_flops(model, step, parts)
    assert frozen.parts["encoder"] == 2 * n * a * b


def test_measured_matmul_rate_is_positive_and_finite():
    rate = measured_matmul_flops(torch.device("cpu"), torch.float32, size=64, seconds=0.01)
    assert 0 < rate < float("inf")


def test_threads_are_the_cores_shared_among_local_ranks(monkeypatch):
    assert threads_per_rank(16, 4) == 4 and threads_per_rank(2, 4) == 1 and threads_per_rank(3, 1) == 3
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
        monkeypatch.setattr(os, "getloadavg", lambda: (2.2, 0.0, 0.0))  # two cores busy elsewhere
        monkeypatch.setattr(thread_module, "busy_cores_now", lambda cores: 0.4)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
        line = configure_threads()
        assert torch.get_num_threads() == 2 and "6 of 8 cores idle / 3 local processes" in line
        monkeypatch.setattr(os, "getloadavg", lambda: (11.0, 0.0, 0.0))  # a saturated machine still gets one
        configure_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(before)
        assert "OMP_NUM_THREADS=1" in configure_threads() and torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_a_job_started_seconds_ago_counts_as_busy_before_the_load_average_shows_it(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
        monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 0.1, 0.0))  # rounds to an idle machine
        monkeypatch.setattr(thread_module, "busy_cores_now", lambda cores: 0.9)  # but one core is busy now
        assert "1 of 2 cores idle" in configure_threads() and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_busy_cores_come_from_the_affine_cores_lines_of_proc_stat(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    #                 user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  60 0 20 200 20 0 0 0 0 0\n"
                    "cpu0 40 0 10 40 10 0 0 0 0 0\n"  # busy 50 of 100
                    "cpu1 20 0 10 160 10 0 0 0 0 0\n"  # busy 30 of 200
                    "intr 12345 0 0\n\nctxt 99\n")
    assert read_cpu_times({0, 1}, str(stat)) == (80, 300)
    assert read_cpu_times({1}, str(stat)) == (30, 200)
    assert read_cpu_times({0}, str(tmp_path / "missing")) == (0, 0)
    samples = iter([(100, 400), (250, 600)])  # 150 busy of 200 ticks over 2 cores
    monkeypatch.setattr(thread_module, "read_cpu_times", lambda cores: next(samples))
    monkeypatch.setattr(thread_module.time, "sleep", lambda seconds: None)
    assert busy_cores_now({0, 1}) == 1.5


FAULTS_OF_REPEATED_STEPS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from ovss_cli.runtime.host_memory import reuse_freed_host_memory
    assert reuse_freed_host_memory()

def faults_of_a_step():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = [torch.ones(mb * 2**18) for mb in (16, 64, 32, 64, 16)]  # made, kept for the backward, freed
    del activations
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print([faults_of_a_step() for _ in range(6)][-1])
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_cpu_process_reuses_freed_memory_instead_of_faulting_in_new_pages():
    # in a child process: the setting lasts for the life of the process that makes it
    def faults_of_the_sixth_step(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS_OF_REPEATED_STEPS, mode], capture_output=True,
                              text=True, check=True)
        return int(done.stdout.split()[-1])

    assert faults_of_the_sixth_step("default") > 30_000  # 192 MB of 4 KB pages, each zeroed by the kernel again
    assert faults_of_the_sixth_step("keep") < 1_000  # the heap has grown to hold a step: no new pages
