"""Paddle's serialized LoDTensor, one variable of a per-variable checkpoint: read and written.

`paddle.static.save_vars` (and `fluid.io.save_persistables`, which calls it) writes each variable
to a file of its own, little-endian:

    u32 version (0)
    u64 lod_level, then per level: u64 nbytes and nbytes of u64 offsets
    u32 tensor version (0)
    i32 desc_size, then a TensorDesc protobuf: field 1 data_type (varint), field 2 dims (int64s)
    the data: prod(dims) * itemsize bytes

Reading checks the whole header, and the exact data size it implies against the size the file
system reports, before it allocates or reads the data: a 1 TB file with a bad header costs a few
small reads. Pure python + numpy.
"""
from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import file_size, read_into
from acnet_convert.common.text import printable

# Paddle's VarType.Type codes (framework.proto) <-> little-endian numpy dtypes.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("?"),  # BOOL
    1: np.dtype("<i2"),  # INT16
    2: np.dtype("<i4"),  # INT32
    3: np.dtype("<i8"),  # INT64
    4: np.dtype("<f2"),  # FP16
    5: np.dtype("<f4"),  # FP32
    6: np.dtype("<f8"),  # FP64
    20: np.dtype("u1"),  # UINT8
    21: np.dtype("i1"),  # INT8
}
_CODES: dict[np.dtype, int] = {dtype: code for code, dtype in _DTYPES.items()}
# Paddle's VarType codes by dtype name, as the legacy ops' dtype attributes take them
VAR_TYPES: dict[str, int] = {dtype.name: code for code, dtype in _DTYPES.items()}
_REFUSED = {22: "bfloat16", 23: "complex64", 24: "complex128"}
# as written: version, LoD level (0), tensor version, descriptor size; the descriptor follows
_HEADER = "<IQIi"

MAX_RANK = 64  # Paddle's DDim holds at most 9; 64 is numpy's own limit
_MAX_LOD_LEVEL = 16  # Paddle uses 0..2 in practice
_MAX_DESC_SIZE = 1 << 16  # a data type and 64 dims take under 1 kB

Data = Union[bytes, bytearray, memoryview]


def data_nbytes(shape: tuple[int, ...] | list[int], itemsize: int, limit: int) -> int:
    """prod(shape) * itemsize, computed only as far as `limit`: a header claiming 2**40 x 2**40
    elements is compared with the bytes at hand without ever building the giant product."""
    if 0 in shape:
        return 0
    n = itemsize
    for d in shape:
        n *= d
        if n > limit:
            return n
    return n


def _bad(name: str, why: str) -> ConvertError:
    return ConvertError(f"{printable(name)}: not a valid Paddle tensor file ({why})")


