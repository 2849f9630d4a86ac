"""Fashion-MNIST from idx files (optionally gzipped)."""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np
import torch

from datasets.base import InMemoryImageDataset
from datasets.errors import data_error
from datasets.transforms import Augment, pad_and_random_crop, random_hflip

MEAN = (0.2860,)
STD = (0.3530,)
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
LAYOUT = ("  <data_dir>/train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz],\n"
          "  <data_dir>/t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]")


def _malformed(path, why):
    return data_error(f"Fashion-MNIST file {path} is malformed: {why}", LAYOUT)


def _find(data_dir, name):
    for cand in (name, name + ".gz"):
        path = os.path.join(data_dir, cand)
        if os.path.isfile(path):
            return path
    raise data_error(f"Fashion-MNIST file {name}[.gz] not found under {data_dir!r}",
                     LAYOUT)


def read_idx(path, magic, ndim):
    """Parse an idx ubyte file with the given magic number and dimension count."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            with open(path, "rb") as fh:
                raw = fh.read()
    except (OSError, EOFError, zlib.error) as err:
        raise _malformed(path, f"cannot read ({err})") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _malformed(path, f"only {len(raw)} bytes, header needs {header}")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise _malformed(path, f"magic number {got}, expected {magic}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    want = header + math.prod(dims)  # exact: the header's dims can be anything
    if dims[0] == 0:
        raise _malformed(path, "the header counts 0 items")
    if len(raw) != want:
        raise _malformed(path, f"{len(raw)} bytes, dims {dims} need {want}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def augmentation():
    """Pad 2 + random 28x28 crop + horizontal flip (garments are ~mirror symmetric)."""
    return Augment([lambda x, g: pad_and_random_crop(x, 28, 2, g), random_hflip])


class FashionMnist(InMemoryImageDataset):
    """Fashion-MNIST split held in memory as uint8, 1 x 28 x 28."""

    def __init__(self, data_dir, split="train", augment=True, seed=0):
        if split not in FILES:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        img_path, lbl_path = (_find(data_dir, n) for n in FILES[split])
        images = read_idx(img_path, IMAGE_MAGIC, 3)
        labels = read_idx(lbl_path, LABEL_MAGIC, 1).astype(np.int64)
        if images.shape[1:] != (28, 28):
            raise _malformed(img_path, f"images are {images.shape[1:]}, expected 28x28")
        if len(images) != len(labels):
            raise _malformed(lbl_path, f"{len(labels)} labels for {len(images)} images "
                                       f"in {img_path}")
        if len(labels) and labels.max() > 9:
            raise _malformed(lbl_path, f"label {labels.max()} > 9")
        super().__init__(torch.from_numpy(images.copy()).unsqueeze(1),
                         torch.from_numpy(labels), MEAN, STD, num_classes=10,
                         augment=augmentation() if augment else None, seed=seed)
        self.split, self.files = split, (img_path, lbl_path)
