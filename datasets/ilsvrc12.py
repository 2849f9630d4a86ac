"""ILSVRC-12 (ImageNet) as an image folder, decoded lazily with PIL."""
from __future__ import annotations

import os

import numpy as np
import torch

from datasets.base import ImageDataset
from datasets.errors import data_error
from datasets.transforms import (center_crop, normalize, random_hflip,
                                 random_resized_crop, resize_shorter)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EXTENSIONS = (".jpeg", ".jpg", ".png")
LAYOUT = ("  <data_dir>/train/<class_dir>/*.JPEG|jpg|png\n"
          "  <data_dir>/val/<class_dir>/*.JPEG|jpg|png   (same class_dir names as train)")


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


def load_image(path):
    """RGB float CHW tensor in [0, 1]; DataError naming the file if undecodable."""
    from PIL import Image  # local: keeps package import light
    try:
        with Image.open(path) as img:
            arr = np.array(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise data_error(f"ILSVRC-12 image {path} cannot be decoded ({err})",
                         LAYOUT) from None
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


class Ilsvrc12(ImageDataset):
    """Train: random_resized_crop + flip; eval: resize shorter to
    int(image_size / 0.875) then center crop. Classes = sorted train folders."""

    mean, std = MEAN, STD

    def __init__(self, data_dir, split="train", image_size=224, augment=True, seed=0):
        super().__init__(seed)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.classes, self.samples = scan(data_dir, split)
        self.num_classes = len(self.classes)
        self.split, self.image_size, self.augment = split, int(image_size), bool(augment)
        self.input_shape = (3, self.image_size, self.image_size)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([lbl for _, lbl in self.samples], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[int(index)]
        x = load_image(path)
        size = self.image_size
        if self.augment:
            gen = self.generator(int(index) % len(self))
            x = random_hflip(random_resized_crop(x, size, gen), gen)
        else:
            x = center_crop(resize_shorter(x, int(size / 0.875)), size)
        return normalize(x, self.mean, self.std).contiguous(), label
