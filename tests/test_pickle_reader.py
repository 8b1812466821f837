"""Tests for acnet_convert.read.pickle_reader: the restricted unpickler of `.pdparams` files, what it
admits, what it refuses, and what a hostile file may cost."""
from __future__ import annotations

import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from acnet_convert.read.checkpoint import read_checkpoint
from acnet_convert.common.errors import ConvertError
from acnet_convert.read import pickle_bounds
from acnet_convert.read.pickle_reader import _unpickle, load_pickle
from tests.test_lod_tensor import FUZZ, mutated, write

ROOT = Path(__file__).resolve().parents[1]
W = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 7.25


def raw_unpickle(path: Path):
    """What the restricted unpickler builds, before Paddle's conventions are applied."""
    with open(path, "rb") as f:
        return _unpickle(f, str(path))[0]


# --------------------------------------------------------------------------------------------
# .pdparams pickles


def _ck(tmp_path, data: bytes, name="model.pdparams") -> Path:
    return write(tmp_path / name, data)


def test_pickle_plain_dict_protocols(tmp_path):
    d = {"w": W, "b": np.arange(3, dtype=np.int64), "s": np.float32(2.5),
         "be": np.arange(4, dtype=">f8"), "fo": np.asfortranarray(W[0, :, :, 0])}
    for proto in (2, 3, 4, 5):
        got = load_pickle(_ck(tmp_path, pickle.dumps(d, protocol=proto)))
        assert list(got) == list(d)
        for k, v in d.items():
            np.testing.assert_array_equal(got[k], v)
            assert got[k].dtype.isnative and got[k].flags.c_contiguous and got[k].flags.writeable
    got = load_pickle(_ck(tmp_path, pickle.dumps(OrderedDict(w=W), protocol=2)))
    np.testing.assert_array_equal(got["w"], W)


def test_pickle_structured_names_are_renamed(tmp_path):
    d = {"conv.weight": W, "fc.bias": np.ones(2, np.float32),
         "StructuredToParameterName@@": {"conv.weight": "conv1_weights", "fc.bias": "fc_0.b_0"}}
    assert list(load_pickle(_ck(tmp_path, pickle.dumps(d)))) == ["conv1_weights", "fc_0.b_0"]
    d["StructuredToParameterName@@"] = {"conv.weight": "x", "fc.bias": "x"}
    with pytest.raises(ConvertError, match="two tensors map to the parameter name 'x'"):
        load_pickle(_ck(tmp_path, pickle.dumps(d)))
    d["StructuredToParameterName@@"] = {"conv.weight": 3}
    with pytest.raises(ConvertError, match="malformed StructuredToParameterName@@"):
        load_pickle(_ck(tmp_path, pickle.dumps(d)))


def test_pickle_big_param_slices_are_joined(tmp_path):
    flat = W.reshape(-1)
    d = {"w@@.0": flat[:10], "w@@.1": flat[10:],
         "UnpackBigParamInfor@@": {"w": {"OriginShape": W.shape, "slices": ["w@@.0", "w@@.1"]}}}
    got = load_pickle(_ck(tmp_path, pickle.dumps(d, protocol=2)))
    assert list(got) == ["w"]
    np.testing.assert_array_equal(got["w"], W)
    d["UnpackBigParamInfor@@"]["w"]["slices"] = ["w@@.0", "missing"]
    with pytest.raises(ConvertError, match="cannot reassemble split tensor 'w'"):
        load_pickle(_ck(tmp_path, pickle.dumps(d, protocol=2)))


