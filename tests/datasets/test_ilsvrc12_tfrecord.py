"""PocketFlow's ILSVRC-12 TFRecord files, written here in the native format (an independent
writer: protobuf encoding by hand, bitwise CRC-32C) and read back without TensorFlow."""
from __future__ import annotations

import io
import json
import pickle
import struct
import time

import pytest
import torch
from PIL import Image

from datasets.errors import DataError
from datasets.ilsvrc12 import Ilsvrc12, Ilsvrc12TFRecord, open_ilsvrc12
from datasets.tfrecord import crc32c, index_records, iter_records, parse_example
from datasets.transforms import normalize
from tests.conftest import finish, start_entry

FLAG = "--data_dir_local"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# -- an independent writer -------------------------------------------------------------------
def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 * (crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> int:
    crc = _crc32c_bitwise(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % (1 << 32)


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _feature(value) -> bytes:
    if isinstance(value, bytes):
        return _ld(1, _ld(1, value))                                        # BytesList
    if isinstance(value[0], float):
        return _ld(2, _ld(1, b"".join(struct.pack("<f", v) for v in value)))  # packed floats
    if value[0] == "unpacked":
        return _ld(3, b"".join(_varint(1 << 3) + _varint(v) for v in value[1:]))
    return _ld(3, _ld(1, b"".join(_varint(v) for v in value)))                 # packed int64


def _example(features: dict) -> bytes:
    entries = b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, _feature(v)))
                       for k, v in features.items())
    return _ld(1, entries)


def _frame(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked(length)) + data + struct.pack("<I", _masked(data))


