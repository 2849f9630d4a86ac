"""Loaders for native on-disk formats: tiny files written to tmp_path, exact checks."""
import gzip
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from datasets import cifar10, fmnist
from datasets.base import InMemoryImageDataset
from datasets.cifar10 import Cifar10
from datasets.digits import load_digits_splits
from datasets.errors import DataError
from datasets.fmnist import FashionMnist
from datasets.ilsvrc12 import Ilsvrc12
from datasets.transforms import normalize

FLAG = "--data_dir_local"


def _unnormalise(x, ds):
    mean = torch.tensor(ds.mean).view(-1, 1, 1)
    std = torch.tensor(ds.std).view(-1, 1, 1)
    return torch.round((x * std + mean) * 255).to(torch.uint8)


# ---------------------------------------------------------------- CIFAR-10

def _cifar_records(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 10, n).astype(np.uint8), rng.integers(0, 256, (n, 3072),
                                                                 dtype=np.uint8)


def _write_cifar_bin(root, n=2, n_test=3):
    os.makedirs(root, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        labels, pix = _cifar_records(n_test if name == "test_batch" else n, i)
        recs = np.concatenate([labels[:, None], pix], axis=1)
        recs.tofile(os.path.join(root, name + ".bin"))
        batches[name] = (labels, pix)
    return batches


def _write_cifar_py(root, batches, protocol=2, numpy1_names=False):
    os.makedirs(root, exist_ok=True)
    for name, (labels, pix) in batches.items():
        blob = pickle.dumps({b"batch_label": b"x", b"data": pix,
                             b"labels": [int(v) for v in labels]}, protocol=protocol)
        if numpy1_names:
            assert b"numpy._core.multiarray" in blob
            blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(blob)


def _check_cifar(ds, labels, pix):
    assert len(ds) == len(labels) and ds.num_classes == 10
    assert ds.input_shape == (3, 32, 32)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
        assert y == int(labels[i])
        expected = torch.from_numpy(pix[i].reshape(3, 32, 32).copy())
        assert torch.equal(_unnormalise(x, ds), expected)
        mean = torch.tensor(cifar10.MEAN).view(3, 1, 1)
        std = torch.tensor(cifar10.STD).view(3, 1, 1)
        assert torch.allclose(x, (expected.float() / 255 - mean) / std, atol=1e-6)


def test_cifar_binary_exact(tmp_path):
    batches = _write_cifar_bin(str(tmp_path))
    _check_cifar(Cifar10(str(tmp_path), "test", augment=False), *batches["test_batch"])
    train = Cifar10(str(tmp_path), "train", augment=False)
    labels = np.concatenate([batches[f"data_batch_{k}"][0] for k in range(1, 6)])
    pix = np.concatenate([batches[f"data_batch_{k}"][1] for k in range(1, 6)])
    _check_cifar(train, labels, pix)
    assert len(Cifar10(str(tmp_path), "train", augment=False, nb_smpls=4)) == 4


def test_cifar_binary_plane_order(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    rec = bytes([7]) + bytes([10]) * 1024 + bytes([20]) * 1024 + bytes([30]) * 1024
    (root / "test_batch.bin").write_bytes(rec)
    ds = Cifar10(str(tmp_path), "test", augment=False)
    img = ds.raw_image(0)
    assert ds[0][1] == 7
    for c, v in enumerate((10, 20, 30)):
        assert torch.equal(img[c], torch.full((32, 32), v / 255.0))


@pytest.mark.parametrize("protocol,numpy1", [(2, False), (4, False), (2, True)])
def test_cifar_python_matches_binary(tmp_path, protocol, numpy1):
    batches = _write_cifar_bin(str(tmp_path / "bin"))
    _write_cifar_py(str(tmp_path / "py" / "cifar-10-batches-py"), batches, protocol,
                    numpy1)
    ds = Cifar10(str(tmp_path / "py"), "test", augment=False)
    _check_cifar(ds, *batches["test_batch"])
    train_py = Cifar10(str(tmp_path / "py"), "train", augment=False)
    train_bin = Cifar10(str(tmp_path / "bin"), "train", augment=False)
    assert torch.equal(train_py.images, train_bin.images)
    assert torch.equal(train_py.labels, train_bin.labels)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_cifar_pickle_forbidden_global(tmp_path, payload):
    marker = tmp_path / "pwned"
    if payload == "system":
        obj = {b"data": _Evil(str(marker)), b"labels": [0]}
    else:
        obj = eval  # a bare builtin function is a global reference too
    (tmp_path / "test_batch").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError) as err:
        Cifar10(str(tmp_path), "test", augment=False)
    assert not marker.exists()
    msg = str(err.value)
    assert "forbidden global" in msg and payload in msg and "test_batch" in msg


def test_cifar_malformed_python(tmp_path):
    (tmp_path / "test_batch").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="test_batch"):
        Cifar10(str(tmp_path), "test")
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                        b"labels": [0, 1]}))
    with pytest.raises(DataError, match="3072"):
        Cifar10(str(tmp_path), "test")


