"""The training DataLoader: rank-sharded shuffled epochs, resumable mid-epoch, iterated forever.

The sampler yields (image index, epoch) pairs so the dataset can seed each sample's
augmentation from them (see `ovss_cli.data.train_set`). Ranks take interleaved slices of
one shared permutation, so N processes with batch b see exactly the images of one process
with batch N x b, step by step.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ovss_cli.errors import OvssError
from ovss_cli.runtime.threads import single_thread_worker


class EpochSampler(Sampler):
    """This rank's share of a seeded permutation per epoch, in whole batches, optionally skipping the first ones."""

    def __init__(self, length: int, rank: int, world_size: int, seed: int, batch_size: int, shuffle: bool = True):
        self.length, self.rank, self.world_size = length, rank, world_size
        self.seed, self.batch_size, self.shuffle = seed, batch_size, shuffle
        self.batches_per_epoch = length // (world_size * batch_size)  # incomplete global batches are dropped
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip_batches) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        mine = order[: self.batches_per_epoch * self.world_size * self.batch_size][self.rank :: self.world_size]
        for index in mine[self.skip_batches * self.batch_size :]:
            yield index, self.epoch


def _seed_worker(worker_id: int) -> None:
    single_thread_worker()
    # torch seeds each worker from the loader's generator (seed, rank) plus the worker id; other libraries follow it
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset, batch_size: int, workers: int, seed: int, rank: int, world_size: int,
                 pin_memory: bool) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), rank, world_size, seed, batch_size)
    if sampler.batches_per_epoch == 0:
        raise OvssError(f"the training set has {len(dataset)} images, fewer than one global micro-batch "
                        f"({world_size} processes x {batch_size}); lower data.batch_size or add images")
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                        drop_last=True, worker_init_fn=_seed_worker, persistent_workers=workers > 0,
                        generator=torch.Generator().manual_seed(seed * 1000 + rank))
    return loader, sampler


def iterate_forever(loader: DataLoader, sampler: EpochSampler, start_batch: int) -> Iterator[dict]:
    """Micro-batches from global position `start_batch` (this rank's batches consumed so far) onwards."""
    epoch, skip = divmod(start_batch, sampler.batches_per_epoch)
    while True:
        sampler.set_epoch(epoch, skip)
        yield from loader
        epoch, skip = epoch + 1, 0