def _image(color, size=(40, 30), fmt="JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt, quality=95)
    return buf.getvalue()


def _record(color, label, fmt="JPEG", size=(40, 30)) -> bytes:
    return _example({"image/height": [size[1]], "image/width": [size[0]],
                     "image/format": fmt.encode(), "image/encoded": _image(color, size, fmt),
                     "image/class/label": ["unpacked", label], "image/class/text": b"a class",
                     "image/object/bbox/xmin": [0.125, 0.5], "image/object/bbox/label": [label],
                     "image/filename": b"n01440764_10026.JPEG"})


COLORS = [(200, 10, 90), (30, 140, 250), (255, 255, 0), (0, 128, 64), (90, 90, 90)]


def _write_split(root, prefix, nb_shards, per_shard, fmt="PNG", label_of=lambda i: i % 1000 + 1):
    """Shards ``prefix-0000k-of-0000n`` holding records i = 0, 1, ... (colour COLORS[i % 5])."""
    i = 0
    for shard in range(nb_shards):
        blob = b""
        for _ in range(per_shard):
            blob += _frame(_record(COLORS[i % len(COLORS)], label_of(i), fmt))
            i += 1
        (root / f"{prefix}-{shard:05d}-of-{nb_shards:05d}").write_bytes(blob)
    return i


def _want(color, size=16):
    return normalize(torch.tensor(color, dtype=torch.float32).view(3, 1, 1) / 255, MEAN,
                     STD).expand(3, size, size)


# -- the framing and the protobuf decoder ----------------------------------------------------
def test_crc32c_reference_values():
    assert crc32c(b"123456789") == 0xE3069283 == _crc32c_bitwise(b"123456789")
    assert crc32c(b"") == 0 and crc32c(bytes(32)) == 0x8A9136AA


def test_parse_example_all_kinds_and_skips():
    data = _example({"b": b"\x00bytes", "f": [1.5, -2.0], "i": [3, 1 << 40, -7],
                     "u": ["unpacked", 5, 6], "skip": b"x" * 10})
    got = parse_example(data)
    assert got == {"b": [b"\x00bytes"], "f": [1.5, -2.0], "i": [3, 1 << 40, -7], "u": [5, 6],
                   "skip": [b"x" * 10]}
    assert parse_example(data, keys=("i", "nope")) == {"i": [3, 1 << 40, -7]}
    assert parse_example(b"") == {}


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_parse_example_truncated_is_data_error(cut):
    data = _example({"image/encoded": b"x" * 30, "image/class/label": [1]})
    with pytest.raises(DataError, match="REC is not a valid tf.train.Example"):
        parse_example(data[:-cut], where="REC")
    with pytest.raises(DataError, match="varint"):
        parse_example(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", where="REC")


def test_index_and_iter_records(tmp_path):
    path = tmp_path / "f.tfrecord"
    records = [b"", b"a", b"hello" * 1000]
    path.write_bytes(b"".join(_frame(r) for r in records))
    offsets, lengths = index_records(str(path))
    assert offsets.tolist() == [0, 16, 33] and lengths.tolist() == [0, 1, 5000]
    assert list(iter_records(str(path))) == records
    blob = bytearray(path.read_bytes())
    blob[50] ^= 1                                # a data byte of the third record
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="offset 33: data CRC mismatch"):
        list(iter_records(str(path)))


# -- the dataset -----------------------------------------------------------------------------
@pytest.fixture
def shards(tmp_path):
    n_train = _write_split(tmp_path, "train", 3, 3)                  # 9 records
    n_val = _write_split(tmp_path, "validation", 2, 2, label_of=lambda i: 1000 - i)
    (tmp_path / "train-notes.txt").write_text("not a shard")
    return tmp_path, n_train, n_val


def test_eval_values_labels_and_length(shards):
    root, n_train, n_val = shards
    val = open_ilsvrc12(str(root), "val", image_size=16, augment=False)
    assert isinstance(val, Ilsvrc12TFRecord) and len(val) == n_val == 4
    assert val.num_classes == 1000 and val.input_shape == (3, 16, 16)
    assert [val[i][1] for i in range(4)] == [999, 998, 997, 996]       # 1000 - i, minus 1
    for i in range(4):                        # PNG: a solid colour survives resize and crop
        assert torch.allclose(val[i][0], _want(COLORS[i]), atol=1e-5)
    assert torch.equal(val[-1][0], val[3][0])
    with pytest.raises(IndexError):
        val[4]
    train = open_ilsvrc12(str(root), "train", image_size=16, augment=False)
    assert len(train) == 9 and [train[i][1] for i in range(9)] == list(range(9))
    assert [p.rsplit("/", 1)[1] for p in train.paths] == [
        f"train-{k:05d}-of-00003" for k in range(3)]


def test_jpeg_values_within_tolerance(tmp_path):
    _write_split(tmp_path, "validation", 1, 5, fmt="JPEG")
    val = Ilsvrc12TFRecord(str(tmp_path), "val", image_size=16, augment=False)
    for i, color in enumerate(COLORS):
        x, y = val[i]
        assert y == i and x.shape == (3, 16, 16)
        assert (x - _want(color)).abs().max() < 4 / 255 / min(STD)


def test_augmentation_deterministic_and_pickled_without_files(shards):
    root, _, _ = shards
    train = Ilsvrc12TFRecord(str(root), "train", image_size=16, augment=True, seed=3)
    other = Ilsvrc12TFRecord(str(root), "train", image_size=16, augment=True, seed=3)
    a = train[4][0]
    assert a.shape == (3, 16, 16) and torch.equal(a, other[4][0]) and torch.equal(a, train[4][0])
    assert torch.allclose(a, _want(COLORS[4]), atol=1e-5)    # solid colour: any crop, any flip
    assert train._handles                                   # files opened on first use...
    clone = pickle.loads(pickle.dumps(train))
    assert clone._handles == {} and torch.equal(clone[4][0], a)   # ...never pickled
    loader = torch.utils.data.DataLoader(train, batch_size=3, num_workers=2)
    labels = torch.cat([y for _, y in loader])
    assert labels.tolist() == list(range(9))


def test_augmentation_uses_the_generator(tmp_path):
    """A two-colour image: crops differ between seeds, are equal for equal seeds."""
    img = Image.new("RGB", (64, 64), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 64))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rec = _example({"image/encoded": buf.getvalue(), "image/class/label": [7]})
    (tmp_path / "train-00000-of-00001").write_bytes(_frame(rec) * 6)
    outs = {s: torch.stack([Ilsvrc12TFRecord(str(tmp_path), "train", 16, True, s)[i][0]
                            for i in range(6)]) for s in (0, 0, 1)}
    again = torch.stack([Ilsvrc12TFRecord(str(tmp_path), "train", 16, True, 0)[i][0]
                         for i in range(6)])
    assert torch.equal(outs[0], again) and not torch.equal(outs[0], outs[1])


# -- hostile and missing files ---------------------------------------------------------------
def _one_shard(root, blob):
    path = root / "validation-00000-of-00001"
    path.write_bytes(blob)
    return str(path)


def test_truncated_file(tmp_path):
    good = _frame(_record(COLORS[0], 1))
    for cut, what in ((len(good) + 5, "truncated header"), (len(good) + 100, "truncated record")):
        path = _one_shard(tmp_path, (good * 2)[:cut])
        with pytest.raises(DataError) as err:
            Ilsvrc12TFRecord(str(tmp_path), "val", augment=False)
        msg = str(err.value)
        assert what in msg and path in msg and f"offset {len(good)}" in msg and FLAG in msg


def test_bad_length_crc_and_empty_file(tmp_path):
    blob = bytearray(_frame(_record(COLORS[0], 1)))
    blob[8] ^= 0xFF
    path = _one_shard(tmp_path, bytes(blob))
    with pytest.raises(DataError, match=r"offset 0: length CRC mismatch"):
        Ilsvrc12TFRecord(str(tmp_path), "val")
    _one_shard(tmp_path, b"")
    with pytest.raises(DataError, match=f"TFRecord file {path} is empty"):
        Ilsvrc12TFRecord(str(tmp_path), "val")