def _varint(buf: Data, pos: int, name: str) -> tuple[int, int]:
    """One protobuf varint at buf[pos:]: (value as uint64, position after it)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _bad(name, "truncated TensorDesc varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _bad(name, "overlong TensorDesc varint")


def _parse_tensor_desc(desc: Data, name: str) -> tuple[int, list[int]]:
    """TensorDesc {1: varint data_type; 2: repeated int64 dims}; unknown fields are skipped, as
    protobuf does."""
    data_type: int | None = None
    dims: list[int] = []

    def add_dim(raw: int) -> None:
        d = raw - (1 << 64) if raw >= 1 << 63 else raw
        if d < 0:
            raise _bad(name, f"negative dimension {d}")
        if len(dims) >= MAX_RANK:
            raise _bad(name, f"more than {MAX_RANK} dimensions")
        dims.append(d)

    pos, end = 0, len(desc)
    while pos < end:
        key, pos = _varint(desc, pos, name)
        field_no, wire = key >> 3, key & 7
        if field_no == 0:
            raise _bad(name, "TensorDesc field number 0")
        if field_no == 1 and wire == 0:
            data_type, pos = _varint(desc, pos, name)
        elif field_no == 2 and wire == 0:
            raw, pos = _varint(desc, pos, name)
            add_dim(raw)
        elif field_no == 2 and wire == 2:  # packed dims
            n, pos = _varint(desc, pos, name)
            if n > end - pos:
                raise _bad(name, "TensorDesc dims run past the descriptor")
            packed = desc[pos : pos + n]
            pos += n
            sub = 0
            while sub < n:
                raw, sub = _varint(packed, sub, name)
                add_dim(raw)
        elif wire == 0:
            _, pos = _varint(desc, pos, name)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(desc, pos, name)
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise _bad(name, f"TensorDesc has invalid wire type {wire}")
        if pos > end:
            raise _bad(name, "TensorDesc field runs past the descriptor")
    if data_type is None:
        raise _bad(name, "TensorDesc has no data type")
    return data_type, dims


def _parse_header(at: Callable[[int, int], Data], size: int, name: str,
                  exact: bool = True) -> tuple[int, np.dtype, tuple[int, ...]]:
    """Check a LoDTensor's header; return (data offset, dtype, shape).

    `at(pos, n)` returns n bytes at pos of a tensor whose total size is `size` (with `exact`
    False, of the bytes that remain: more tensors may follow); every length in the header is
    checked against `size` before it is used. Messages quote no bytes of a file that fails the
    first checks: a stray text file is refused without being echoed.
    """

    def take(pos: int, n: int, what: str) -> Data:
        if n > size - pos:
            raise _bad(name, f"truncated in the header: no {what}")
        return at(pos, n)

    if struct.unpack("<I", take(0, 4, "version"))[0] != 0:
        raise _bad(name, "its LoDTensor version field is not 0")
    (lod_level,) = struct.unpack("<Q", take(4, 8, "LoD level"))
    if lod_level > _MAX_LOD_LEVEL:
        raise _bad(name, "absurd LoD level")
    pos = 12
    for _ in range(lod_level):  # offsets of sequences: weights have none; checked, never read
        (nbytes,) = struct.unpack("<Q", take(pos, 8, "LoD table"))
        pos += 8
        if nbytes % 8 or nbytes > size - pos:
            raise _bad(name, f"LoD level of {nbytes} bytes does not fit the file")
        pos += nbytes
    if struct.unpack("<I", take(pos, 4, "tensor version"))[0] != 0:
        raise _bad(name, "its tensor version field is not 0")
    (desc_size,) = struct.unpack("<i", take(pos + 4, 4, "descriptor size"))
    pos += 8
    if desc_size < 0 or desc_size > size - pos:
        raise _bad(name, f"descriptor size {desc_size} does not fit the file")
    if desc_size > _MAX_DESC_SIZE:
        raise _bad(name, f"descriptor size {desc_size} is too large for a TensorDesc")
    data_type, dims = _parse_tensor_desc(at(pos, desc_size), name)
    pos += desc_size
    if data_type in _REFUSED:
        raise ConvertError(f"{printable(name)}: {_REFUSED[data_type]} tensors are not supported")
    dtype = _DTYPES.get(data_type)
    if dtype is None:
        raise _bad(name, f"unknown data type code {data_type}")
    have = size - pos
    want = data_nbytes(dims, dtype.itemsize, have)
    if want != have and (exact or want > have):
        shape = "x".join(map(str, dims)) or "scalar"
        if want > have:
            raise _bad(name, f"header says {shape} {dtype.name} but only {have} data bytes follow; truncated?")
        raise _bad(name, f"header says {shape} {dtype.name} ({want} bytes) but {have} data bytes follow; "
                   "trailing garbage?")
    return pos, dtype, tuple(dims)


def _array(buf: Data, offset: int, dtype: np.dtype, shape: tuple[int, ...], name: str, copy: bool) -> np.ndarray:
    try:
        arr = np.frombuffer(buf, dtype=dtype, count=math.prod(shape), offset=offset)
        if dtype.kind == "b":  # bytes other than 0/1 become real booleans
            arr = arr.view(np.uint8) != 0
        elif copy:
            arr = arr.copy()
        arr = arr.reshape(shape)
    except (ValueError, MemoryError, OverflowError) as err:
        raise _bad(name, f"cannot build a {shape} {dtype.name} array: {type(err).__name__}") from None
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def read_lod_tensor(data: Data | BinaryIO, name: str, hasher=None) -> np.ndarray:
    """Parse one serialized LoDTensor: the whole of `data`, or a binary file from its position
    to its end. Returns a writable, C-contiguous array of the stored dtype and shape; a LoD
    table is checked and dropped (weights have none). `name` is used in messages; if `hasher` is
    given, every byte of the tensor is fed to it, in order."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        try:
            data.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            return read_lod_tensor(data.read(), name, hasher)
        return _read_file(data, name, hasher)
    view = memoryview(data)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    offset, dtype, shape = _parse_header(lambda pos, n: view[pos : pos + n], len(view), name)
    if hasher is not None:
        hasher.update(view)
    return _array(view, offset, dtype, shape, name, copy=True)


