"""CIFAR-10 from either native format (binary `.bin` or python pickles)."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from datasets.base import InMemoryImageDataset
from datasets.errors import DataError, data_error
from datasets.safe_pickle import safe_load
from datasets.transforms import Augment, pad_and_random_crop, random_hflip

MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
log = logging.getLogger("pocketflow")
RECORD_BYTES = 1 + 3 * 32 * 32
_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_TEST = ["test_batch"]
SUBDIRS = ("", "cifar-10-batches-bin", "cifar-10-batches-py")
LAYOUT = ("  binary: <data_dir>[/cifar-10-batches-bin]/data_batch_1.bin .. "
          "data_batch_5.bin, test_batch.bin\n"
          "  python: <data_dir>[/cifar-10-batches-py]/data_batch_1 .. data_batch_5, "
          "test_batch")


def _malformed(path, why):
    return data_error(f"CIFAR-10 file {path} is malformed: {why}", LAYOUT)


def read_binary(path):
    """(uint8 N x 3 x 32 x 32, int64 N) from a binary batch file."""
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD_BYTES:
        raise _malformed(path, f"size {raw.size} is not a positive multiple of "
                               f"{RECORD_BYTES} bytes")
    rec = raw.reshape(-1, RECORD_BYTES)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise _malformed(path, f"label {labels.max()} > 9")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def read_python(path):
    """(uint8 N x 3 x 32 x 32, int64 N) from a python batch pickle."""
    try:
        obj = safe_load(path, encoding="bytes")
    except DataError as err:
        raise _malformed(path, str(err)) from None
    if not isinstance(obj, dict):
        raise _malformed(path, f"expected a dict, got {type(obj).__name__}")
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise _malformed(path, "b'data' must be a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        raise _malformed(path, "b'labels' must be a list of ints") from None
    if len(labels) != len(data) or len(labels) == 0:
        raise _malformed(path, f"{len(data)} images but {len(labels)} labels")
    if labels.min() < 0 or labels.max() > 9:
        raise _malformed(path, "labels must lie in 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def find_files(data_dir, split):
    """Paths of the batch files for `split` and the reader to use (binary files first; when
    both layouts are present, the log says which one is read)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = _TRAIN if split == "train" else _TEST
    found = []
    for sub in SUBDIRS:
        root = os.path.join(data_dir, sub)
        for suffix, reader, layout in ((".bin", read_binary, "binary"), ("", read_python, "python")):
            paths = [os.path.join(root, n + suffix) for n in names]
            if all(os.path.isfile(p) for p in paths):
                found.append((paths, reader, layout, root))
    if not found:
        raise data_error(f"CIFAR-10 {split} files not found under {data_dir!r}", LAYOUT)
    paths, reader, layout, root = found[0]
    others = ", ".join(f"{lay} files in {where}" for _, _, lay, where in found[1:])
    log.info("CIFAR-10 %s: reading the %s files in %s%s", split, layout, root,
             f" (ignoring the {others})" if others else "")
    return paths, reader


def check_records(path, count, expected):
    """DataError unless a batch file holds ``expected`` images (None: any count)."""
    if expected is not None and count != expected:
        raise _malformed(path, f"{count} images, expected {expected} per batch file (a cut or "
                               "partial copy?); set --cifar_records_per_file to the count of "
                               "your files, or 0 to accept any")


def augmentation():
    """Train augmentation: pad 4 + random 32x32 crop + horizontal flip."""
    return Augment([lambda x, g: pad_and_random_crop(x, 32, 4, g), random_hflip])


class Cifar10(InMemoryImageDataset):
    """CIFAR-10 split held in memory as uint8; `nb_smpls` keeps the first N; with
    `records_per_file` every batch file must hold exactly that many images."""

    def __init__(self, data_dir, split="train", augment=True, seed=0, nb_smpls=None,
                 records_per_file=None):
        paths, reader = find_files(data_dir, split)
        parts = [reader(p) for p in paths]
        for path, (_, labels) in zip(paths, parts):
            check_records(path, len(labels), records_per_file)
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        log.info("CIFAR-10 %s: %d images from %d files", split, len(labels), len(paths))
        if nb_smpls is not None:
            images, labels = images[:nb_smpls], labels[:nb_smpls]
        super().__init__(torch.from_numpy(np.ascontiguousarray(images)),
                         torch.from_numpy(labels), MEAN, STD, num_classes=10,
                         augment=augmentation() if augment else None, seed=seed)
        self.split, self.files = split, paths
