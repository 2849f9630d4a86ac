"""Dataset base classes with worker-independent, per-sample augmentation seeds."""
from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset

from datasets.transforms import normalize

_MASK63 = (1 << 63) - 1
_KEEP = object()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """63-bit seed mixed from (seed, epoch, index) (splitmix64 finaliser)."""
    z = ((int(seed) * 1_000_003 + int(epoch)) * 1_000_033 + int(index)) & _MASK63
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded only by (seed, epoch, index)."""
    gen = torch.Generator()
    gen.manual_seed(sample_seed(seed, epoch, index))
    return gen


class ImageDataset(Dataset):
    """Abstract image dataset: `__getitem__` -> (float32 CHW normalised, int label).

    Subclasses set `num_classes`, `mean`, `std` (per channel, in the 0..1 pixel
    scale) and `input_shape` (C, H, W after transforms). Augmentation randomness
    depends only on (seed, epoch, index); call `set_epoch` before each epoch
    (with non-persistent DataLoader workers the new value reaches every worker).
    """

    num_classes: int
    mean: tuple
    std: tuple
    input_shape: tuple

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, index: int) -> torch.Generator:
        return sample_generator(self.seed, self.epoch, index)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError


class InMemoryImageDataset(ImageDataset):
    """Images held in memory as an NCHW tensor.

    uint8 images are scaled by 1/255; float images are taken to be in [0, 1].
    `augment` (an `Augment`) is applied to the UNNORMALISED [0, 1] float image
    (so zero padding is black), then the result is normalised with mean/std.
    """

    def __init__(self, images, labels, mean, std, num_classes, augment=None,
                 seed=0, input_shape=None):
        super().__init__(seed)
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"need NCHW images and N labels, got "
                             f"{tuple(images.shape)} and {tuple(labels.shape)}")
        self._images, self._labels, self._index = images, labels, None
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.num_classes = int(num_classes)
        self.augment = augment
        self.input_shape = tuple(input_shape or images.shape[1:])

    @property
    def images(self) -> torch.Tensor:
        """Images of this view (a copy when the view is a subset)."""
        return self._images if self._index is None else self._images[self._index]

    @property
    def labels(self) -> torch.Tensor:
        return self._labels if self._index is None else self._labels[self._index]

    def __len__(self) -> int:
        return len(self._labels) if self._index is None else len(self._index)

    def raw_image(self, index: int) -> torch.Tensor:
        """Unaugmented, unnormalised float image in [0, 1]."""
        i = int(index) if self._index is None else int(self._index[index])
        img = self._images[i]
        return img.float() / 255.0 if img.dtype == torch.uint8 else img.float()

    def __getitem__(self, index):
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index %= len(self)
        x = self.raw_image(index)
        if self.augment is not None:
            x = self.augment(x, self.generator(index))
        i = index if self._index is None else int(self._index[index])
        return normalize(x, self.mean, self.std).contiguous(), int(self._labels[i])

    def subset(self, indices, augment=_KEEP) -> "InMemoryImageDataset":
        """A view on `indices` of this dataset, sharing image storage."""
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} samples")
        view = copy.copy(self)
        view._index = idx if self._index is None else self._index[idx]
        if augment is not _KEEP:
            view.augment = augment
        return view