def _read_file(f: BinaryIO, name: str, hasher=None) -> np.ndarray:
    start, size = f.tell(), file_size(f)

    def at(pos: int, n: int) -> bytes:
        f.seek(start + pos)
        chunk = f.read(n)
        if len(chunk) != n:
            raise ConvertError(f"{printable(name)}: the file shrank while it was being read")
        return chunk

    offset, dtype, shape = _parse_header(at, size, name)
    try:
        buf = bytearray(size - offset)  # exactly the data the header promises, no more
    except MemoryError:
        raise ConvertError(f"{printable(name)}: a tensor of {size - offset} bytes does not fit in memory") from None
    f.seek(start + offset)
    read_into(f, memoryview(buf), name)
    if f.read(1):
        raise ConvertError(f"{printable(name)}: the file grew while it was being read")
    if hasher is not None:
        hasher.update(at(0, offset))
        hasher.update(buf)
    # the array is a view of our private bytearray: writable, and no second copy
    return _array(buf, 0, dtype, shape, name, copy=False)


def combined_headers(read_at: Callable[[int, int], bytes], size: int, name: str) -> Iterator[tuple[np.dtype, tuple[int, ...]]]:
    """(dtype, shape) of each tensor of a combined parameters file (`.pdiparams`: the
    LoDTensors of a program's parameters one after the other), from their headers alone: no
    data is read, and every header is checked against the bytes that remain. `read_at(pos, n)`
    reads n bytes at pos."""
    pos = 0
    while pos < size:
        offset, dtype, shape = _parse_header(lambda at, n: read_at(pos + at, n), size - pos, name, exact=False)
        yield dtype, shape
        pos += offset + data_nbytes(shape, dtype.itemsize, size)


def looks_like_lod_tensor(head: bytes) -> bool:
    """Whether the first 24 bytes of a file look like a LoDTensor (to spot a per-variable
    checkpoint mixed into a folder that holds a .pdparams)."""
    if len(head) < 20:
        return False
    version, lod_level = struct.unpack_from("<IQ", head, 0)
    if version != 0 or lod_level > _MAX_LOD_LEVEL:
        return False
    if lod_level == 0:
        tversion, desc_size = struct.unpack_from("<Ii", head, 12)
        return tversion == 0 and 0 < desc_size < 4096
    return True


# ------------------------------------------------------------------------------------------
# writing


def _encode_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def _header_and_data(array: np.ndarray) -> tuple[bytes, memoryview]:
    arr = np.asarray(array)
    dtype = arr.dtype.newbyteorder("<")  # the file is little-endian whatever the machine
    code = _CODES.get(dtype)
    if code is None:
        raise ValueError(f"Paddle's LoDTensor has no type for {arr.dtype} arrays")
    data = np.require(arr, dtype=dtype, requirements="C").reshape(-1)
    desc = tensor_desc(code, arr.shape)
    header = struct.pack(_HEADER, 0, 0, 0, len(desc)) + desc
    return header, memoryview(data).cast("B")


def tensor_desc(code: int, shape: tuple[int, ...]) -> bytes:
    """The TensorDesc of a tensor of type `code` and `shape`, as a LoDTensor header holds it."""
    # what Paddle's TensorDesc serializer writes: data_type, then each dim unpacked (proto2)
    return b"\x08" + _encode_varint(code) + b"".join(b"\x10" + _encode_varint(d) for d in shape)


def serialized_size(array: np.ndarray) -> int:
    """The length of `lod_tensor_bytes(array)`, without building it (an unknown dtype counts
    as code 0, as a size check needs no more)."""
    arr = np.asarray(array)
    code = _CODES.get(arr.dtype.newbyteorder("<"), 0)
    return struct.calcsize(_HEADER) + len(tensor_desc(code, arr.shape)) + arr.nbytes


def lod_tensor_bytes(array: np.ndarray) -> bytes:
    """`array` serialized as `paddle.static.save_vars` writes it (no LoD)."""
    header, data = _header_and_data(array)
    return header + data.tobytes()


def write_lod_tensor(path: Path | str, array: np.ndarray) -> None:
    """Write `array` to `path` in the per-variable format Paddle's `load_vars` reads."""
    header, data = _header_and_data(array)
    with open(path, "wb") as f:
        f.write(header)
        f.write(data)