def test_huge_length_fails_fast(tmp_path):
    length = struct.pack("<Q", 1 << 60)
    path = _one_shard(tmp_path, length + struct.pack("<I", _masked(length)) + b"x" * 100)
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        Ilsvrc12TFRecord(str(tmp_path), "val")
    assert time.perf_counter() - start < 1.0
    assert f"record length {1 << 60} is over the cap" in str(err.value) and path in str(err.value)


@pytest.mark.parametrize("label", [0, 1001, -1])
def test_label_outside_1_to_1000(tmp_path, label):
    ok = _frame(_record(COLORS[0], 5))
    path = _one_shard(tmp_path, ok + _frame(_record(COLORS[1], label)))
    ds = Ilsvrc12TFRecord(str(tmp_path), "val", augment=False)
    assert ds[0][1] == 4
    with pytest.raises(DataError) as err:
        ds[1]
    assert (f"{path}, record at byte offset {len(ok)}: label {label} is outside 1..1000"
            in str(err.value))


def test_undecodable_image_and_missing_feature(tmp_path):
    good = _image(COLORS[0])
    recs = [_example({"image/encoded": b"\xff\xd8\xff\xe0 not a jpeg", "image/class/label": [3]}),
            _example({"image/encoded": good[: len(good) // 2], "image/class/label": [3]}),
            _example({"image/class/label": [3]}),
            _example({"image/encoded": good, "image/class/label": b"3"})]
    path = _one_shard(tmp_path, b"".join(_frame(r) for r in recs))
    ds = Ilsvrc12TFRecord(str(tmp_path), "val", image_size=16, augment=False)
    offsets = ds._offsets.tolist()
    for i, what in enumerate(["cannot be decoded", "cannot be decoded",
                              "image/encoded is not one bytes value",
                              "image/class/label is not one int64 value"]):
        with pytest.raises(DataError) as err:
            ds[i]
        assert f"{path}, record at byte offset {offsets[i]}" in str(err.value)
        assert what in str(err.value) and FLAG in str(err.value)


def test_missing_files_name_both_layouts(tmp_path):
    for split in ("train", "val"):
        with pytest.raises(DataError) as err:
            open_ilsvrc12(str(tmp_path), split)
        msg = str(err.value)
        for token in ("train/<class_dir>/*.JPEG", "val/<class_dir>/", "train-00000-of-01024",
                      "validation-00000-of-00128", FLAG, "PocketFlow"):
            assert token in msg, token
    _write_split(tmp_path, "train", 1, 1)
    assert len(open_ilsvrc12(str(tmp_path), "train")) == 1
    with pytest.raises(DataError, match="no val/ folder and no validation-"):
        open_ilsvrc12(str(tmp_path), "val")
    for split in ("train", "val"):                 # folders take precedence
        (tmp_path / split / "n01").mkdir(parents=True)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / split / "n01" / "a.png")
    assert isinstance(open_ilsvrc12(str(tmp_path), "train"), Ilsvrc12)


# -- interoperability and end to end ---------------------------------------------------------
def test_files_written_by_the_tfrecord_package(tmp_path):
    tfrecord = pytest.importorskip("tfrecord", reason="pip install tfrecord (the dev extras)")
    writer = tfrecord.TFRecordWriter(str(tmp_path / "validation-00000-of-00001"))
    for i, color in enumerate(COLORS[:3]):
        writer.write({"image/encoded": (_image(color, fmt="PNG"), "byte"),
                      "image/class/label": (i + 1, "int"),
                      "image/object/bbox/xmin": ([0.25, 0.75], "float")})
    writer.close()
    path = str(tmp_path / "validation-00000-of-00001")
    assert [parse_example(r)["image/object/bbox/xmin"] for r in iter_records(path)] == \
        [[0.25, 0.75]] * 3
    val = open_ilsvrc12(str(tmp_path), "val", image_size=16, augment=False)
    assert len(val) == 3 and [val[i][1] for i in range(3)] == [0, 1, 2]
    for i in range(3):
        assert torch.allclose(val[i][0], _want(COLORS[i]), atol=1e-5)


def test_resnet_entry_on_tfrecord_files(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_split(data, "train", 2, 5, fmt="JPEG")       # 10 images, 2 held out
    _write_split(data, "validation", 1, 4, fmt="JPEG")
    result = finish(start_entry(
        "resnet_at_ilsvrc12_run.py", "--learner=full-prec", "--resnet_size=18", "--image_size=32",
        "--batch_size=2", "--batch_size_eval=2", "--nb_epochs_rat=0.01", f"{FLAG}={data}",
        "--log_dir=", "--report_latency=False", f"--save_path={tmp_path / 'm' / 'model.ckpt'}",
        f"--save_path_eval={tmp_path / 'e' / 'model.ckpt'}", cwd=tmp_path), timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "train step 5/5" in output and "eval accuracy = " in output  # 1 epoch of 10 images
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert 0.0 <= report["accuracy"]["full"] <= 1.0
    assert report["accuracy"]["full"] * 4 == round(report["accuracy"]["full"] * 4)