def test_cifar_truncated_and_bad_label(tmp_path):
    _write_cifar_bin(str(tmp_path))
    path = tmp_path / "test_batch.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError) as err:
        Cifar10(str(tmp_path), "test")
    assert str(path) in str(err.value) and FLAG in str(err.value)
    bad = tmp_path / "data_batch_3.bin"
    rec = bytearray(bad.read_bytes())
    rec[3073] = 10  # label of the 2nd record
    bad.write_bytes(bytes(rec))
    with pytest.raises(DataError, match="data_batch_3.bin.*label 10"):
        Cifar10(str(tmp_path), "train")


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as err:
        Cifar10(str(tmp_path / "nope"), "train")
    msg = str(err.value)
    for token in (FLAG, "data_batch_1.bin", "test_batch.bin", "cifar-10-batches-bin",
                  "cifar-10-batches-py", "data_batch_5"):
        assert token in msg


def test_cifar_augmentation_deterministic(tmp_path):
    _write_cifar_bin(str(tmp_path))
    ds = Cifar10(str(tmp_path), "train", augment=True, seed=3)
    again = Cifar10(str(tmp_path), "train", augment=True, seed=3)  # e.g. in a worker
    a = ds[1][0]
    assert torch.equal(a, ds[1][0]) and torch.equal(a, again[1][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1][0])
    ds.set_epoch(0)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2)
    batch = next(iter(loader))[0]
    assert torch.equal(batch, torch.stack([ds[i][0] for i in range(5)]))


# ---------------------------------------------------------------- Fashion-MNIST

