"""A `.pdparams` pickle as {name: numpy array}, read with a restricted unpickler: nothing in the
file runs, and no file, however built, costs more than a few times its size in memory or time.

Pure python + numpy: never imports paddle.
"""
from __future__ import annotations

import pickle
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.read.paddle_pickle import (
    ADMITTED,
    PY2_NAMES,
    DtypeSpec,
    Refused,
    check_array_state,
    codecs_encode,
    frombuffer,
    normalise,
)
from acnet_convert.common.regular_file import file_size, open_regular
from acnet_convert.read.pickle_bounds import BoundedReader, Budget, Truncated, check_nesting
from acnet_convert.common.text import printable

# --------------------------------------------------------------------------------------------
# The threat model.
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
# find_class admits a short list of numpy and Paddle globals, each mapped to a stand-in that
# accepts only the argument shapes they write (paddle_pickle.py lists them); nothing is
# ever called that could act on the outside world.
# Everything else is refused: "refusing to load PATH: it references MODULE.NAME". So are the
# opcodes no Paddle pickle uses and that would hash or instantiate: sets, INST/OBJ/NEWOBJ.
#
# Small files must not crash the interpreter or cost what they do not hold:
#   * dict keys must be str, checked before the key is inserted: inserting hashes the key, and
#     hashing a tuple nested 200,000 deep overflows the C stack (SIGSEGV) while int keys can be
#     chosen to collide in the hash (quadratic time). Memo indices must be below 2**32 (PUT
#     takes any decimal number, and big ints collide too).
#   * a budget of BUDGET_FACTOR x the file size + BUDGET_SLACK bytes pays for everything the
#     unpickler builds: _OP_COST per opcode (about the size of one small object and its
#     reference), the data of every array, the bytes _codecs.encode makes, the width of a str
#     beyond its latin-1 bytes, copies and joins. A Paddle checkpoint spends about one opcode per
#     10 kB and each array's data once, far inside it; a file that stores one array under 2,000
#     names, or encodes one string 2,000 times, runs out.
#   * containers nest at most MAX_DEPTH deep (Paddle's nest 3 deep) and never hold themselves,
#     checked once the object is built, in one pass that visits each container once.
#   * one array object stored under several names stays one array: shared, never copied.
# We use pickle's pure-python Unpickler so that each opcode can be checked and charged, and so
# that length prefixes are bounded by the real file size before anything is allocated (the C
# unpickler allocates whatever a BINBYTES8 header claims).

_BIG_STR = 1 << 16
_OP_COST = 48  # a stack slot and a small object
_MEMO_COST = 64  # the memo dict's entry: it keeps its object alive to the end
_CONTAINER_COST = 64  # an empty dict or list (MARK makes a list too) beyond its opcode
_MAX_MEMO_INDEX = 1 << 32

class _RefusedGlobal(Exception):
    """The pickle names a global outside the allow-list (the message is MODULE.NAME)."""


def _charged(op, cost: int = _OP_COST):
    """A dispatch entry that pays `cost` from the budget before it runs."""

    def run(self: _RestrictedUnpickler) -> None:
        self.budget.charge(cost)
        op(self)

    return run


