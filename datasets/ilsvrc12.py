"""ILSVRC-12 (ImageNet) as image folders or PocketFlow's TFRecord shards, decoded lazily
with PIL; `open_ilsvrc12` picks the layout found on disk."""
from __future__ import annotations

import glob
import io
import os

import numpy as np
import torch

from datasets.base import ImageDataset
from datasets.errors import data_error
from datasets.tfrecord import index_records, parse_example, read_record
from datasets.transforms import (center_crop, normalize, random_hflip,
                                 random_resized_crop, resize_shorter)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpeg", ".jpg", ".png")
LAYOUT = ("  <data_dir>/train/<class_dir>/*.JPEG|jpg|png\n"
          "  <data_dir>/val/<class_dir>/*.JPEG|jpg|png   (same class_dir names as train)")
TFRECORD_LAYOUT = (
    "  <data_dir>/train-00000-of-01024 ... train-01023-of-01024   (PocketFlow's TFRecord files)\n"
    "  <data_dir>/validation-00000-of-00128 ... validation-00127-of-00128\n"
    "  each record a tf.train.Example: image/encoded (JPEG bytes), image/class/label (1..1000)")
BOTH_LAYOUTS = f"either image folders:\n{LAYOUT}\nor TFRecord files:\n{TFRECORD_LAYOUT}"
SHARDS = {"train": "train-*-of-*", "val": "validation-*-of-*"}
ENCODED, LABEL = "image/encoded", "image/class/label"
MAX_OPEN_FILES = 64   # per process: 1024 shards must not exhaust the file descriptors


def _class_dirs(root):
    if not os.path.isdir(root):
        raise data_error(f"ILSVRC-12 folder {root!r} not found", LAYOUT)
    names = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not names:
        raise data_error(f"ILSVRC-12 folder {root!r} has no class sub-folders", LAYOUT)
    return names


def scan(data_dir, split):
    """(sorted class names from train/, [(path, label)] of `split`)."""
    classes = _class_dirs(os.path.join(data_dir, "train"))
    index = {c: i for i, c in enumerate(classes)}
    root = os.path.join(data_dir, split)
    samples = []
    for name in _class_dirs(root):
        if name not in index:
            raise data_error(f"class folder {name!r} in {root!r} is not in train/", LAYOUT)
        folder = os.path.join(root, name)
        files = sorted(e.name for e in os.scandir(folder)
                       if e.is_file() and e.name.lower().endswith(EXTENSIONS))
        samples += [(os.path.join(folder, f), index[name]) for f in files]
    if not samples:
        raise data_error(f"no images found under {root!r}", LAYOUT)
    return classes, samples


