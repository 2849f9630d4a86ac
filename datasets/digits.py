"""scikit-learn's embedded 8x8 digits (1797 images, 10 classes): the default dataset."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from datasets.base import InMemoryImageDataset
from datasets.transforms import Augment, pad_and_random_crop

NUM_SAMPLES = 1797


@functools.lru_cache(maxsize=1)
def _raw():
    from sklearn.datasets import load_digits  # local: keeps package import light
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32) / 16.0
    return images.unsqueeze(1), torch.tensor(bunch.target, dtype=torch.int64)


def split_sizes(test_fraction=0.2, val_fraction=0.1, n=NUM_SAMPLES):
    """(n_test, n_val) with Python round(): defaults give (359, 144)."""
    n_test = int(round(n * test_fraction))
    return n_test, int(round((n - n_test) * val_fraction))


def augmentation(image_size):
    """Pad image_size//8 + random crop; no flip (digits are not mirror symmetric)."""
    pad = image_size // 8
    return Augment([lambda x, g: pad_and_random_crop(x, image_size, pad, g)])


def load_digits_splits(seed=0, image_size=16, test_fraction=0.2, val_fraction=0.1,
                       augment=True) -> dict:
    """Seeded split of the digits into train / train_sub / val / test datasets.

    perm = randperm(1797, seed): test = perm[:n_test], train = the rest,
    val = first n_val of train, train_sub = remaining train. Images are in
    [0, 1], upsampled once (bilinear, align_corners=False) to image_size, 1
    channel; mean/std come from the train split. Only train/train_sub augment.
    """
    images, labels = _raw()
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    n_test, n_val = split_sizes(test_fraction, val_fraction)
    perm = torch.randperm(NUM_SAMPLES, generator=torch.Generator().manual_seed(seed))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    train_images = images[train_idx]
    mean, std = train_images.mean().item(), train_images.std(unbiased=False).item()
    aug = augmentation(image_size) if augment else None
    train = InMemoryImageDataset(train_images, labels[train_idx], (mean,), (std,),
                                 num_classes=10, augment=aug, seed=seed)
    test = InMemoryImageDataset(images[test_idx], labels[test_idx], (mean,), (std,),
                                num_classes=10, augment=None, seed=seed)
    splits = {"train": train,
              "train_sub": train.subset(range(n_val, len(train))),
              "val": train.subset(range(n_val), augment=None),
              "test": test}
    sources = {"train": train_idx, "train_sub": train_idx[n_val:],
               "val": train_idx[:n_val], "test": test_idx}
    for name, ds in splits.items():
        ds.source_index = sources[name]  # positions in sklearn's load_digits()
    return splits