def _refuse(what: str):
    def run(self: _RestrictedUnpickler) -> None:
        raise Refused(what)

    return run


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """pickle's pure-python Unpickler: every opcode charged to the budget; find_class, BUILD,
    dict and list updates, memo indices and BYTEARRAY8 restricted."""

    dispatch = {code: _charged(op) for code, op in pickle._Unpickler.dispatch.items()}  # type: ignore[attr-defined]

    def __init__(self, reader: BoundedReader, size: int, shown: str) -> None:
        super().__init__(reader, encoding="latin1")  # as paddle.load: Python 2 pickles load
        self._reader = reader
        self._size = size
        self.budget = Budget(size, shown)
        self._big_strs: dict[int, list[int]] = {}  # id(large str) -> memo indices holding it
        self._dropped = 0  # memo entries deleted (MEMOIZE numbers entries by memo size)

    # Protocol-2 pickles carry array data as _codecs.encode(<latin-1 str>, "latin1"), and
    # memoize both the str and the (str, "latin1") args tuple: the memo would keep a second
    # copy of all the data alive until the end. So the memo indices holding a large str are
    # remembered and dropped once encode has consumed it. A real pickle never refers back to
    # them: the pickler memoizes the resulting bytes object and refers to that instead.
    def _memoize(self, idx: int) -> None:
        if not 0 <= idx < _MAX_MEMO_INDEX:
            raise Refused("a memo index out of range")
        self.budget.charge(_MEMO_COST)
        obj = self.stack[-1]
        self.memo[idx] = obj
        if type(obj) is str and len(obj) >= _BIG_STR:
            self._big_strs.setdefault(id(obj), []).append(idx)
        elif type(obj) is tuple and 0 < len(obj) <= 3:
            for item in obj:
                if type(item) is str and id(item) in self._big_strs:
                    self._big_strs[id(item)].append(idx)

    def load_binput(self) -> None:
        self._memoize(self.read(1)[0])

    def load_long_binput(self) -> None:
        self._memoize(struct.unpack("<I", self.read(4))[0])

    def load_memoize(self) -> None:
        self._memoize(len(self.memo) + self._dropped)

    def load_put(self) -> None:
        line = self.readline()[:-1]
        if len(line) > 10:  # a decimal index below 2**32; int() of a long line is slow
            raise Refused("a memo index out of range")
        self._memoize(int(line))

    def _codecs_encode(self, obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
        data = codecs_encode(obj, encoding, errors)
        self.budget.charge(len(data))
        for idx in self._big_strs.pop(id(obj), ()):
            held = self.memo.get(idx)
            if held is obj or (type(held) is tuple and any(x is obj for x in held)):
                del self.memo[idx]
                self._dropped += 1
        return data

    def _frombuffer(self, *args: Any) -> np.ndarray:
        arr = frombuffer(*args)
        self.budget.charge(arr.nbytes)
        return arr

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if self.proto < 3:
            key = PY2_NAMES.get(key, key)
        stand_in = ADMITTED.get(key)
        if stand_in is None:
            raise _RefusedGlobal(f"{module}.{name}")
        if stand_in is codecs_encode:
            return self._codecs_encode
        if stand_in is frombuffer:
            return self._frombuffer
        return stand_in

    def persistent_load(self, pid: Any) -> Any:
        raise Refused("a persistent id")

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if type(inst) is np.ndarray:
            inst.__setstate__(check_array_state(state))
            self.budget.charge(inst.nbytes)
        elif type(inst) is DtypeSpec:
            inst.build(state)
        else:
            raise Refused(f"BUILD of a {type(inst).__name__}")

    def load_bytearray8(self) -> None:
        # bounded by the file size before allocating; read straight into the bytearray (the
        # stock implementation reads a bytes object and copies it: two copies of the tensor)
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise Truncated()
        b = bytearray(n)
        frame = self._unframer.current_frame
        got = frame.readinto(b) if frame is not None else 0
        if frame is None or (got == 0 and n):
            self._unframer.current_frame = None
            self._reader.readinto(b)
        elif got < n:
            raise pickle.UnpicklingError("pickle exhausted before end of frame")
        self.append(b)

    def _charge_width(self) -> None:
        # a str wider than latin-1 takes 2 or 4 bytes a character, more than its UTF-8 in the file
        s = self.stack[-1]
        if not s.isascii():
            self.budget.charge(sys.getsizeof(s) - len(s))

    def _setitems(self, target: Any, items: list) -> None:
        if type(target) is not dict:
            raise Refused(f"dict items set on a {type(target).__name__}")
        for i in range(0, len(items) - 1, 2):
            if type(items[i]) is not str:  # checked before inserting, which hashes the key
                raise Refused(f"a dict key of type {type(items[i]).__name__}, where tensor names belong")
            target[items[i]] = items[i + 1]

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._setitems(self.stack[-1], items)

    def load_dict(self) -> None:
        items = self.pop_mark()
        d: dict = {}
        self._setitems(d, items)
        self.append(d)

    def load_append(self) -> None:
        value = self.stack.pop()
        if type(self.stack[-1]) is not list:
            raise Refused(f"list items appended to a {type(self.stack[-1]).__name__}")
        self.stack[-1].append(value)

    def load_appends(self) -> None:
        items = self.pop_mark()
        if type(self.stack[-1]) is not list:
            raise Refused(f"list items appended to a {type(self.stack[-1]).__name__}")
        self.stack[-1].extend(items)


def _with_width_charge(op):
    def run(self: _RestrictedUnpickler) -> None:
        op(self)
        self._charge_width()

    return run


_D = _RestrictedUnpickler.dispatch
for _op, _method in (
    (pickle.BINPUT, _RestrictedUnpickler.load_binput),
    (pickle.LONG_BINPUT, _RestrictedUnpickler.load_long_binput),
    (pickle.MEMOIZE, _RestrictedUnpickler.load_memoize),
    (pickle.PUT, _RestrictedUnpickler.load_put),
    (pickle.BUILD, _RestrictedUnpickler.load_build),
    (pickle.BYTEARRAY8, _RestrictedUnpickler.load_bytearray8),
    (pickle.SETITEM, _RestrictedUnpickler.load_setitem),
    (pickle.SETITEMS, _RestrictedUnpickler.load_setitems),
    (pickle.DICT, _RestrictedUnpickler.load_dict),
    (pickle.APPEND, _RestrictedUnpickler.load_append),
    (pickle.APPENDS, _RestrictedUnpickler.load_appends),
):
    _D[_op[0]] = _charged(_method)
for _op in (pickle.EMPTY_DICT, pickle.EMPTY_LIST, pickle.MARK, pickle.LIST, pickle.TUPLE, pickle.TUPLE1,
            pickle.TUPLE2, pickle.TUPLE3):
    _D[_op[0]] = _charged(pickle._Unpickler.dispatch[_op[0]], _OP_COST + _CONTAINER_COST)  # type: ignore[attr-defined]
for _op in (pickle.UNICODE, pickle.BINUNICODE, pickle.SHORT_BINUNICODE, pickle.BINUNICODE8):
    _D[_op[0]] = _charged(_with_width_charge(pickle._Unpickler.dispatch[_op[0]]))  # type: ignore[attr-defined]
for _op, _what in ((pickle.EMPTY_SET, "a set"), (pickle.ADDITEMS, "a set"), (pickle.FROZENSET, "a set"),
                   (pickle.INST, "an object to instantiate"), (pickle.OBJ, "an object to instantiate"),
                   (pickle.NEWOBJ, "an object to instantiate"), (pickle.NEWOBJ_EX, "an object to instantiate")):
    _D[_op[0]] = _refuse(_what)
del _D, _op, _method, _what


def _unpickle(f: BinaryIO, name: str, hasher: Any = None) -> tuple[Any, Budget]:
    """Run the restricted unpickler over the rest of `f`: the raw object, and the budget left
    for what is done with it."""
    shown = printable(name)
    size = file_size(f)
    reader = BoundedReader(f, name, size, hasher)
    unpickler = _RestrictedUnpickler(reader, size, shown)
    try:
        obj = unpickler.load()
        if reader.remaining:
            raise ConvertError(f"{shown}: {reader.remaining} bytes of trailing data after the pickle; corrupt .pdparams?")
        check_nesting(obj)
    except ConvertError:
        raise
    except _RefusedGlobal as err:
        raise ConvertError(f"refusing to load {shown}: it references {printable(str(err), 120)} "
                           "(only numpy arrays are allowed)") from None
    except Refused as err:
        raise ConvertError(f"refusing to load {shown}: it contains {err} (only numpy arrays are allowed)") from None
    except Truncated:
        raise ConvertError(f"{shown}: truncated pickle (the file ends early)") from None
    except EOFError:
        raise ConvertError(f"{shown}: empty or truncated pickle") from None
    except RecursionError:
        raise ConvertError(f"{shown}: pickle nested too deeply") from None
    except MemoryError:
        raise ConvertError(f"{shown}: pickle too large to load") from None
    except Exception as err:  # noqa: BLE001 - any failure of a hostile/corrupt stream
        # the type only: messages such as "invalid load key, 'T'" quote the file's bytes
        raise ConvertError(f"{shown}: not a valid .pdparams pickle ({type(err).__name__})") from None
    finally:
        unpickler.memo.clear()
        unpickler.stack = []
        unpickler.metastack = []
    return obj, unpickler.budget


def read_pickle(f: BinaryIO, name: str, hasher: Any = None) -> dict[str, np.ndarray]:
    """Read a `.pdparams` pickle from an open file as {name: ndarray}, admitting only numpy arrays.

    Applies Paddle's conventions: "StructuredToParameterName@@" renames structured names to
    parameter names; "UnpackBigParamInfor@@" reassembles split tensors; (name, array) tuples
    from Paddle's Tensor reducer become arrays (under their dict key). Arrays are writable,
    native-endian and C-contiguous; one array stored under several names is one array. `name`
    is used in messages; if `hasher` is given, every byte of the file is fed to it."""
    obj, budget = _unpickle(f, name, hasher)
    return normalise(obj, printable(name), budget.charge)


def load_pickle(path: Path | str, hasher: Any = None) -> dict[str, np.ndarray]:
    """`read_pickle` of the regular file at `path` (not followed if it is a symbolic link)."""
    with open_regular(path) as f:
        return read_pickle(f, str(path), hasher)
