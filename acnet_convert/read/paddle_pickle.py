"""What numpy and Paddle put into a `.pdparams` pickle, as the restricted unpickler
(pickle_reader.py) admits it: the stand-ins it returns for the few globals it allows, each of
which accepts only the argument shapes numpy and Paddle write, validates them and builds the
object itself; and Paddle's state-dict conventions, applied to what was unpickled. Pure python +
numpy."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.read.lod_tensor import MAX_RANK, data_nbytes
from acnet_convert.common.text import printable

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
#                             (DtypeSpec) whose BUILD may only set the byte order; arrays get
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
#
# Anything else is refused by the unpickler.

_NUMERIC_CODES = frozenset(
    ["b1", "?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16"]
)
_SAFE_KINDS = frozenset("biufc")
_OWN_COPY_BELOW = 1 << 20  # see _own
STRUCTURED_KEY = "StructuredToParameterName@@"
BIG_PARAM_KEY = "UnpackBigParamInfor@@"


class Refused(Exception):
    """A pickle that is well-formed but not made of numpy arrays (turned into ConvertError)."""


class _NdarrayMarker:
    __slots__ = ()

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayMarker()


class DtypeSpec:
    """What the pickle gets for numpy.dtype(code, align, copy): a plain record, not a numpy
    object. numpy's own dtype.__setstate__ crashes the interpreter (SIGSEGV) on some malformed
    states (found by fuzzing), so it is never called: BUILD may only set the byte order, in
    exactly the state numpy writes for numeric dtypes, (3, "<", None, None, None, -1, -1, 0)."""

    __slots__ = ("code", "byteorder")

    def __init__(self, code: str) -> None:
        self.code = code
        self.byteorder = "="

    def build(self, state: Any) -> None:
        if (type(state) is not tuple or len(state) != 8 or type(state[0]) is not int
                or state[0] != 3 or type(state[1]) is not str or state[1] not in ("<", ">", "|", "=")
                or state[2:5] != (None, None, None)
                or any(type(x) is not int for x in state[5:])
                or state[5:] != (-1, -1, 0)):
            raise Refused("a malformed numpy.dtype state")
        self.byteorder = state[1]


def _check_dtype(spec: Any) -> np.dtype:
    """Resolve a dtype from the pickle to numpy's canonical descriptor (np.dtype("<f4") etc.).

    Arrays only ever get canonical descriptors, which no pickle opcode can reach: a later
    BUILD on the pickle's dtype object cannot alter an array already built with it.
    """
    if type(spec) is not DtypeSpec:
        raise Refused(f"a {type(spec).__name__} where a numpy.dtype belongs")
    dt = np.dtype(spec.code)
    if spec.byteorder in ("<", ">") and dt.itemsize > 1:
        dt = dt.newbyteorder(spec.byteorder)
    dt = np.dtype(dt.str)
    if dt.kind not in _SAFE_KINDS or dt.fields is not None or dt.hasobject:  # pragma: no cover
        raise Refused(f"an array of dtype {dt.str} (only numeric arrays are allowed)")
    return dt


def _latin1(data: Any, what: str) -> bytes | bytearray:
    """Array data as bytes. Python 2 pickles, read with encoding="latin1" as paddle.load does,
    carry it as a str of latin-1 characters; numpy and Paddle write bytes or bytearray."""
    if type(data) is str:
        try:
            return data.encode("latin1")
        except UnicodeEncodeError:
            raise Refused(f"non-latin1 text as {what}") from None
    if type(data) in (bytes, bytearray):
        return data
    raise Refused(f"a {type(data).__name__} as {what}")  # object arrays pickle a list


def shape_of(shape: Any) -> tuple[int, ...]:
    if type(shape) not in (tuple, list) or len(shape) > MAX_RANK:
        raise Refused("a malformed array shape")
    if any(type(d) is not int or d < 0 for d in shape):
        raise Refused("a malformed array shape")
    return tuple(shape)


def _sc_reconstruct(subtype: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if (subtype is not _NDARRAY or type(shape) is not tuple or len(shape) != 1
            or type(shape[0]) is not int or shape[0] != 0
            or type(dtype_code) not in (bytes, str) or dtype_code not in (b"b", "b")):
        raise Refused("numpy _reconstruct with unexpected arguments")
    return np.ndarray((0,), np.dtype("b"))


def _sc_dtype(code: Any, align: Any = False, copy: Any = False) -> DtypeSpec:
    if (type(code) is not str or code not in _NUMERIC_CODES or type(align) not in (bool, int)
            or align not in (0, 1)):
        shown = printable(repr(code), 24) if type(code) is str else f"a {type(code).__name__}"
        raise Refused(f"numpy.dtype({shown}) (only numeric dtypes are allowed)")
    return DtypeSpec(code)


def _sc_scalar(dt: Any, data: Any) -> np.generic:
    dt = _check_dtype(dt)
    raw = _latin1(data, "numpy scalar data")
    if len(raw) != dt.itemsize:
        raise Refused("a numpy scalar of the wrong size")
    return np.frombuffer(raw, dtype=dt, count=1)[0]


def frombuffer(buf: Any, dt: Any, shape: Any, order: Any = "C") -> np.ndarray:
    dt = _check_dtype(dt)
    raw = _latin1(buf, "array data")
    shape = shape_of(shape)
    if type(order) is not str or order not in ("C", "F") or data_nbytes(shape, dt.itemsize, len(raw)) != len(raw):
        raise Refused("array data that does not match its shape")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order=order)


def codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if (type(obj) is not str or type(encoding) is not str or type(errors) is not str
            or encoding not in ("latin1", "latin-1") or errors != "strict"):
        raise Refused("_codecs.encode with unexpected arguments")
    return _latin1(obj, "_codecs.encode text")


def _sc_ordered_dict(*args: Any, **kwargs: Any) -> dict:
    if args or kwargs:
        raise Refused("collections.OrderedDict with arguments")
    return {}


def _sc_tuple(seq: Any = ()) -> tuple:
    if type(seq) not in (tuple, list):
        raise Refused(f"builtins.tuple of a {type(seq).__name__}")
    return tuple(seq)


def _sc_eval(expr: Any, env: Any = None, *rest: Any) -> np.ndarray:
    # Paddle's DenseTensor reducer: (eval, ("data", {"data": ndarray})). Never evaluated.
    if (type(expr) is not str or expr != "data" or rest or type(env) is not dict
            or list(env) != ["data"] or type(env["data"]) is not np.ndarray):
        raise Refused("builtins.eval (only Paddle's eval('data', {'data': array}) is allowed)")
    return env["data"]


def check_array_state(state: Any) -> tuple:
    """Validate an ndarray.__setstate__ argument (version, shape, dtype, is_fortran, rawdata)
    and rebuild it from clean values, in the exact form numpy itself writes (numpy's C code
    is not hardened against arbitrary states)."""
    if type(state) is not tuple or len(state) not in (4, 5):
        raise Refused("a malformed array state")
    if len(state) == 5 and (type(state[0]) is not int or state[0] != 1):
        raise Refused("a malformed array state")
    shape, spec, is_fortran, raw = state[-4:]
    shape = shape_of(shape)
    dt = _check_dtype(spec)
    if type(is_fortran) not in (bool, int) or is_fortran not in (0, 1):
        raise Refused("a malformed array state")
    raw = _latin1(raw, "array data")
    if type(raw) is bytearray:
        raw = bytes(raw)
    if data_nbytes(shape, dt.itemsize, len(raw)) != len(raw):
        raise Refused("array data that does not match its shape")
    return (1, shape, dt, bool(is_fortran), raw)


ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _sc_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _sc_reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _sc_dtype,
    ("numpy.core.multiarray", "scalar"): _sc_scalar,
    ("numpy._core.multiarray", "scalar"): _sc_scalar,
    ("numpy.core.numeric", "_frombuffer"): frombuffer,
    ("numpy._core.numeric", "_frombuffer"): frombuffer,
    ("_codecs", "encode"): codecs_encode,
    ("collections", "OrderedDict"): _sc_ordered_dict,
    ("builtins", "tuple"): _sc_tuple,
    ("builtins", "eval"): _sc_eval,
}
# names Python 2 / protocol < 3 pickles use for the same objects
PY2_NAMES = {
    ("__builtin__", "tuple"): ("builtins", "tuple"),
    ("__builtin__", "eval"): ("builtins", "eval"),
    ("copy_reg", "OrderedDict"): ("collections", "OrderedDict"),
}


# --------------------------------------------------------------------------------------------
# Paddle's state-dict conventions


def normalise(obj: Any, shown: str, charge: Callable[[int], None]) -> dict[str, np.ndarray]:
    """The unpickled object as {name: ndarray}, by Paddle's conventions (see read_pickle).
    `shown` names the file in messages; `charge(nbytes)` pays for every copy made."""
    if type(obj) is not dict:
        raise ConvertError(f"{shown}: expected a dict of arrays at the top level, found a {type(obj).__name__}")
    mapping = obj.pop(STRUCTURED_KEY, None)
    big = obj.pop(BIG_PARAM_KEY, None)
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():  # keys are str: the unpickler admits no other
        if (type(value) is tuple and len(value) == 2 and type(value[0]) is str
                and type(value[1]) is np.ndarray):
            value = value[1]  # Paddle's Tensor reducer: (tensor name, array); keep the dict key
        elif isinstance(value, np.generic):
            value = np.asarray(value)
        if type(value) is not np.ndarray:
            kind = "numpy.dtype" if type(value) is DtypeSpec else type(value).__name__
            raise ConvertError(f"{shown}: tensor '{printable(key)}' is a {kind}, expected a numpy array")
        out[key] = value
    obj.clear()  # the caller holds it too: emptied, its arrays are freed as they are replaced
    if big is not None:
        _join_big_params(out, big, shown, charge)
    if mapping is not None:
        out = _rename_structured(out, mapping, shown)
    owned: dict[int, np.ndarray] = {}  # id(array as unpickled) -> the array returned for it
    for key, value in out.items():
        if id(value) not in owned:
            owned[id(value)] = _own(value, charge)
        out[key] = owned[id(value)]
    return out


def _own(a: np.ndarray, charge: Callable[[int], None]) -> np.ndarray:
    """Writable, native-endian, C-contiguous. numpy's unpickling leaves large arrays backed by
    the pickled bytes object (no copy, which keeps peak memory at one copy of the data); smaller
    ones are copied, because CPython shares tiny bytes objects and they must never be written."""
    if not a.dtype.isnative:
        charge(a.nbytes)
        a = a.astype(a.dtype.newbyteorder("="))
    if isinstance(a.base, bytes) and a.nbytes < _OWN_COPY_BELOW:
        charge(a.nbytes)
        return a.copy()
    if not (a.flags.c_contiguous and a.flags.writeable):
        charge(a.nbytes)
        return np.array(a, order="C", copy=True)
    return a


def _join_big_params(out: dict[str, np.ndarray], big: Any, shown: str, charge: Callable[[int], None]) -> None:
    malformed = ConvertError(f"{shown}: malformed {BIG_PARAM_KEY}")
    if type(big) is not dict:
        raise malformed
    for name, info in big.items():
        if (type(info) is not dict or type(info.get("slices")) not in (list, tuple)
                or any(type(p) is not str for p in info["slices"])):
            raise malformed
        try:
            shape = shape_of(info.get("OriginShape"))
            parts = [out.pop(p) for p in info["slices"]]
            charge(sum(p.nbytes for p in parts))
            joined = np.concatenate([p.reshape(-1) for p in parts]).reshape(shape)
        except Refused:
            raise malformed from None
        except (KeyError, ValueError) as err:
            raise ConvertError(f"{shown}: cannot reassemble split tensor '{printable(name)}' "
                               f"({type(err).__name__})") from None
        out[name] = joined


def _rename_structured(out: dict[str, np.ndarray], mapping: Any, shown: str) -> dict[str, np.ndarray]:
    if type(mapping) is not dict or not all(type(v) is str for v in mapping.values()):
        raise ConvertError(f"{shown}: malformed {STRUCTURED_KEY} (expected names -> names)")
    renamed: dict[str, np.ndarray] = {}
    for key, value in out.items():
        new = mapping.get(key, key)
        if new in renamed:
            raise ConvertError(f"{shown}: two tensors map to the parameter name '{printable(new)}'")
        renamed[new] = value
    return renamed
