"""Checkpoint readers: Paddle per-variable directories and `.pdparams` pickles (DESIGN.md section 1).

Pure python + numpy: this module never imports paddle, so `inspect` answers quickly.

Two container formats, both given as a directory CKPT/:

* per-variable: every regular file is one variable, named by the variable, holding one
  serialized LoDTensor (written by `fluid.io.save_persistables` / `paddle.static.save_vars`);
* pickle: exactly one `*.pdparams` file (written by `paddle.static.save`, `fluid.save` or
  `paddle.save(dict)`), read with a restricted unpickler that builds numpy arrays and nothing
  else. Sibling `*.pdopt` / `*.pdmodel` files are not read.

Every bad input raises ConvertError with a one-line message naming the file and/or tensor.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from .errors import ConvertError

__all__ = [
    "Checkpoint",
    "read_checkpoint",
    "read_lod_tensor",
    "load_pickle",
    "is_training_state",
]

PER_VARIABLE = "per-variable"
PDPARAMS = "pdparams"

_CHUNK = 1 << 20


@dataclass
class Checkpoint:
    path: Path  # the CKPT directory, as given
    format: str  # "per-variable" | "pdparams"
    tensors: dict[str, np.ndarray]  # everything that is not training state
    ignored: list[str]  # names of non-weight variables (optimizer / LR state), sorted
    sha256: str  # over the files of the checkpoint, see _hash_header
    files: list[Path] = field(default_factory=list)  # files that make up the checkpoint, sorted


# --------------------------------------------------------------------------------------------
# training state

_TRAINING_STATE_RE = re.compile(
    r"(?:"
    r"_velocity_\d+"  # Momentum
    r"|_moment1_\d+|_moment2_\d+|_moment2_max_\d+"  # Adam / AdamW / Lamb (+ amsgrad)
    r"|_beta1_pow_acc_\d+|_beta2_pow_acc_\d+"  # Adam family
    r"|_moment_\d+"  # Adagrad / DecayedAdagrad / Momentum variants
    r"|_mean_square_\d+|_mean_grad_\d+"  # RMSProp
    r"|_inf_norm_\d+"  # Adamax
    r"|_avg_squared_grad_\d+|_avg_squared_update_\d+"  # Adadelta
    r"|_fp32_master_\d+"  # multi-precision master weights
    r")$"
    r"|^learning_rate_\d+$"  # LR variables
)


def is_training_state(name: str) -> bool:
    """True for optimizer and LR-scheduler variables (not weights).

    `*_velocity_N`, `*_moment1_N`, `*_moment2_N`, `*_beta1_pow_acc_N`, `*_beta2_pow_acc_N`,
    a few other optimizers' accumulators, `learning_rate_N`, and any name containing `@`
    (`@LR_DECAY_COUNTER@`, gradient / internal variables).
    """
    return "@" in name or _TRAINING_STATE_RE.search(name) is not None


# --------------------------------------------------------------------------------------------
# per-variable LoDTensor files

# Paddle's VarType.Type codes (framework.proto) -> little-endian numpy dtype.
_VARTYPE_DTYPES: dict[int, np.dtype] = {
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
_VARTYPE_REFUSED = {22: "bfloat16", 23: "complex64", 24: "complex128"}

_MAX_LOD_LEVEL = 16  # Paddle uses 0..2 in practice; 16 is far beyond anything real
_MAX_RANK = 64  # Paddle's DDim supports at most 9


def _bad(name: str, why: str) -> ConvertError:
    return ConvertError(f"{name}: not a valid Paddle tensor file ({why})")


def _u32(buf: memoryview, pos: int, end: int, name: str, what: str) -> tuple[int, int]:
    if pos + 4 > end:
        raise _bad(name, f"truncated in the header: no {what}")
    return struct.unpack_from("<I", buf, pos)[0], pos + 4


def _varint(buf: memoryview, pos: int, end: int, name: str) -> tuple[int, int]:
    """Decode one protobuf varint in buf[pos:end]; returns (value as uint64, new pos)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _bad(name, "truncated TensorDesc varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _bad(name, "overlong TensorDesc varint")


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_tensor_desc(buf: memoryview, pos: int, end: int, name: str) -> tuple[int, list[int]]:
    """Parse a TensorDesc message {1: varint data_type; 2: repeated int64 dims}."""
    data_type: int | None = None
    dims: list[int] = []

    def add_dim(raw: int) -> None:
        d = _int64(raw)
        if d < 0:
            raise _bad(name, f"negative dimension {d}")
        if len(dims) >= _MAX_RANK:
            raise _bad(name, f"more than {_MAX_RANK} dimensions")
        dims.append(d)

    while pos < end:
        key, pos = _varint(buf, pos, end, name)
        field_no, wire = key >> 3, key & 7
        if field_no == 0:
            raise _bad(name, "TensorDesc field number 0")
        if field_no == 1 and wire == 0:
            data_type, pos = _varint(buf, pos, end, name)
        elif field_no == 2 and wire == 0:
            raw, pos = _varint(buf, pos, end, name)
            add_dim(raw)
        elif field_no == 2 and wire == 2:  # packed dims
            n, pos = _varint(buf, pos, end, name)
            if n > end - pos:
                raise _bad(name, "TensorDesc dims run past the descriptor")
            sub_end = pos + n
            while pos < sub_end:
                raw, pos = _varint(buf, pos, sub_end, name)
                add_dim(raw)
        elif wire == 0:  # unknown fields are skipped, as protobuf does
            _, pos = _varint(buf, pos, end, name)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos, end, name)
            if n > end - pos:
                raise _bad(name, "TensorDesc field runs past the descriptor")
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


