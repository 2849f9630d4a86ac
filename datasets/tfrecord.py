"""TFRecord files and ``tf.train.Example`` records, read without TensorFlow or protobuf.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

``index_records`` lists the records of a file from their 12-byte headers alone (it seeks past
the data), checking each length CRC, a cap on the length (``MAX_RECORD_BYTES``: a crafted length
cannot make a reader allocate gigabytes) and that the record fits in the file. The data CRC
costs about 15 ms per 110 KB image in pure Python (more than decoding the JPEG), so
``read_record`` checks it only when asked (``verify=True``); a corrupted payload is still caught
downstream, by ``parse_example`` or the image decoder. ``parse_example`` decodes the few
protobuf messages of a ``tf.train.Example``. Every failure is a ``DataError`` that names the
file and the record's byte offset.
"""
from __future__ import annotations

import os
import struct
from array import array

import numpy as np

from datasets.errors import data_error

MAX_RECORD_BYTES = 64 << 20
HEADER = 12           # uint64 length + uint32 length CRC
FOOTER = 4            # uint32 data CRC
LAYOUT = ("  TFRecord files: records of uint64 length | uint32 masked crc32c(length) | "
          "data | uint32 masked crc32c(data),\n  each data a serialized tf.train.Example")


def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli) of ``data``, continuing from ``crc``."""
    crc ^= 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: the CRC rotated right by 15 bits plus 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _fail(path, offset, problem, layout):
    return data_error(f"TFRecord file {path}, record at byte offset {offset}: {problem}", layout)


def _pread(fh, size, offset):
    if hasattr(os, "pread"):     # no shared file position: safe in forked DataLoader workers
        return os.pread(fh.fileno(), size, offset)
    fh.seek(offset)
    return fh.read(size)


def index_records(path, max_length=MAX_RECORD_BYTES, layout=LAYOUT):
    """``(offsets, lengths)`` (int64 arrays) of the records of the TFRecord file ``path``.

    Reads only the headers. DataError for an empty file, a truncated header or record, a bad
    length CRC or a length over ``max_length``.
    """
    offsets, lengths = array("q"), array("q")
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise data_error(f"TFRecord file {path} is empty", layout)
        pos = 0
        while pos < size:
            head = _pread(fh, HEADER, pos)
            if len(head) < HEADER:
                raise _fail(path, pos, f"truncated header ({len(head)} of {HEADER} bytes)", layout)
            length, crc = struct.unpack("<QI", head)
            if masked_crc32c(head[:8]) != crc:
                raise _fail(path, pos, "length CRC mismatch (corrupted file)", layout)
            if length > max_length:
                raise _fail(path, pos, f"record length {length} is over the cap of "
                                       f"{max_length} bytes", layout)
            end = pos + HEADER + length + FOOTER
            if end > size:
                raise _fail(path, pos, f"truncated record ({length} data bytes announced, file "
                                       f"ends {size - pos - HEADER} bytes after the header)", layout)
            offsets.append(pos)
            lengths.append(length)
            pos = end
    return np.frombuffer(offsets, dtype=np.int64).copy(), np.frombuffer(lengths, dtype=np.int64).copy()


def read_record(fh, path, offset, length, verify=False, layout=LAYOUT):
    """The data of the record at ``offset`` (of ``length`` bytes, from ``index_records``) of the
    open binary file ``fh``; with ``verify`` its data CRC is checked (slow, see above)."""
    blob = _pread(fh, HEADER + length + FOOTER, offset)
    if len(blob) != HEADER + length + FOOTER:
        raise _fail(path, offset, "truncated record (the file shrank after indexing)", layout)
    if struct.unpack_from("<Q", blob)[0] != length:
        raise _fail(path, offset, "length changed after indexing", layout)
    data = blob[HEADER:HEADER + length]
    if verify and masked_crc32c(data) != struct.unpack_from("<I", blob, HEADER + length)[0]:
        raise _fail(path, offset, "data CRC mismatch (corrupted record)", layout)
    return data


def iter_records(path, verify=True, max_length=MAX_RECORD_BYTES, layout=LAYOUT):
    """Every record's data in ``path``, in order (data CRCs checked by default)."""
    offsets, lengths = index_records(path, max_length, layout)
    with open(path, "rb", buffering=0) as fh:
        for offset, length in zip(offsets.tolist(), lengths.tolist()):
            yield read_record(fh, path, offset, length, verify, layout)