def _idx_bytes(arr, magic):
    head = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def _write_fmnist(root, gz=False, n=5):
    rng = np.random.default_rng(0)
    data = {}
    for split, (img_name, lbl_name) in fmnist.FILES.items():
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        lbls = rng.integers(0, 10, n).astype(np.uint8)
        for name, blob in ((img_name, _idx_bytes(imgs, 2051)),
                           (lbl_name, _idx_bytes(lbls, 2049))):
            if gz:
                (root / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
        data[split] = (imgs, lbls)
    return data


@pytest.mark.parametrize("gz", [False, True])
def test_fmnist_exact(tmp_path, gz):
    data = _write_fmnist(tmp_path, gz)
    for split in ("train", "test"):
        ds = FashionMnist(str(tmp_path), split, augment=False)
        imgs, lbls = data[split]
        assert len(ds) == 5 and ds.input_shape == (1, 28, 28)
        for i in range(5):
            x, y = ds[i]
            assert x.shape == (1, 28, 28) and y == int(lbls[i])
            assert torch.equal(_unnormalise(x, ds)[0], torch.from_numpy(imgs[i]))


def test_fmnist_wrong_magic_truncated_mismatch(tmp_path):
    _write_fmnist(tmp_path)
    img = tmp_path / "train-images-idx3-ubyte"
    good = img.read_bytes()
    img.write_bytes((2049).to_bytes(4, "big") + good[4:])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*magic number 2049"):
        FashionMnist(str(tmp_path), "train")
    img.write_bytes(good[:-1])
    with pytest.raises(DataError) as err:
        FashionMnist(str(tmp_path), "train")
    assert str(img) in str(err.value) and FLAG in str(err.value)
    img.write_bytes(good)
    lbl = tmp_path / "train-labels-idx1-ubyte"
    lbl.write_bytes(_idx_bytes(np.zeros(4, np.uint8), 2049))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        FashionMnist(str(tmp_path), "train")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        FashionMnist(str(tmp_path), "test")


def test_fmnist_missing(tmp_path):
    with pytest.raises(DataError) as err:
        FashionMnist(str(tmp_path), "train")
    msg = str(err.value)
    for token in (FLAG, "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", ".gz"):
        assert token in msg


# ---------------------------------------------------------------- ILSVRC-12

def _save(path, color, size=(40, 30), fmt="PNG"):
    Image.new("RGB", size, color).save(path, format=fmt)


def _write_imagenet(root):
    for split in ("train", "val"):
        for cls, color in (("n02", (200, 10, 90)), ("n01", (30, 140, 250))):
            d = root / split / cls
            d.mkdir(parents=True)
            _save(d / "a.png", color)
            _save(d / "b.JPEG", color, size=(30, 50), fmt="JPEG")
            (d / "notes.txt").write_text("ignored")


def test_ilsvrc_folder(tmp_path):
    _write_imagenet(tmp_path)
    ds = Ilsvrc12(str(tmp_path), "val", image_size=16, augment=False)
    assert ds.classes == ["n01", "n02"] and ds.num_classes == 2 and len(ds) == 4
    assert [lbl for _, lbl in ds.samples] == [0, 0, 1, 1]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    x, y = ds[2]  # n02/a.png: constant PNG colour survives resize + crop exactly
    assert x.shape == (3, 16, 16) and y == 1
    want = normalize(torch.tensor([200, 10, 90.]).view(3, 1, 1) / 255, ds.mean, ds.std)
    assert torch.allclose(x, want.expand(3, 16, 16), atol=1e-5)
    train = Ilsvrc12(str(tmp_path), "train", image_size=16, augment=True, seed=1)
    a = train[1][0]
    assert a.shape == (3, 16, 16) and torch.equal(a, train[1][0])
    assert train.input_shape == (3, 16, 16)


def test_ilsvrc_corrupt_image(tmp_path):
    _write_imagenet(tmp_path)
    bad = tmp_path / "val" / "n01" / "c.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    good = (tmp_path / "val" / "n02" / "b.JPEG").read_bytes()
    cut = tmp_path / "val" / "n02" / "c.jpg"
    cut.write_bytes(good[: len(good) // 2])
    ds = Ilsvrc12(str(tmp_path), "val", image_size=16, augment=False)
    for path in (bad, cut):
        idx = [p for p, _ in ds.samples].index(str(path))
        with pytest.raises(DataError) as err:
            ds[idx]
        assert str(path) in str(err.value) and FLAG in str(err.value)


def test_ilsvrc_missing_and_empty(tmp_path):
    with pytest.raises(DataError) as err:
        Ilsvrc12(str(tmp_path), "train")
    assert FLAG in str(err.value) and "train/<class_dir>" in str(err.value)
    (tmp_path / "train" / "n01").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        Ilsvrc12(str(tmp_path), "train")
    _save(tmp_path / "train" / "n01" / "a.png", (1, 2, 3))
    with pytest.raises(DataError, match="val"):
        Ilsvrc12(str(tmp_path), "val")
    (tmp_path / "val" / "n99").mkdir(parents=True)
    with pytest.raises(DataError, match="n99"):
        Ilsvrc12(str(tmp_path), "val")


# ---------------------------------------------------------------- digits

def test_digits_splits_sizes_disjoint():
    s = load_digits_splits(seed=0)
    assert {k: len(v) for k, v in s.items()} == {"train": 1438, "train_sub": 1294,
                                                 "val": 144, "test": 359}
    idx = {k: set(v.source_index.tolist()) for k, v in s.items()}
    assert not idx["test"] & idx["train"] and not idx["val"] & idx["train_sub"]
    assert idx["val"] | idx["train_sub"] == idx["train"]
    assert idx["train"] | idx["test"] == set(range(1797))
    for name, ds in s.items():
        assert isinstance(ds, InMemoryImageDataset) and ds.num_classes == 10
        x, y = ds[0]
        assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
        assert ds.input_shape == (1, 16, 16)
    raw = s["train"].images
    assert raw.min() >= 0 and raw.max() <= 1 and raw.max() > 0.9
    assert abs(s["train"].mean[0] - raw.mean().item()) < 1e-5
    assert s["val"].augment is None and s["test"].augment is None
    assert s["train_sub"].augment is not None


def test_digits_determinism_and_values():
    a, b = load_digits_splits(seed=1), load_digits_splits(seed=1)
    c = load_digits_splits(seed=2)
    assert torch.equal(a["test"].source_index, b["test"].source_index)
    assert torch.equal(a["val"].images, b["val"].images)
    assert not torch.equal(a["test"].source_index, c["test"].source_index)
    from sklearn.datasets import load_digits
    ref = load_digits()
    small = load_digits_splits(seed=1, image_size=8, augment=False)
    test = small["test"]
    for i in (0, 5):
        src = int(test.source_index[i])
        assert torch.equal(test.raw_image(i)[0] * 16,
                           torch.tensor(ref.images[src], dtype=torch.float32))
        x, y = test[i]
        assert y == ref.target[src] and x.shape == (1, 8, 8)
        assert torch.allclose(x, normalize(test.raw_image(i), test.mean, test.std))


def test_digits_augmentation_determinism():
    s = load_digits_splits(seed=0)
    train = s["train_sub"]
    a = train[3][0]
    assert torch.equal(a, train[3][0])
    assert torch.equal(a, load_digits_splits(seed=0)["train_sub"][3][0])
    train.set_epoch(1)
    assert not torch.equal(a, train[3][0])
    val = s["val"]
    assert torch.equal(val[0][0], val[0][0])
    assert torch.equal(val[0][0], normalize(val.raw_image(0), val.mean, val.std))