def _parse_lod_header(buf: memoryview, name: str) -> tuple[int, np.dtype, tuple[int, ...]]:
    """Validate a serialized LoDTensor held in buf; return (data offset, dtype, shape).

    Checks everything against len(buf) before anything is allocated: the data that follows the
    header must be exactly prod(dims) * itemsize bytes.
    """
    end = len(buf)
    version, pos = _u32(buf, 0, end, name, "version")
    if version != 0:
        raise _bad(name, f"LoDTensor version {version}, expected 0")
    if pos + 8 > end:
        raise _bad(name, "truncated in the header: no LoD level")
    (lod_level,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    if lod_level > _MAX_LOD_LEVEL:
        raise _bad(name, f"absurd LoD level {lod_level}")
    for _ in range(lod_level):
        if pos + 8 > end:
            raise _bad(name, "truncated in the LoD table")
        (nbytes,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        if nbytes % 8 or nbytes > end - pos:
            raise _bad(name, f"LoD level of {nbytes} bytes does not fit the file")
        pos += nbytes
    tversion, pos = _u32(buf, pos, end, name, "tensor version")
    if tversion != 0:
        raise _bad(name, f"tensor version {tversion}, expected 0")
    if pos + 4 > end:
        raise _bad(name, "truncated in the header: no descriptor size")
    (desc_size,) = struct.unpack_from("<i", buf, pos)
    pos += 4
    if desc_size < 0 or desc_size > end - pos:
        raise _bad(name, f"descriptor size {desc_size} does not fit the file")
    data_type, dims = _parse_tensor_desc(buf, pos, pos + desc_size, name)
    pos += desc_size
    if data_type in _VARTYPE_REFUSED:
        raise ConvertError(f"{name}: {_VARTYPE_REFUSED[data_type]} tensors are not supported")
    dtype = _VARTYPE_DTYPES.get(data_type)
    if dtype is None:
        raise _bad(name, f"unknown data type code {data_type}")
    have = end - pos
    if 0 in dims:
        count = 0
    else:
        count = 1
        for d in dims:  # stop early: a header claiming 2**40 x 2**40 never builds a huge int
            count *= d
            if count * dtype.itemsize > have:
                break
    want = count * dtype.itemsize
    if want != have:
        shape = "x".join(map(str, dims)) or "scalar"
        if want > have:
            raise _bad(name, f"header says {shape} {dtype.name} but only {have} data bytes follow;"
                       " truncated?")
        raise _bad(name, f"header says {shape} {dtype.name} ({want} bytes) but {have} data bytes"
                   " follow; trailing garbage?")
    return pos, dtype, tuple(dims)


def _array_from(buf, offset: int, dtype: np.dtype, shape: tuple[int, ...], name: str,
                copy: bool) -> np.ndarray:
    count = math.prod(shape)
    try:
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
        if dtype.kind == "b":  # normalise bytes other than 0/1 to real booleans
            arr = arr.view(np.uint8) != 0
        elif copy:
            arr = arr.copy()
        arr = arr.reshape(shape)
    except (ValueError, MemoryError) as e:
        raise _bad(name, f"cannot build a {shape} {dtype.name} array: {_oneline(e)}") from None
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _read_file_into_bytearray(f, name: str) -> bytearray:
    """Read the rest of an open binary file into a bytearray sized by fstat (no over-allocation)."""
    size = os.fstat(f.fileno()).st_size - f.tell()
    buf = bytearray(max(size, 0))
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(view[got:])
        if not n:
            raise ConvertError(f"{name}: file shrank while it was being read")
        got += n
    view.release()
    if f.read(1):
        raise ConvertError(f"{name}: file grew while it was being read")
    return buf


def read_lod_tensor(data: Union[bytes, bytearray, memoryview, BinaryIO], name: str) -> np.ndarray:
    """Parse one serialized LoDTensor (the whole of `data`, or the rest of a binary file).

    Returns a writable, C-contiguous array of the stored dtype and shape. The LoD table, if any,
    is validated and dropped (weights have none). `name` is used in error messages.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        with memoryview(data) as mv:
            view = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
            offset, dtype, shape = _parse_lod_header(view, name)
            return _array_from(view, offset, dtype, shape, name, copy=True)
    try:
        buf = _read_file_into_bytearray(data, name)
    except (AttributeError, io.UnsupportedOperation, OSError):
        try:
            raw = data.read()
        except OSError as e:
            raise ConvertError(f"{name}: cannot read: {_oneline(e)}") from None
        if not isinstance(raw, (bytes, bytearray)):
            raise TypeError("read_lod_tensor needs bytes or a binary file")
        return read_lod_tensor(raw, name)
    offset, dtype, shape = _parse_lod_header(memoryview(buf), name)
    # the array owns (a view of) our private bytearray: no copy, writable
    return _array_from(buf, offset, dtype, shape, name, copy=False)


# --------------------------------------------------------------------------------------------
# restricted unpickler
#
# What Paddle's writers put into a .pdparams pickle (checked with pickletools on files written
# by Paddle 3.3.1 / numpy 2.4):
#   * paddle.static.save(program, prefix)  (PIR off; also fluid.save) and
#     paddle.save(layer.state_dict(), path) (dygraph, PIR on), protocol 4:
#       a dict {name: ndarray}; globals numpy._core.multiarray._reconstruct, numpy.ndarray,
#       numpy.dtype. paddle.save of a state_dict adds the key "StructuredToParameterName@@"
#       (dict structured name -> parameter name).
#   * the same with protocol=2 additionally reference _codecs.encode (bytes are pickled as
#     _codecs.encode(str, "latin1")); numpy 1.x writes numpy.core.* instead of numpy._core.*.
#   * paddle.save of objects that are not a flat state dict (nested dicts, lists, a bare
#     Tensor) pickles each Tensor with a reducer as (builtins.tuple, ((name, ndarray),)), and
#     each static-mode DenseTensor as (builtins.eval, ("data", {"data": ndarray})).
#   * protocol 2/3 pickles split tensors over 1 GiB into "NAME@@.i" slices described by the
#     key "UnpackBigParamInfor@@".
#   * numpy scalars use numpy._core.multiarray.scalar; pickle protocol 5 (the default from
#     Python 3.14) uses numpy._core.numeric._frombuffer.
#
# find_class never returns a real callable that could act on the outside world. Each admitted
# global maps to a stand-in defined here that accepts only the argument shapes numpy / Paddle
# produce, validates them, and builds the object itself:
#   numpy.ndarray          -> a non-callable marker, accepted only as _reconstruct's subtype
#   _reconstruct           -> always np.ndarray((0,), "b"), like numpy's own pickles; the real
#                             data arrives through BUILD (ndarray.__setstate__), which only
#                             ever gets a state rebuilt from validated values: numeric dtype,
#                             bytes payload of the exact size the shape needs (so no object
#                             arrays, no huge allocations)
#   numpy.dtype            -> only plain numeric type codes; returns a pure-python record
#                             (_DtypeSpec) whose BUILD may only set the byte order; arrays get
#                             numpy's canonical descriptor resolved from it. numpy's own
#                             dtype.__setstate__ is never called: it segfaults on some
#                             malformed states (found by fuzzing this module)
#   scalar, _frombuffer    -> validated numeric dtype + exact-size buffer
#   _codecs.encode         -> only (str, "latin1"), i.e. str.encode("latin1")
#   collections.OrderedDict-> plain dict (no args needed: items arrive through SETITEMS)
#   builtins.tuple         -> only tuple(a tuple or list): Paddle's Tensor reducer; nothing
#                             is iterated but an already-built list/tuple
#   builtins.eval          -> NEVER evaluates anything: accepts only the literal call
#                             eval("data", {"data": ndarray}) that Paddle's DenseTensor
#                             reducer writes and returns that ndarray
# Everything else is refused: "refusing to load PATH: it references MODULE.NAME".
# We use pickle's pure-python Unpickler so that BUILD can be checked and so that length
# prefixes are bounded by the real file size before anything is allocated (the C unpickler
# allocates whatever a BINBYTES8 header claims).

_NUMERIC_CODES = frozenset(
    ["b1", "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]
)
_SAFE_KINDS = frozenset("biufc")


class _Refused(Exception):
    """A pickle that is well-formed but not made of numpy arrays (turned into ConvertError)."""


class _NdarrayMarker:
    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


class _DtypeSpec:
    """What the pickle gets for numpy.dtype(code, align, copy): a plain record, not a numpy
    object. numpy's own dtype.__setstate__ crashes the interpreter (SIGSEGV) on some malformed
    states (found by fuzzing), so it is never called: BUILD may only set the byte order, in
    exactly the state numpy writes for numeric dtypes, (3, "<", None, None, None, -1, -1, 0)."""

    __slots__ = ("code", "byteorder")

    def __init__(self, code: str):
        self.code = code
        self.byteorder = "="

    def build(self, state) -> None:
        if (type(state) is not tuple or len(state) != 8 or type(state[0]) is not int
                or state[0] != 3 or type(state[1]) is not str or state[1] not in ("<", ">", "|", "=")
                or state[2:5] != (None, None, None)
                or any(type(x) is not int for x in state[5:])
                or state[5:] != (-1, -1, 0)):
            raise _Refused("a malformed numpy.dtype state")
        self.byteorder = state[1]


def _check_dtype(spec) -> np.dtype:
    """Resolve a dtype from the pickle to numpy's canonical descriptor (np.dtype("<f4") etc.).

    Arrays only ever get canonical descriptors, which no pickle opcode can reach: a later
    BUILD on the pickle's dtype object cannot alter an array already built with it.
    """
    if type(spec) is not _DtypeSpec:
        raise _Refused(f"a {type(spec).__name__} where a numpy.dtype belongs")
    dt = np.dtype(spec.code)
    if spec.byteorder in ("<", ">") and dt.itemsize > 1:
        dt = dt.newbyteorder(spec.byteorder)
    dt = np.dtype(dt.str)
    if dt.kind not in _SAFE_KINDS or dt.fields is not None or dt.hasobject:  # pragma: no cover
        raise _Refused(f"an array of dtype {dt.str} (only numeric arrays are allowed)")
    return dt


def _as_bytes(data, what: str):
    if isinstance(data, str):  # pickles written by Python 2 and read with encoding="latin1"
        try:
            return data.encode("latin1")
        except UnicodeEncodeError:
            raise _Refused(f"non-latin1 text as {what}") from None
    if isinstance(data, (bytes, bytearray)):
        return data
    raise _Refused(f"a {type(data).__name__} as {what}")


def _shape_of(shape) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list)) or len(shape) > _MAX_RANK:
        raise _Refused("a malformed array shape")
    out = []
    for d in shape:
        if type(d) is not int or d < 0:
            raise _Refused("a malformed array shape")
        out.append(d)
    return tuple(out)


def _nbytes(shape: tuple[int, ...], dt: np.dtype, have: int) -> int:
    """prod(shape) * itemsize, stopping early once it exceeds `have` (avoids giant ints)."""
    if 0 in shape:
        return 0
    n = dt.itemsize
    for d in shape:
        n *= d
        if n > have:
            return n
    return n


def _sc_reconstruct(subtype, shape, dtype_code):
    if (subtype is not _NDARRAY or type(shape) is not tuple or len(shape) != 1
            or type(shape[0]) is not int or shape[0] != 0
            or type(dtype_code) not in (bytes, str) or dtype_code not in (b"b", "b")):
        raise _Refused("numpy _reconstruct with unexpected arguments")
    return np.ndarray((0,), np.dtype("b"))


def _sc_dtype(code, align=False, copy=False):
    if (type(code) is not str or code not in _NUMERIC_CODES or type(align) not in (bool, int)
            or align not in (0, 1)):
        raise _Refused(f"numpy.dtype({_safe_repr(code)}) (only numeric dtypes are allowed)")
    return _DtypeSpec(code)


def _sc_scalar(dt, data):
    dt = _check_dtype(dt)
    raw = _as_bytes(data, "numpy scalar data")
    if len(raw) != dt.itemsize:
        raise _Refused("a numpy scalar of the wrong size")
    return np.frombuffer(raw, dtype=dt, count=1)[0]


def _sc_frombuffer(buf, dt, shape, order="C"):
    dt = _check_dtype(dt)
    raw = _as_bytes(buf, "array data")
    shape = _shape_of(shape)
    if type(order) is not str or order not in ("C", "F") or _nbytes(shape, dt, len(raw)) != len(raw):
        raise _Refused("array data that does not match its shape")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=order)


def _sc_codecs_encode(obj, encoding="utf-8", errors="strict"):
    if (type(obj) is not str or type(encoding) is not str or type(errors) is not str
            or encoding not in ("latin1", "latin-1") or errors != "strict"):
        raise _Refused("_codecs.encode with unexpected arguments")
    try:
        return obj.encode("latin1")
    except UnicodeEncodeError:
        raise _Refused("_codecs.encode of non-latin1 text") from None


_BIG_STR = 1 << 16


def _sc_ordered_dict(*args, **kwargs):
    if args or kwargs:
        raise _Refused("collections.OrderedDict with arguments")
    return {}


def _sc_tuple(seq=()):
    if type(seq) not in (tuple, list):
        raise _Refused(f"builtins.tuple of a {type(seq).__name__}")
    return tuple(seq)


def _sc_eval(expr, env=None, *rest):
    # Paddle's DenseTensor reducer: (eval, ("data", {"data": ndarray})). Never evaluated.
    if (type(expr) is not str or expr != "data" or rest or type(env) is not dict
            or list(env) != ["data"] or type(env["data"]) is not np.ndarray):
        raise _Refused("builtins.eval (only Paddle's eval('data', {'data': array}) is allowed)")
    return env["data"]


_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _sc_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _sc_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _sc_dtype,
    ("numpy.core.multiarray", "scalar"): _sc_scalar,
    ("numpy._core.multiarray", "scalar"): _sc_scalar,
    ("numpy.core.numeric", "_frombuffer"): _sc_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _sc_frombuffer,
    ("_codecs", "encode"): _sc_codecs_encode,
    ("collections", "OrderedDict"): _sc_ordered_dict,
    ("builtins", "tuple"): _sc_tuple,
    ("builtins", "eval"): _sc_eval,
}
# names Python 2 / protocol < 3 pickles use for the same objects
_PY2_NAMES = {
    ("__builtin__", "tuple"): ("builtins", "tuple"),
    ("__builtin__", "eval"): ("builtins", "eval"),
    ("copy_reg", "OrderedDict"): ("collections", "OrderedDict"),
}


class _BoundedReader:
    """File wrapper for the unpickler: never asks the OS for more bytes than the file holds
    (a length prefix claiming 2**60 bytes must not allocate), raises on a short read, and
    feeds every byte it hands out to the checkpoint hash."""

    def __init__(self, f, size: int, hasher=None):
        self._f = f
        self.remaining = size
        self._hasher = hasher

    def _took(self, data) -> None:
        self.remaining -= len(data)
        if self._hasher is not None:
            self._hasher.update(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.remaining
        if n > self.remaining:
            if n > 1:
                raise _Truncated()
            n = self.remaining
        data = self._f.read(n)
        if len(data) != n:
            raise _Truncated()
        self._took(data)
        return data

    def readinto(self, b: bytearray) -> None:
        n = len(b)
        if n > self.remaining:
            raise _Truncated()
        with memoryview(b) as view:
            got = 0
            while got < n:
                k = self._f.readinto(view[got:])
                if not k:
                    raise _Truncated()
                got += k
            self._took(view)

    def readline(self) -> bytes:
        data = self._f.readline(self.remaining)
        self._took(data)
        return data


class _Truncated(Exception):
    pass


class _RefusedGlobal(Exception):
    """The pickle names a global outside the allow-list (the message is MODULE.NAME)."""


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """pickle's pure-python Unpickler with find_class / BUILD / BYTEARRAY8 restricted."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, reader: _BoundedReader, size: int):
        super().__init__(reader, encoding="latin1")  # as paddle.load: Python 2 pickles load
        self._reader = reader
        self._size = size
        self._big_strs: dict[int, list[int]] = {}  # id(large str) -> memo indices holding it
        self._dropped = 0  # memo entries deleted (MEMOIZE numbers entries by memo size)

    # Protocol-2 pickles carry array data as _codecs.encode(<latin-1 str>, "latin1"), and
    # memoize both the str and the (str, "latin1") args tuple: the memo would keep a second
    # copy of all the data alive until the end. So the memo indices holding a large str are
    # remembered and dropped once encode has consumed it. A real pickle never refers back to
    # them: the pickler memoizes the resulting bytes object and refers to that instead.
    def _memoize(self, idx: int) -> None:
        if idx < 0:
            raise ValueError("negative memo index")
        obj = self.stack[-1]
        self.memo[idx] = obj
        if type(obj) is str and len(obj) >= _BIG_STR:
            self._big_strs.setdefault(id(obj), []).append(idx)
        elif type(obj) is tuple and 0 < len(obj) <= 3:
            for item in obj:
                if type(item) is str and id(item) in self._big_strs:
                    self._big_strs[id(item)].append(idx)

    def load_binput(self):
        self._memoize(self.read(1)[0])

    def load_long_binput(self):
        self._memoize(struct.unpack("<I", self.read(4))[0])

    def load_memoize(self):
        self._memoize(len(self.memo) + self._dropped)

    def load_put(self):
        self._memoize(int(self.readline()[:-1]))

    dispatch[pickle.BINPUT[0]] = load_binput
    dispatch[pickle.LONG_BINPUT[0]] = load_long_binput
    dispatch[pickle.MEMOIZE[0]] = load_memoize
    dispatch[pickle.PUT[0]] = load_put

    def _codecs_encode(self, obj, encoding="utf-8", errors="strict"):
        data = _sc_codecs_encode(obj, encoding, errors)
        for idx in self._big_strs.pop(id(obj), ()):
            held = self.memo.get(idx)
            if held is obj or (type(held) is tuple and any(x is obj for x in held)):
                del self.memo[idx]
                self._dropped += 1
        return data

    def find_class(self, module: str, name: str):
        key = (module, name)
        if self.proto < 3:
            key = _PY2_NAMES.get(key, key)
        stand_in = _ADMITTED.get(key)
        if stand_in is None:
            raise _RefusedGlobal(f"{module}.{name}")
        if stand_in is _sc_codecs_encode:
            return self._codecs_encode
        return stand_in

    def persistent_load(self, pid):
        raise _Refused("a persistent id")

    def load_build(self):
        stack = self.stack
        state = stack.pop()
        inst = stack[-1]
        if type(inst) is np.ndarray:
            inst.__setstate__(_check_array_state(state))
        elif type(inst) is _DtypeSpec:
            inst.build(state)
        else:
            raise _Refused(f"BUILD of a {type(inst).__name__}")

    dispatch[pickle.BUILD[0]] = load_build

    def load_bytearray8(self):
        # bounded by the file size before allocating; read straight into the bytearray (the
        # stock implementation reads a bytes object and copies it: two copies of the tensor)
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise _Truncated()
        b = bytearray(n)
        frame = self._unframer.current_frame
        got = frame.readinto(b) if frame is not None else 0
        if frame is None or (got == 0 and n):
            self._unframer.current_frame = None
            self._reader.readinto(b)
        elif got < n:
            raise pickle.UnpicklingError("pickle exhausted before end of frame")
        self.append(b)

    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _check_array_state(state) -> tuple:
    """Validate an ndarray.__setstate__ argument (version, shape, dtype, is_fortran, rawdata)
    and rebuild it from clean values, in the exact form numpy itself writes (numpy's C code
    is not hardened against arbitrary states)."""
    if type(state) is not tuple or len(state) not in (4, 5):
        raise _Refused("a malformed array state")
    if len(state) == 5 and (type(state[0]) is not int or state[0] != 1):
        raise _Refused("a malformed array state")
    shape, spec, is_fortran, raw = state[-4:]
    shape = _shape_of(shape)
    dt = _check_dtype(spec)
    if type(is_fortran) not in (bool, int) or is_fortran not in (0, 1):
        raise _Refused("a malformed array state")
    if type(raw) is str:  # Python 2 pickles read with encoding="latin1"
        try:
            raw = raw.encode("latin1")
        except UnicodeEncodeError:
            raise _Refused("non-latin1 text as array data") from None
    elif type(raw) is bytearray:
        raw = bytes(raw)
    elif type(raw) is not bytes:
        raise _Refused(f"array data as a {type(raw).__name__}")  # object arrays pickle a list
    if _nbytes(shape, dt, len(raw)) != len(raw):
        raise _Refused("array data that does not match its shape")
    return (1, shape, dt, bool(is_fortran), raw)


_STRUCTURED_KEY = "StructuredToParameterName@@"
_BIG_PARAM_KEY = "UnpackBigParamInfor@@"


def _open_regular(path: Path, buffering: int = 0):
    try:
        f = open(path, "rb", buffering=buffering)
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or _oneline(e)}") from None
    return f


def load_pickle(path: Path, hasher=None) -> dict[str, np.ndarray]:
    """Load a `.pdparams` pickle as {name: ndarray}, admitting only numpy arrays.

    Applies Paddle's conventions: "StructuredToParameterName@@" renames structured names to
    parameter names; "UnpackBigParamInfor@@" reassembles split tensors; (name, array) tuples
    from Paddle's Tensor reducer become arrays (under their dict key). Arrays are writable,
    native-endian and C-contiguous. If `hasher` is given, every byte of the file is fed to it.
    """
    path = Path(path)
    return _normalise_pickled(_unpickle(path, hasher), path)


def _unpickle(path: Path, hasher=None):
    """Run the restricted unpickler over the whole file; returns the raw unpickled object."""
    with _open_regular(path, buffering=-1) as f:
        size = os.fstat(f.fileno()).st_size
        reader = _BoundedReader(f, size, hasher)
        unpickler = _RestrictedUnpickler(reader, size)
        try:
            obj = unpickler.load()
            if reader.remaining:
                raise ConvertError(f"{path}: {reader.remaining} bytes of trailing data after the"
                                   " pickle; corrupt .pdparams?")
        except ConvertError:
            raise
        except _RefusedGlobal as e:
            raise ConvertError(f"refusing to load {path}: it references {_safe_text(str(e))} "
                               "(only numpy arrays are allowed)") from None
        except _Refused as e:
            raise ConvertError(f"refusing to load {path}: it contains {e} (only numpy arrays are"
                               " allowed)") from None
        except _Truncated:
            raise ConvertError(f"{path}: truncated pickle (the file ends early)") from None
        except EOFError:
            raise ConvertError(f"{path}: empty or truncated pickle") from None
        except RecursionError:
            raise ConvertError(f"{path}: pickle nested too deeply") from None
        except MemoryError:
            raise ConvertError(f"{path}: pickle too large to load") from None
        except Exception as e:  # noqa: BLE001 - any failure of a hostile/corrupt stream
            raise ConvertError(f"{path}: not a valid .pdparams pickle ({type(e).__name__}: "
                               f"{_oneline(e)})") from None
        finally:
            unpickler.memo.clear()
            unpickler.stack = []
            unpickler.metastack = []
    return obj


def _normalise_pickled(obj, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: expected a dict of arrays at the top level, found a "
                           f"{type(obj).__name__}")
    mapping = obj.pop(_STRUCTURED_KEY, None)
    big = obj.pop(_BIG_PARAM_KEY, None)
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ConvertError(f"{path}: a key of type {type(key).__name__} (expected tensor"
                               " names)")
        if (type(value) is tuple and len(value) == 2 and isinstance(value[0], str)
                and type(value[1]) is np.ndarray):
            value = value[1]  # Paddle's Tensor reducer: (tensor name, array); keep the dict key
        elif isinstance(value, np.generic):
            value = np.asarray(value)
        if type(value) is not np.ndarray:
            kind = "numpy.dtype" if type(value) is _DtypeSpec else type(value).__name__
            raise ConvertError(f"{path}: tensor '{key}' is a {kind}, expected a numpy array")
        out[key] = value
    del obj
    if big is not None:
        _join_big_params(out, big, path)
    if mapping is not None:
        out = _rename_structured(out, mapping, path)
    for key, value in out.items():
        out[key] = _own(value)
    return out


def _own(a: np.ndarray) -> np.ndarray:
    """Writable, native-endian, C-contiguous. numpy's unpickling leaves arrays backed by the
    pickled bytes object (no copy, which keeps peak memory at one copy of the data); small
    ones are copied, because CPython shares tiny bytes objects and they must never be written.
    """
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    if isinstance(a.base, bytes) and a.nbytes < _CHUNK:
        return a.copy()
    if not (a.flags.c_contiguous and a.flags.writeable):
        return np.array(a, order="C", copy=True)
    return a


def _join_big_params(out: dict, big, path: Path) -> None:
    if not isinstance(big, dict):
        raise ConvertError(f"{path}: malformed {_BIG_PARAM_KEY}")
    for name, info in big.items():
        try:
            shape = _shape_of(tuple(info["OriginShape"]))
            parts = [out.pop(p) for p in info["slices"]]
            joined = np.concatenate([p.reshape(-1) for p in parts]).reshape(shape)
        except ConvertError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ConvertError(f"{path}: cannot reassemble split tensor '{name}' "
                               f"({type(e).__name__}: {_oneline(e)})") from None
        if not isinstance(name, str):
            raise ConvertError(f"{path}: malformed {_BIG_PARAM_KEY}")
        out[name] = joined


def _rename_structured(out: dict[str, np.ndarray], mapping, path: Path) -> dict[str, np.ndarray]:
    if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ConvertError(f"{path}: malformed {_STRUCTURED_KEY} (expected names -> names)")
    renamed: dict[str, np.ndarray] = {}
    for key, value in out.items():
        new = mapping.get(key, key)
        if new in renamed:
            raise ConvertError(f"{path}: two tensors map to the parameter name '{new}'")
        renamed[new] = value
    return renamed


# --------------------------------------------------------------------------------------------
# directories

# files that sit next to checkpoints but are not variables of a per-variable checkpoint
_NOT_A_VARIABLE_SUFFIXES = (".pdopt", ".pdmodel", ".pdiparams", ".pdiparams.info", ".json",
                            ".onnx", ".txt", ".log", ".md", ".yaml", ".yml", ".npy", ".npz")


def _hash_header(hasher, rel: str, size: int) -> None:
    """Files are hashed in sorted name order as: name (utf-8) NUL size (u64 LE) bytes."""
    hasher.update(os.fsencode(rel) + b"\0" + struct.pack("<Q", size))


def _hash_file(hasher, path: Path, rel: str) -> None:
    with _open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        _hash_header(hasher, rel, size)
        buf = bytearray(min(_CHUNK, size))
        view = memoryview(buf)
        left = size
        while left:
            n = f.readinto(view[: min(len(buf), left)])
            if not n:
                raise ConvertError(f"{path}: file shrank while it was being read")
            hasher.update(view[:n])
            left -= n
        view.release()


def _looks_like_lod_tensor(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError:
        return False
    if len(head) < 20:
        return False
    version, lod_level = struct.unpack_from("<IQ", head, 0)
    if version != 0 or lod_level > _MAX_LOD_LEVEL:
        return False
    if lod_level == 0:
        tversion, desc_size = struct.unpack_from("<Ii", head, 12)
        return tversion == 0 and 0 < desc_size < 4096
    return True


def _list_dir(path: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(path), key=lambda e: e.name)
    except OSError as e:
        raise ConvertError(f"cannot list {path}: {e.strerror or _oneline(e)}") from None
    files = []
    for e in entries:
        if e.name.startswith("."):  # .DS_Store, editor droppings: never Paddle variables
            continue
        try:
            if e.is_file():  # follows symlinks; sub-directories are not variables
                files.append(path / e.name)
        except OSError:
            continue
    return files


class _NoDigest:
    """Stands in for a hasher when the caller does not need the checkpoint's sha256."""

    def update(self, data) -> None:
        pass

    def hexdigest(self) -> str:
        return ""


def read_checkpoint(path: Union[str, Path], digest: bool = True) -> Checkpoint:
    """Read a checkpoint directory in either format (DESIGN.md section 1). With
    `digest=False` the sha256 is left empty and training-state files are not even read,
    which is what `inspect` wants."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if not path.is_dir():
        raise ConvertError(f"{path} is a file, expected a checkpoint directory")
    files = _list_dir(path)
    if not files:
        raise ConvertError(f"{path} is empty")
    pdparams = [f for f in files if f.name.endswith(".pdparams")]
    if len(pdparams) > 1:
        names = ", ".join(f.name for f in pdparams)
        raise ConvertError(f"{path} holds {len(pdparams)} .pdparams files ({names}); which one? "
                           "Put the one to convert in a directory of its own")
    if pdparams:
        return _read_pickle_dir(path, pdparams[0], files, digest)
    return _read_per_variable_dir(path, files, digest)


def _read_pickle_dir(path: Path, pdparams: Path, files: list[Path], digest: bool) -> Checkpoint:
    others = [f for f in files if f != pdparams and not f.name.endswith(_NOT_A_VARIABLE_SUFFIXES)
              and _looks_like_lod_tensor(f)]
    if others:
        raise ConvertError(f"{path}: two checkpoint formats in one directory: {pdparams.name} and "
                           f"per-variable tensor files ({_preview(f.name for f in others)})")
    hasher = hashlib.sha256() if digest else _NoDigest()
    _hash_header(hasher, pdparams.name, os.stat(pdparams).st_size)
    loaded = load_pickle(pdparams, hasher)
    tensors: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for name in list(loaded):
        arr = loaded.pop(name)
        if is_training_state(name):
            ignored.append(name)
            continue
        if arr.dtype.kind == "c":
            raise ConvertError(f"{pdparams}: tensor '{name}' is {arr.dtype.name}; complex tensors "
                               "are not supported")
        tensors[name] = arr
    return Checkpoint(path=path, format=PDPARAMS, tensors=tensors, ignored=sorted(ignored),
                      sha256=hasher.hexdigest(), files=[pdparams])


def _read_per_variable_dir(path: Path, files: list[Path], digest: bool) -> Checkpoint:
    variables = [f for f in files if f.name != "__model__" and not f.name.endswith(".pdmodel")]
    combined = [f.name for f in variables if f.name.endswith(".pdiparams")]
    if combined:
        raise ConvertError(f"{path / combined[0]} is the combined parameter file of an inference "
                           "model (paddle.jit.save / save_inference_model), not a training "
                           "checkpoint")
    opt = [f.name for f in variables if f.name.endswith(".pdopt")]
    if opt:
        raise ConvertError(f"{path} holds {opt[0]} but no .pdparams file")
    if not variables:
        raise ConvertError(f"{path} is empty (no checkpoint variables)")
    hasher = hashlib.sha256() if digest else _NoDigest()
    tensors: dict[str, np.ndarray] = {}
    ignored: list[str] = []
    for f in variables:  # sorted by name
        name = f.name
        if is_training_state(name):
            ignored.append(name)
            if digest:
                _hash_file(hasher, f, name)  # counted in the hash, never parsed
            continue
        with _open_regular(f) as fh:
            try:
                buf = _read_file_into_bytearray(fh, str(f))
            except OSError as e:
                raise ConvertError(f"cannot read {f}: {e.strerror or _oneline(e)}") from None
        _hash_header(hasher, name, len(buf))
        hasher.update(buf)
        offset, dtype, shape = _parse_lod_header(memoryview(buf), str(f))
        tensors[name] = _array_from(buf, offset, dtype, shape, str(f), copy=False)
        del buf
    return Checkpoint(path=path, format=PER_VARIABLE, tensors=tensors, ignored=sorted(ignored),
                      sha256=hasher.hexdigest(), files=variables)


# --------------------------------------------------------------------------------------------
# helpers


def _oneline(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _preview(names, limit: int = 3) -> str:
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f", ... ({len(names)} files)" if len(names) > limit else "")


def _safe_text(text: str, limit: int = 120) -> str:
    text = text.encode("unicode_escape").decode("ascii")  # one line, printable
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_repr(obj, limit: int = 40) -> str:
    try:
        text = repr(obj) if isinstance(obj, (str, bytes, int, float, np.dtype)) else type(obj).__name__
    except Exception:  # noqa: BLE001
        text = type(obj).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
