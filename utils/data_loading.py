"""DataLoaders that shard per rank and can resume in the middle of an epoch."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datasets.errors import DataError
from datasets.sampler import ShardedSampler, eval_shard_indices


class ResumableSampler(Sampler):
    """Wraps a ShardedSampler; ``skip_batches(k)`` drops the first k batches of the next epoch
    without loading them, so a resumed run sees exactly the batches it had left."""

    def __init__(self, inner: ShardedSampler, batch_size: int) -> None:
        self.inner = inner
        self.batch_size = batch_size
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def skip_batches(self, nb_batches: int) -> None:
        self._skip = nb_batches * self.batch_size

    def __iter__(self):
        indices = list(self.inner)[self._skip:]
        self._skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return len(self.inner)


def make_train_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                      seed: int = 0, nb_threads: int = 0, shuffle: bool = True) -> DataLoader:
    """Shuffled (seeded per epoch), sharded by rank, incomplete last batch dropped; a dataset
    too small for one batch per process is refused (DataError naming the flag)."""
    check_one_batch(len(dataset), batch_size, world_size)
    check_items(dataset)
    sampler = ResumableSampler(
        ShardedSampler(len(dataset), rank=rank, world_size=world_size, shuffle=shuffle, seed=seed,
                       drop_last=True), batch_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                      num_workers=nb_threads, pin_memory=torch.cuda.is_available())


def check_items(dataset: Dataset) -> None:
    """DataError unless the dataset's items are ``(input tensor, label)`` pairs: a model with
    several inputs (``((x1, x2), y)``) is not supported, and is refused before any training."""
    if len(dataset) == 0:
        return
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"the dataset's items must be (input, label) pairs; item 0 of "
                        f"{type(dataset).__name__} is a {type(item).__name__}")
    if isinstance(item[0], (tuple, list, dict)):
        raise DataError(f"item 0 of {type(dataset).__name__} holds several inputs ((x1, x2, ...), "
                        "label): models with several inputs are not supported (the channel graph, "
                        "the exports and the tools take one tensor); give one input tensor")
    if not isinstance(item[0], torch.Tensor):
        raise DataError(f"item 0 of {type(dataset).__name__} has a {type(item[0]).__name__} "
                        "input, not a tensor")


def check_one_batch(nb_samples: int, batch_size: int, world_size: int = 1) -> None:
    """DataError unless ``nb_samples`` give each of ``world_size`` processes a full batch."""
    if nb_samples // max(world_size, 1) < batch_size:
        per = f" per process x {world_size} processes" if world_size > 1 else ""
        raise DataError(f"the training set has {nb_samples} samples, fewer than one batch of "
                        f"--batch_size={batch_size}{per} (incomplete batches are dropped); "
                        "lower --batch_size or add training data")


def make_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                     nb_threads: int = 0) -> DataLoader:
    """This rank's share of the eval set; shares are disjoint and cover every sample once."""
    check_items(dataset)
    subset = torch.utils.data.Subset(dataset, eval_shard_indices(len(dataset), rank, world_size))
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=nb_threads)