# -- tf.train.Example ----------------------------------------------------------------------------
class _Malformed(Exception):
    pass


def _varint(buf, pos, end):
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("varint runs past its message" if pos >= end else "varint too long")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf, pos, end):
    """``(field number, wire type, value)`` of a message in ``buf[pos:end]``; the value is an
    int (wire types 0, 1, 5) or the (start, stop) of a length-delimited field (wire type 2)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > end:
                raise _Malformed(f"fixed{width * 8} field {number} runs past its message")
            value = int.from_bytes(buf[pos:pos + width], "little")
            pos += width
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _Malformed(f"field {number} of {size} bytes runs past its message")
            value, pos = (pos, pos + size), pos + size
        else:
            raise _Malformed(f"unsupported wire type {wire} (field {number})")
        yield number, wire, value


def _signed64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature(buf, start, stop):
    """The values of a ``Feature`` message: a list of bytes, floats or ints."""
    values = []
    for kind, wire, span in _fields(buf, start, stop):
        if kind not in (1, 2, 3) or wire != 2:
            continue
        values = []                       # oneof: the last list present wins
        for number, vwire, value in _fields(buf, *span):
            if number != 1:
                continue
            if kind == 1 and vwire == 2:                      # BytesList.value
                values.append(bytes(buf[value[0]:value[1]]))
            elif kind == 2 and vwire == 5:                    # FloatList.value, unpacked
                values.append(struct.unpack("<f", value.to_bytes(4, "little"))[0])
            elif kind == 2 and vwire == 2:                    # FloatList.value, packed
                if (value[1] - value[0]) % 4:
                    raise _Malformed("packed float list length is not a multiple of 4")
                values += struct.unpack(f"<{(value[1] - value[0]) // 4}f", buf[value[0]:value[1]])
            elif kind == 3 and vwire == 0:                    # Int64List.value, unpacked
                values.append(_signed64(value))
            elif kind == 3 and vwire == 2:                    # Int64List.value, packed
                pos, end = value
                while pos < end:
                    item, pos = _varint(buf, pos, end)
                    values.append(_signed64(item))
            else:
                raise _Malformed(f"wire type {vwire} does not fit a feature list of kind {kind}")
    return values


def parse_example(data, keys=None, where="a tf.train.Example", layout=LAYOUT):
    """``{feature name: list of bytes | floats | ints}`` of a serialized ``tf.train.Example``.

    With ``keys`` only those features are decoded (the others are skipped). DataError
    (naming ``where``) when the message is malformed.
    """
    buf = memoryview(data)
    found = {}
    try:
        for number, wire, span in _fields(buf, 0, len(buf)):
            if number != 1 or wire != 2:                       # Example.features
                continue
            for fnum, fwire, entry in _fields(buf, *span):
                if fnum != 1 or fwire != 2:                    # Features.feature (map entry)
                    continue
                name, value = None, (0, 0)
                for enum, ewire, espan in _fields(buf, *entry):
                    if enum == 1 and ewire == 2:
                        name = bytes(buf[espan[0]:espan[1]]).decode("utf-8")
                    elif enum == 2 and ewire == 2:
                        value = espan
                if name is not None and (keys is None or name in keys):
                    found[name] = _feature(buf, *value)
    except (_Malformed, UnicodeDecodeError, struct.error) as err:
        raise data_error(f"{where} is not a valid tf.train.Example ({err})", layout) from None
    return found