class _Reduce:
    """Pickles as an arbitrary (callable, args) pair."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_pickle_paddle_reducers_are_understood(tmp_path):
    # Paddle's Tensor reducer: (tuple, ((name, ndarray),)); DenseTensor: (eval, ("data", {...}))
    d = {"a": _Reduce(tuple, (("linear_0.w_0", W),)), "b": _Reduce(eval, ("data", {"data": W}))}
    for proto in (2, 4):
        got = load_pickle(_ck(tmp_path, pickle.dumps(d, protocol=proto)))
        assert list(got) == ["a", "b"]
        np.testing.assert_array_equal(got["a"], W)
        np.testing.assert_array_equal(got["b"], W)


@pytest.mark.parametrize("data, why", [
    (b"", "empty or truncated pickle"),
    (pickle.dumps({"w": W})[:-1], "truncated"),
    (pickle.dumps({"w": W})[:100], "truncated"),
    (pickle.dumps({"w": W}, protocol=2)[:300], "truncated"),
    (b"this is not a pickle at all\n", "not a valid .pdparams pickle"),
    (pickle.dumps({"w": W}) + b"junk", "trailing data"),
    (pickle.dumps([W]), "expected a dict of arrays at the top level, found a list"),
    (pickle.dumps({1: W}), "a dict key of type int, where tensor names belong"),
    (pickle.dumps({"w": [1, 2]}), "tensor 'w' is a list"),
    (pickle.dumps({"w": {"x": W}}), "tensor 'w' is a dict"),
    (pickle.dumps({"w": "text"}), "tensor 'w' is a str"),
    (pickle.dumps({"w": np.array([1, "a"], dtype=object)}), "refusing to load"),
    (pickle.dumps({"w": np.zeros(2, dtype=[("a", "<f4")])}), "refusing to load"),
    (pickle.dumps({"w": np.array(["ab"])}), "refusing to load"),
    # BINBYTES8 claiming 2**60 bytes: refused without allocating them
    (b"\x80\x04\x8e" + struct.pack("<Q", 2**60) + b"xx.", "truncated"),
    (b"\x80\x05\x96" + struct.pack("<Q", 2**60) + b"xx.", "truncated"),
    (b"\x80\x04\x95" + struct.pack("<Q", 2**60) + b"}.", "truncated"),
])
def test_pickle_bad_files_name_the_file(tmp_path, data, why):
    p = _ck(tmp_path, data)
    with pytest.raises(ConvertError, match=why) as e:
        load_pickle(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def _malicious(tmp_path, marker: Path) -> dict[str, bytes]:
    cmd = f"touch {marker}"
    return {
        "posix.system": pickle.dumps({"w": _Reduce(os.system, (cmd,))}),
        "os.system (protocol 0)": b"cos\nsystem\n(S'" + cmd.encode() + b"'\ntR.",
        "builtins.eval": pickle.dumps(
            {"w": _Reduce(eval, (f"open({str(marker)!r}, 'w').close()",))}),
        "builtins.eval with paddle-like args": pickle.dumps(
            {"w": _Reduce(eval, ("data", {"data": W, "__builtins__": None}))}),
        "builtins.exec": pickle.dumps({"w": _Reduce(exec, (f"open({str(marker)!r}, 'w')",))}),
        "numpy.save": pickle.dumps({"w": _Reduce(np.save, (str(marker), W))}),
        "numpy.fromfile": pickle.dumps({"w": _Reduce(np.fromfile, ("/etc/hostname",))}),
        "builtins.open": pickle.dumps({"w": _Reduce(open, (str(marker), "w"))}),
        "subprocess.call": pickle.dumps({"w": _Reduce(subprocess.call, (["touch", str(marker)],))}),
        "builtins.getattr": pickle.dumps({"w": _Reduce(getattr, ("abc", "upper"))}),
        "tuple of a generator-ish": pickle.dumps({"w": _Reduce(tuple, ("abc",))}),
        "_reconstruct with a huge shape": pickle.dumps(
            {"w": _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (2**40,), b"b"))}),
        "numpy.dtype of object": pickle.dumps({"w": np.dtype("O")}),
    }


def test_pickle_malicious_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "PWNED"
    for label, data in _malicious(tmp_path, marker).items():
        p = _ck(tmp_path, data)
        with pytest.raises(ConvertError, match="refusing to load") as e:
            load_pickle(p)
        msg = str(e.value)
        assert str(p) in msg and "\n" not in msg, label
        assert not marker.exists(), label
    # the message names what was referenced
    with pytest.raises(ConvertError, match=r"references posix\.system \(only numpy arrays"):
        load_pickle(_ck(tmp_path, _malicious(tmp_path, marker)["posix.system"]))
    with pytest.raises(ConvertError, match=r"references os\.system"):
        load_pickle(_ck(tmp_path, _malicious(tmp_path, marker)["os.system (protocol 0)"]))
    with pytest.raises(ConvertError, match=r"references numpy\.save"):
        load_pickle(_ck(tmp_path, _malicious(tmp_path, marker)["numpy.save"]))
    # through read_checkpoint too
    with pytest.raises(ConvertError, match="refusing to load"):
        read_checkpoint(tmp_path)  # tmp_path holds exactly one model.pdparams (the last one)
    assert not marker.exists()


def test_the_allow_list_is_pinned_and_holds_stand_ins_only():
    """The globals a .pdparams may name, exactly; each maps to a stand-in of paddle_pickle (or its
    ndarray marker), never to a real callable such as copyreg._reconstructor, which would build
    any object a pickle names."""
    from acnet_convert.read import paddle_pickle

    assert set(paddle_pickle.ADMITTED) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
        ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"),
        ("collections", "OrderedDict"), ("builtins", "tuple"), ("builtins", "eval"),
    }
    assert paddle_pickle.PY2_NAMES == {("__builtin__", "tuple"): ("builtins", "tuple"),
                                       ("__builtin__", "eval"): ("builtins", "eval"),
                                       ("copy_reg", "OrderedDict"): ("collections", "OrderedDict")}
    for key, stand_in in paddle_pickle.ADMITTED.items():
        owner = stand_in if callable(stand_in) else type(stand_in)
        assert owner.__module__ == paddle_pickle.__name__, key


@pytest.mark.parametrize("proto", [1, 2, 4])
def test_copyreg_reconstructor_is_refused_by_name(tmp_path, proto):
    """copyreg._reconstructor (copy_reg in protocols < 3) rebuilds instances of any class: a
    pickle that names it is refused before anything is built."""
    import copyreg

    data = pickle.dumps({"w": _Reduce(copyreg._reconstructor, (OrderedDict, dict, {}))}, protocol=proto)
    name = "copy_reg" if proto < 3 else "copyreg"
    with pytest.raises(ConvertError, match=rf"references {name}\._reconstructor \(only numpy arrays"):
        load_pickle(_ck(tmp_path, data))


def _dtype_state(byteorder: bytes) -> bytes:
    return (b"(K\x03X\x01\x00\x00\x00" + byteorder
            + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")


def test_pickle_dtype_rebuilt_after_use_does_not_alter_arrays(tmp_path):
    # build w with a dtype object D, then BUILD D again with byteorder ">": the stock
    # unpickler reinterprets w in place; arrays here only get numpy's canonical descriptor
    blob = (b"\x80\x03}q\x00(X\x01\x00\x00\x00w"
            b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R"
            b"(K\x01K\x02\x85cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87Rq\x01"
            + _dtype_state(b"<") + b"\x89C\x08" + np.array([1, 2], "<f4").tobytes() + b"tb"
            b"X\x01\x00\x00\x00dh\x01" + _dtype_state(b">") + b"u.")
    assert pickle.loads(blob)["w"].dtype.str == ">f4"  # the hazard, with the stock unpickler
    raw = raw_unpickle(_ck(tmp_path, blob))
    assert raw["w"].dtype.str == "<f4" and raw["w"].tolist() == [1.0, 2.0]
    with pytest.raises(ConvertError, match="tensor 'd' is a numpy.dtype, expected a numpy array"):
        load_pickle(_ck(tmp_path, blob))


# numpy's dtype.__setstate__ segfaults on a 6-tuple state (numpy gh-30476); found by fuzzing
NUMPY_DTYPE_SEGFAULT = (b"\x80\x02}(X\x01\x00\x00\x00wcnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
                        b"(K\x03X\x01\x00\x00\x00<NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tbu.")


@pytest.mark.parametrize("state", [
    b"(K\x03X\x01\x00\x00\x00<NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # 6-tuple: segfaults numpy
    b"(K\x03NNNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # endian None
    b"(K\x03X\x01\x00\x00\x00<N(X\x01\x00\x00\x00atNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # names
    b"(K\x04X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # version 4
    b"(K\x03X\x01\x00\x00\x00<NNNK\x08K\x08K\x00tb",  # elsize
    b"K\x03b",  # not a tuple
])
def test_pickle_malformed_dtype_states_are_refused(tmp_path, state):
    blob = (b"\x80\x02}(X\x01\x00\x00\x00wcnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R"
            + state + b"u.")
    with pytest.raises(ConvertError, match="refusing to load .*malformed numpy.dtype state"):
        raw_unpickle(_ck(tmp_path, blob))


def test_pickle_numpy_dtype_segfault_regression(tmp_path):
    # in a subprocess: before the fix this killed the interpreter (SIGSEGV)
    p = _ck(tmp_path, NUMPY_DTYPE_SEGFAULT)
    code = ("import sys; from acnet_convert.read.pickle_reader import load_pickle\n"
            "from acnet_convert.common.errors import ConvertError\n"
            "try:\n    load_pickle(sys.argv[1])\nexcept ConvertError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(p)], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "refusing to load" in r.stdout and "malformed numpy.dtype state" in r.stdout


@pytest.mark.parametrize("reduce", [
    _Reduce(eval, (W, {"data": W})),
    _Reduce(eval, ("data", {"data": W}, {})),
    _Reduce(eval, ("data", {"data": [1]})),
    _Reduce(tuple, (W,)),
    _Reduce(tuple, ({"a": 1},)),
    _Reduce(np._core.multiarray._reconstruct, (np.ndarray, W, b"b")),
    _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (0,), W)),
    _Reduce(np.dtype, ("f4", W, True)),
    _Reduce(np.dtype, ("O", False, True)),
    _Reduce(np.dtype, ("V8", False, True)),
    _Reduce(OrderedDict, ([("a", W)],)),
])
def test_pickle_stand_ins_refuse_unexpected_arguments(tmp_path, reduce):
    with pytest.raises(ConvertError, match="refusing to load"):
        load_pickle(_ck(tmp_path, pickle.dumps({"w": reduce}, protocol=2)))



_PICKLE_SEEDS = [
    pickle.dumps({"w": W, "b": np.arange(3, dtype=np.int64)}, protocol=4),
    pickle.dumps({"w": W[0, 0], "StructuredToParameterName@@": {"w": "fc_0.w_0"}}, protocol=2),
    pickle.dumps({"a": _Reduce(tuple, (("n", W[0]),)),
                  "b": _Reduce(eval, ("data", {"data": W[1]}))}, protocol=4),
    pickle.dumps({"s": np.float32(1.5), "v": np.arange(4.0)}, protocol=5),
]


@FUZZ
@given(st.data(), st.sampled_from(range(len(_PICKLE_SEEDS))))
def test_fuzz_pickle_mutations(data, seed):
    blob = data.draw(mutated(_PICKLE_SEEDS[seed]))
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.pdparams"
        p.write_bytes(blob)
        out = _assert_bounded(p, seconds=1.0)  # memory: 4x the file + the arrays returned
    if isinstance(out, ConvertError):
        assert str(p) in str(out) and str(out).isprintable()
        return
    assert isinstance(out, dict)
    for k, v in out.items():
        assert isinstance(k, str) and type(v) is np.ndarray
        assert v.dtype.kind in "biufc" and v.flags.c_contiguous and v.flags.writeable


# --------------------------------------------------------------------------------------------
# small hostile files: no crash, no blow-up (issue 12, rows 4, 5, 10, 11)

# a dict whose key is a tuple nested 200,000 deep: inserting it hashes it, which overflows the
# C stack (the old reader died with SIGSEGV, exit 139, no message). 200,000 opcodes in a 200 kB
# file are over budget; 16 MB of padding (a bytes object, dropped) lets them reach the key check.
DEEP_TUPLE_KEY = b"\x80\x04}" + b")" + b"\x85" * 200_000 + b"N" + b"s."
PAD = b"\x8e" + struct.pack("<Q", 16 << 20) + bytes(16 << 20) + b"0"
DEEP_LIST_VALUE = b"}X\x01\x00\x00\x00w" + b"]" * 100_000 + b"a" * 99_999 + b"s."
SELF_HOLDING_LIST = b"\x80\x04}X\x01\x00\x00\x00w]\x94h\x00as."  # w = l; l.append(l)


@pytest.mark.parametrize("blob, why", [
    (DEEP_TUPLE_KEY, "it builds more than"),
    (DEEP_TUPLE_KEY[:2] + PAD + DEEP_TUPLE_KEY[2:], "a dict key of type tuple"),
    (b"\x80\x04" + PAD + DEEP_LIST_VALUE, "containers nested more than 32 deep"),
    (SELF_HOLDING_LIST, "a container that holds itself"),
    (b"\x80\x04(" + b")\x85" * 100 + b"\x8f.", "a set"),  # frozenset: hashes its items
    (b"\x80\x04\x8f(" + b")\x85" * 100 + b"\x90.", "a set"),
])
def test_deep_nesting_is_refused_in_one_line_not_a_crash(tmp_path, blob, why):
    p = write(tmp_path / "model.pdparams", blob)
    code = ("import sys; from acnet_convert.read.checkpoint import read_checkpoint\n"
            "from acnet_convert.common.errors import ConvertError\n"
            "try:\n    read_checkpoint(sys.argv[1])\nexcept ConvertError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)  # in a child: the old reader killed the interpreter
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.count("\n") == 1 and f"refusing to load {p}" in r.stdout and why in r.stdout, r.stdout


def _peak(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            result = fn()
        except ConvertError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1], time.perf_counter() - t0
    finally:
        tracemalloc.stop()


# what any pickle may cost beyond 4x its size and the arrays it returns: the reader's buffers
SLACK = pickle_bounds.BUDGET_SLACK + 512 * 1024  # the reader's constant allowance, and its own buffers


def _assert_bounded(path: Path, seconds: float = 5.0, factor: int = 4):
    """Load `path`: a ConvertError or arrays, at most `factor` x the file's size + the arrays'
    bytes in memory, quickly. Files of real-sized tensors stay within 4x; a flood of small
    objects is bounded by the reader's budget (BUDGET_FACTOR x the size: what a state dict of
    thousands of tiny tensors really costs in a pure-Python unpickler)."""
    size = path.stat().st_size
    result, peak, took = _peak(lambda: load_pickle(path))
    arrays = 0 if isinstance(result, ConvertError) else sum({id(a): a.nbytes for a in result.values()}.values())
    assert peak <= factor * size + arrays + SLACK, (peak, size, arrays)
    assert took < seconds, took
    return result


class _Reduce:  # noqa: F811 - the same helper as above, for the generators below
    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _array_over(raw: bytes, n: int):
    """Pickles as an ndarray whose data is `raw`: the same bytes object every time, so the
    pickler memoizes it and each further array costs a few bytes of the file."""
    return _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                   (1, (n,), np.dtype("<f4"), False, raw))


def test_one_array_under_many_names_is_shared_not_copied(tmp_path):
    # the old reader copied it once per name: 2,000 names of one 1 MiB array reached 2 GB
    a = np.arange((1 << 18) - 1, dtype=np.float32)  # just under 1 MiB: the size that was copied
    p = write(tmp_path / "m.pdparams", pickle.dumps({f"k{i}": a for i in range(64)}, protocol=4))
    out = _assert_bounded(p)
    assert len(out) == 64 and len({id(v) for v in out.values()}) == 1
    np.testing.assert_array_equal(out["k63"], a)


def test_one_buffer_under_many_arrays_runs_out_of_budget(tmp_path):
    raw = np.arange((1 << 18) - 1, dtype="<f4").tobytes()
    p = write(tmp_path / "m.pdparams", pickle.dumps({f"k{i}": _array_over(raw, (1 << 18) - 1) for i in range(64)},
                                                    protocol=4))
    e = _assert_bounded(p)
    assert isinstance(e, ConvertError) and "it builds more than" in str(e) and f"{p.stat().st_size}-byte file" in str(e)


def test_one_string_encoded_many_times_runs_out_of_budget(tmp_path):
    # protocol-2 data is _codecs.encode(str, "latin1"): one memoized str, encoded 1,000 times
    text = "x" * 60_000
    blob = pickle.dumps({f"k{i}": _Reduce(_codecs_encode, (text, "latin1")) for i in range(1000)}, protocol=2)
    e = _assert_bounded(write(tmp_path / "m.pdparams", blob), factor=pickle_bounds.BUDGET_FACTOR)
    assert isinstance(e, ConvertError) and "it builds more than" in str(e)


import _codecs  # noqa: E402

_codecs_encode = _codecs.encode


def _long1(v: int) -> bytes:
    b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


@pytest.mark.parametrize("n", [20_000])
def test_int_keys_that_collide_in_the_hash_are_refused_at_once(tmp_path, n):
    # multiples of 2**61 - 1 all hash alike: the old reader spent 33 s on 60,000 of them
    m = 2**61 - 1
    blob = b"\x80\x04}" + b"".join(_long1(i * m) + b"Ns" for i in range(1, n + 1)) + b"."
    e = _assert_bounded(write(tmp_path / "m.pdparams", blob), seconds=1.0)
    assert "a dict key of type int" in str(e)
    memo = b"\x80\x02N" + b"".join(b"p%d\n" % (i * m) for i in range(1, 100)) + b"."
    e = _assert_bounded(write(tmp_path / "memo.pdparams", memo), seconds=1.0)
    assert "a memo index out of range" in str(e)


@pytest.mark.parametrize("unit", [b"}\x94", b"]\x94", b"(", b"\x88\x94", b"2", b"J\x00\x00\x01\x00\x94"])
def test_a_megabyte_of_small_objects_stays_within_budget(tmp_path, unit):
    # one opcode per byte or two; the old reader built them all (about 70 bytes each)
    blob = b"\x80\x04N" + unit * (1_000_000 // len(unit)) + b"."
    e = _assert_bounded(write(tmp_path / "m.pdparams", blob), factor=pickle_bounds.BUDGET_FACTOR)
    assert isinstance(e, ConvertError), e  # over its budget, or not a dict of arrays: bounded either way


def test_messages_escape_keys_and_quote_no_file_content(tmp_path):
    key = "w\x1b[31m\nerror: all good"
    with pytest.raises(ConvertError) as e:
        load_pickle(write(tmp_path / "m.pdparams", pickle.dumps({key: "text"})))
    assert "\x1b" not in str(e.value) and "\n" not in str(e.value)
    assert "tensor 'w\\x1b[31m\\nerror: all good' is a str" in str(e.value)
    for blob in (b"I1234SECRET\n.", b"TOPSECRET", b"xSECRET", b"\x80\x04\x8c\x05SECRET\x93."):
        with pytest.raises(ConvertError) as e:
            load_pickle(write(tmp_path / "m.pdparams", blob))
        assert "SECRET" not in str(e.value) and "'x'" not in str(e.value), str(e.value)


def test_stack_global_names_are_escaped(tmp_path):
    blob = b"\x80\x04\x8c\x0cos\x1b[2J\nerror\x8c\x06system\x93."
    with pytest.raises(ConvertError) as e:
        load_pickle(write(tmp_path / "m.pdparams", blob))
    assert "references os\\x1b[2J\\nerror.system" in str(e.value)


def test_a_fifo_is_refused_not_waited_for(tmp_path):
    os.mkfifo(tmp_path / "m.pdparams")

    def expired(*_args):
        raise TimeoutError("still waiting for a writer")  # what the old reader did, forever

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(10)
    try:
        with pytest.raises(ConvertError, match="is a FIFO, expected a regular file"):
            load_pickle(tmp_path / "m.pdparams")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------
# property-based: the budget holds for any stream of the opcodes that build objects

_OPS = [b"}", b"]", b")", b"(", b"\x94", b"2", b"N", b"\x88", b"K\x07", b"J\x00\x00\x01\x00", b"\x85", b"\x86",
        b"\x87", b"t", b"l", b"a", b"e", b"s", b"u", b"d", b"0", b"1", b"h\x00", b"h\x01", b"q\x02",
        b"X\x03\x00\x00\x00key", b"\x8c\x02\xe2\x82", b"C\x04abcd", b"\x96\x04\x00\x00\x00\x00\x00\x00\x00abcd",
        b"\x95\x10\x00\x00\x00\x00\x00\x00\x00"]


@FUZZ
@given(st.lists(st.sampled_from(_OPS), max_size=400), st.integers(1, 200))
def test_fuzz_pickle_opcode_streams_are_bounded(ops, repeat):
    blob = b"\x80\x04" + b"".join(ops) * repeat + b"."
    with tempfile.TemporaryDirectory() as d:
        p = write(Path(d) / "m.pdparams", blob)
        out = _assert_bounded(p, seconds=2.0)
    if not isinstance(out, ConvertError):
        assert all(type(k) is str and type(v) is np.ndarray for k, v in out.items())


def test_a_state_dict_of_thousands_of_tiny_tensors_loads(tmp_path):
    """The budget must not refuse real checkpoints: 6,000 BN vectors of 4 floats, as
    paddle.save writes a small network's state dict (a 0.5 MB file that costs ~16x its size)."""
    state = {f"bn{i}.{p}": np.full(4, i, np.float32) for i in range(1500) for p in ("w_0", "b_0", "w_1", "w_2")}
    path = write(tmp_path / "m.pdparams", pickle.dumps(state, protocol=4))
    loaded = load_pickle(path)
    assert len(loaded) == 6000 and loaded["bn1499.w_2"][0] == 1499
