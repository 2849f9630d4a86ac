"""Deterministic sharding of sample indices across data-parallel ranks."""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ShardedSampler(Sampler):
    """Per-epoch permutation (seed + epoch), rank r takes `perm[r::world_size]`.

    drop_last=True truncates the permutation to a multiple of world_size;
    drop_last=False pads it by wrapping around. Either way every rank yields
    the same number of indices.
    """

    def __init__(self, num_samples, rank=0, world_size=1, shuffle=True, seed=0,
                 drop_last=True):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad rank {rank} for world_size {world_size}")
        self.num_samples = int(num_samples)
        self.rank, self.world_size = int(rank), int(world_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, w = self.num_samples, self.world_size
        return n // w if self.drop_last else -(-n // w)

    def indices(self) -> list:
        n = self.num_samples
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            perm = torch.randperm(n, generator=gen).tolist()
        else:
            perm = list(range(n))
        total = len(self) * self.world_size
        if total <= n:
            perm = perm[:total]
        elif n > 0:
            perm = (perm * (-(-total // n)))[:total]
        return perm[self.rank::self.world_size]

    def __iter__(self):
        return iter(self.indices())


def eval_shard_indices(num_samples: int, rank: int, world_size: int) -> list:
    """`range(rank, n, world_size)`: no padding, each sample on exactly one rank."""
    return list(range(rank, num_samples, world_size))