def decode_image(source, what, layout=LAYOUT):
    """RGB float CHW tensor in [0, 1] from a path or encoded bytes; DataError naming `what`
    (the file, or the file and record) if undecodable."""
    from PIL import Image  # local: keeps package import light
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            arr = np.array(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise data_error(f"ILSVRC-12 image {what} cannot be decoded ({err})", layout) from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


def load_image(path):
    """RGB float CHW tensor in [0, 1]; DataError naming the file if undecodable."""
    return decode_image(path, path)


class _Ilsvrc12Base(ImageDataset):
    """Shared transforms: train: random_resized_crop + flip; eval: resize shorter to
    int(image_size / 0.875) then center crop; then the ImageNet normalisation."""

    mean, std = MEAN, STD

    def _setup(self, split, image_size, augment):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.image_size, self.augment = split, int(image_size), bool(augment)
        self.input_shape = (3, self.image_size, self.image_size)

    def _transform(self, x, index):
        size = self.image_size
        if self.augment:
            gen = self.generator(int(index) % len(self))
            x = random_hflip(random_resized_crop(x, size, gen), gen)
        else:
            x = center_crop(resize_shorter(x, int(size / 0.875)), size)
        return normalize(x, self.mean, self.std).contiguous()


class Ilsvrc12(_Ilsvrc12Base):
    """Image folders. Train: random_resized_crop + flip; eval: resize shorter to
    int(image_size / 0.875) then center crop. Classes = sorted train folders."""

    def __init__(self, data_dir, split="train", image_size=224, augment=True, seed=0):
        super().__init__(seed)
        self._setup(split, image_size, augment)
        self.classes, self.samples = scan(data_dir, split)
        self.num_classes = len(self.classes)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([lbl for _, lbl in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[int(index)]
        return self._transform(load_image(path), index), label


def shard_paths(data_dir, split):
    """Sorted TFRecord shards of `split` ('train' or 'val') in `data_dir`."""
    pattern = os.path.join(glob.escape(str(data_dir)), SHARDS[split])
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


class Ilsvrc12TFRecord(_Ilsvrc12Base):
    """PocketFlow's ILSVRC-12 TFRecord shards (TF-slim's build_imagenet_data.py), read without
    TensorFlow. Labels 1..1000 in the files (0 is TF-slim's background class) become 0..999.

    Construction indexes the records from their headers only; `__getitem__(i)` reads record i
    over the sorted shards. Files are opened lazily in each process (never pickled to
    DataLoader workers). No `labels`: they would need every record read.
    """

    num_classes = 1000

    def __init__(self, data_dir, split="train", image_size=224, augment=True, seed=0,
                 verify_crc=False):
        super().__init__(seed)
        self._setup(split, image_size, augment)
        self.paths = shard_paths(data_dir, split)
        if not self.paths:
            raise data_error(f"no ILSVRC-12 TFRecord files {SHARDS[split]} in {data_dir!r}",
                             TFRECORD_LAYOUT)
        index = [index_records(path, layout=TFRECORD_LAYOUT) for path in self.paths]
        self._offsets = np.concatenate([offsets for offsets, _ in index])
        self._lengths = np.concatenate([lengths for _, lengths in index])
        self._starts = np.cumsum([0] + [len(offsets) for offsets, _ in index])
        self.verify_crc = bool(verify_crc)
        self._handles, self._pid = {}, None

    def __getstate__(self):
        return {**self.__dict__, "_handles": {}, "_pid": None}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _file(self, shard):
        if self._pid != os.getpid():   # a forked worker opens its own files
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.pop(shard, None)
        if handle is None:
            if len(self._handles) >= MAX_OPEN_FILES:
                self._handles.pop(next(iter(self._handles))).close()
            handle = open(self.paths[shard], "rb", buffering=0)
        self._handles[shard] = handle      # most recently used last
        return handle

    def record(self, index):
        """(encoded image bytes, label 0..999, 'file, record' text) of record `index`."""
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        index %= len(self)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        path, offset = self.paths[shard], int(self._offsets[index])
        where = f"{path}, record at byte offset {offset}"
        data = read_record(self._file(shard), path, offset, int(self._lengths[index]),
                           self.verify_crc, TFRECORD_LAYOUT)
        feats = parse_example(data, (ENCODED, LABEL), where, TFRECORD_LAYOUT)
        image, label = feats.get(ENCODED, []), feats.get(LABEL, [])
        if len(image) != 1 or not isinstance(image[0], bytes):
            raise data_error(f"{where}: {ENCODED} is not one bytes value", TFRECORD_LAYOUT)
        if len(label) != 1 or not isinstance(label[0], int):
            raise data_error(f"{where}: {LABEL} is not one int64 value", TFRECORD_LAYOUT)
        if not 1 <= label[0] <= 1000:
            raise data_error(f"{where}: label {label[0]} is outside 1..1000 (0 is TF-slim's "
                             "background class, which ILSVRC-12 images never have)",
                             TFRECORD_LAYOUT)
        return image[0], label[0] - 1, where

    def __getitem__(self, index):
        encoded, label, where = self.record(index)
        return self._transform(decode_image(encoded, where, TFRECORD_LAYOUT), index), label


def open_ilsvrc12(data_dir, split="train", image_size=224, augment=True, seed=0):
    """The ILSVRC-12 `split` ('train' or 'val') in `data_dir`: image folders when
    `<data_dir>/<split>/` exists, else PocketFlow's TFRecord files (`train-*-of-*`,
    `validation-*-of-*`); DataError describing both layouts when neither is there."""
    if split not in SHARDS:
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if os.path.isdir(os.path.join(data_dir, split)):
        return Ilsvrc12(data_dir, split, image_size, augment, seed)
    if shard_paths(data_dir, split):
        return Ilsvrc12TFRecord(data_dir, split, image_size, augment, seed)
    raise data_error(f"ILSVRC-12 {split} data not found in {data_dir!r}: no {split}/ folder "
                     f"and no {SHARDS[split]} TFRecord files", BOTH_LAYOUTS)
