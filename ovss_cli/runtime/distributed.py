"""Multi-process launch and process-group set-up.

`--gpus N` on one machine relaunches the same `ovss` command through torch.distributed.run
(torchrun) in-process, one process per CUDA device (nccl); `--nproc N` does the same with N CPU
processes (gloo), for machines without a GPU. Plain `torchrun -m ovss_cli ...` works too, since
the children only read the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ovss_cli.errors import OvssError, UsageError
from ovss_cli.runtime.host_memory import reuse_freed_host_memory
from ovss_cli.textutil import first_line

# The argv of the running `ovss` invocation when given to ovss_cli.cli.main; children get the same command.
LAUNCH_ARGV: list[str] | None = None


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def failure_summary(err: BaseException) -> str:
    """One line for a failed torchrun job: which ranks exited with which code (torch's own report is a
    framed table of many lines), else the first line of the error."""
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        ranks = "; ".join(f"rank {rank} exited with code {getattr(failure, 'exitcode', '?')}"
                          for rank, failure in sorted(failures.items()))
        return f"{ranks} (that rank's own error is printed above)"
    return first_line(err)


def check_process_options(gpus: int, nproc: int | None) -> None:
    """--gpus and --nproc are two ways to ask for processes: at most one of them (torch-free check)."""
    if gpus < 1 or (nproc is not None and nproc < 1):
        raise UsageError("--gpus and --nproc must be at least 1")
    if nproc is not None and gpus != 1:
        raise UsageError(f"--gpus {gpus} and --nproc {nproc} both set; --gpus N runs one process per GPU, "
                         "--nproc N runs N CPU processes: give one of them")


def process_device(device: str, nproc: int | None) -> str:
    """The device the processes use: --nproc means CPU processes, whatever `device` says otherwise."""
    if nproc is None:
        return device
    if device.startswith("cuda"):
        raise UsageError(f"--nproc runs CPU processes but the device is {device}; use --gpus for GPUs")
    return "cpu"


def check_gpus(gpus: int) -> None:
    """--gpus N > 1 needs N visible CUDA devices; without them, say what to use instead (before any relaunch)."""
    if gpus == 1 or launched_by_torchrun():
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--gpus {gpus} but no CUDA device is visible; for {gpus} CPU processes use --nproc {gpus}, "
                         "or drop --gpus for one process")
    if torch.cuda.device_count() < gpus:
        raise UsageError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are visible; "
                         f"use --gpus {torch.cuda.device_count()}")


def relaunch_if_needed(gpus: int, nnodes: int = 1, node_rank: int = 0, master_addr: str = "127.0.0.1",
                       master_port: int = 29500, nproc: int | None = None) -> bool:
    """Run this command again under torchrun with `gpus` (or `nproc` CPU) processes per node; True if it ran here.

    Returns False when no relaunch is needed (one process, or already a torchrun child).
    Raises UsageError before launching anything when the devices are not there, and OvssError
    when any rank failed, so the job exits non-zero.
    """
    check_process_options(gpus, nproc)
    if nnodes < 1:
        raise UsageError("--nnodes must be at least 1")
    processes = nproc if nproc is not None else gpus
    if launched_by_torchrun() or (processes == 1 and nnodes == 1):
        return False
    if nproc is None:
        check_gpus(gpus)
    from torch.distributed.run import parse_args, run

    argv = list(LAUNCH_ARGV if LAUNCH_ARGV is not None else sys.argv[1:])
    launch = [f"--nproc-per-node={processes}", f"--nnodes={nnodes}", f"--node-rank={node_rank}",
              f"--master-addr={master_addr}", f"--master-port={master_port}"]
    if nnodes == 1:
        launch = [f"--nproc-per-node={processes}", "--standalone"]
    try:
        config = parse_args([*launch, "-m", "ovss_cli"])
        config.training_script_args = argv  # set, not parsed: torchrun's parser would take --nproc for its own
        run(config)
    except Exception as err:  # torch's ChildFailedError lists the failing ranks
        raise OvssError(f"distributed run failed: {failure_summary(err)}") from None
    return True


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun set up (if any) and pick this rank's device.

    `device`: auto (CUDA when available), cpu, cuda or cuda:N (N is honoured by a single process;
    several processes take cuda:<local rank>). A process that computes on the CPU keeps its freed
    memory for the next step (`host_memory`).
    """
    import torch
    import torch.distributed as dist

    use_cuda = device != "cpu" and torch.cuda.is_available()
    if not use_cuda:  # training, evaluation and pseudo-labels repeat one shape of work: keep its memory
        reuse_freed_host_memory()
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo(device=(device if device.startswith("cuda:") else "cuda") if use_cuda else "cpu")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=f"cuda:{local}" if use_cuda else "cpu")


def barrier() -> None:
    """Wait for every rank (a no-op without an initialised process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group; on success only after every rank got here.

    gloo aborts a rank whose peer tears the group down while it is still finishing (rank 0
    writing results). When this rank is failing (called from a `finally` with an exception in
    flight) it leaves at once instead, so torchrun sees the failure rather than a hung barrier.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            barrier()
        dist.destroy_process_group()
