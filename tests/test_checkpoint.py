"""Tests for acnet_convert.checkpoint: the per-variable and .pdparams readers."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acnet_convert.checkpoint import (
    _unpickle,
    is_training_state,
    load_pickle,
    read_checkpoint,
    read_lod_tensor,
)
from acnet_convert.errors import ConvertError

ROOT = Path(__file__).resolve().parents[1]
HAVE_PADDLE = importlib.util.find_spec("paddle") is not None

from tests.lod_bytes import CODES, desc, lod_file  # noqa: E402,F401


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


W = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 7.25


# --------------------------------------------------------------------------------------------
# the CKPT argument


def test_missing_checkpoint(tmp_path):
    p = tmp_path / "nope"
    with pytest.raises(ConvertError, match="does not exist") as e:
        read_checkpoint(p)
    assert str(p) in str(e.value)


def test_checkpoint_is_a_file(tmp_path):
    p = write(tmp_path / "model.pdparams", pickle.dumps({"w": W}))
    with pytest.raises(ConvertError, match="is a file, expected a checkpoint directory") as e:
        read_checkpoint(p)
    assert str(p) in str(e.value)


def test_empty_checkpoint(tmp_path):
    (tmp_path / "ck").mkdir()
    with pytest.raises(ConvertError, match="is empty") as e:
        read_checkpoint(tmp_path / "ck")
    assert str(tmp_path / "ck") in str(e.value)
    write(tmp_path / "ck" / ".DS_Store", b"junk")  # hidden files are not variables
    (tmp_path / "ck" / "subdir").mkdir()
    with pytest.raises(ConvertError, match="is empty"):
        read_checkpoint(tmp_path / "ck")


def test_two_pdparams(tmp_path):
    write(tmp_path / "a.pdparams", pickle.dumps({"w": W}))
    write(tmp_path / "b.pdparams", pickle.dumps({"w": W}))
    with pytest.raises(ConvertError, match=r"2 \.pdparams files \(a\.pdparams, b\.pdparams\)"):
        read_checkpoint(tmp_path)


def test_mixed_formats(tmp_path):
    write(tmp_path / "model.pdparams", pickle.dumps({"w": W}))
    write(tmp_path / "fc_0.w_0", lod_file(W))
    with pytest.raises(ConvertError, match="two checkpoint formats in one directory"):
        read_checkpoint(tmp_path)


def test_pdparams_siblings_are_not_read(tmp_path):
    write(tmp_path / "model.pdparams", pickle.dumps({"w": W, "fc_0.w_0_velocity_0": W}))
    write(tmp_path / "model.pdopt", b"\x80\x04garbage that is never read")
    write(tmp_path / "model.pdmodel", b"protobuf")
    write(tmp_path / "inference.pdiparams", lod_file(W))  # an OUT/ dir read as a checkpoint
    write(tmp_path / "manifest.json", b"{}")
    ck = read_checkpoint(tmp_path)
    assert ck.format == "pdparams"
    assert ck.files == [tmp_path / "model.pdparams"]
    assert list(ck.tensors) == ["w"] and ck.ignored == ["fc_0.w_0_velocity_0"]
    np.testing.assert_array_equal(ck.tensors["w"], W)


def test_inference_model_dir_is_explained(tmp_path):
    write(tmp_path / "inference.pdiparams", lod_file(W) + lod_file(W))
    write(tmp_path / "inference.pdmodel", b"protobuf")
    with pytest.raises(ConvertError, match="inference model"):
        read_checkpoint(tmp_path)


# --------------------------------------------------------------------------------------------
# per-variable LoDTensor files: good ones


@pytest.mark.parametrize("arr", [
    W, np.linspace(-1, 1, 7), np.arange(-3, 3, dtype=np.int64).reshape(2, 3),
    np.array([1, 2], dtype=np.int32), np.array([1, 255], dtype=np.uint8),
    np.array([-1, 7], dtype=np.int8), np.array([3, -4], dtype=np.int16),
    np.array([1.5, -2], dtype=np.float16), np.array(3.25, dtype=np.float32),
    np.zeros((0, 5), dtype=np.float32),
])
def test_lod_round_trip(arr):
    for packed in (False, True):
        out = read_lod_tensor(lod_file(arr, packed=packed), "x")
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)
        assert out.flags.c_contiguous and out.flags.writeable


def test_lod_bool_is_normalised():
    out = read_lod_tensor(lod_file(code=0, dims=[3], data=b"\x00\x01\x07"), "x")
    assert out.dtype == np.bool_ and out.tolist() == [False, True, True]


def test_lod_levels_are_skipped():
    out = read_lod_tensor(lod_file(W.reshape(6, 4), lod=[[0, 2, 6], [0, 1, 3, 4, 5, 6]]), "x")
    np.testing.assert_array_equal(out, W.reshape(6, 4))


def test_lod_unknown_protobuf_fields_are_skipped():
    d = desc(5, [2, 2]) + b"\x18\x05" + b"\x22\x02ab" + b"\x2d\x00\x00\x00\x00"
    out = read_lod_tensor(lod_file(desc_bytes=d, data=np.ones(4, "<f4").tobytes()), "x")
    assert out.shape == (2, 2)


def test_lod_from_file_objects(tmp_path):
    p = write(tmp_path / "w", lod_file(W))
    with open(p, "rb") as f:
        out = read_lod_tensor(f, str(p))
    np.testing.assert_array_equal(out, W)
    assert out.flags.writeable and out.flags.c_contiguous
    np.testing.assert_array_equal(read_lod_tensor(io.BytesIO(lod_file(W)), "w"), W)


# --------------------------------------------------------------------------------------------
# per-variable LoDTensor files: bad ones (each must name the file)

GOOD = lod_file(W)


@pytest.mark.parametrize("data, why", [
    (b"", "truncated in the header"),
    (GOOD[:3], "truncated in the header"),
    (GOOD[:10], "no LoD level"),
    (GOOD[:15], "no tensor version"),
    (GOOD[:18], "no descriptor size"),
    (GOOD[:-1], "truncated"),  # mid-data
    (GOOD[: len(GOOD) - 50], "truncated"),
    (GOOD + b"\x00", "trailing garbage"),
    (struct.pack("<I", 1) + GOOD[4:], "LoDTensor version 1"),
    (lod_file(W, tversion=2), "tensor version 2"),
    (lod_file(W, desc_size=-5), "descriptor size -5"),
    (lod_file(W, desc_size=0x7FFFFFFF), "descriptor size 2147483647"),
    (lod_file(code=99, dims=[2], data=b"\0" * 8), "unknown data type code 99"),
    (lod_file(code=7, dims=[2], data=b"\0" * 8), "unknown data type code 7"),
    (lod_file(code=22, dims=[2], data=b"\0" * 4), "bfloat16 tensors are not supported"),
    (lod_file(code=23, dims=[1], data=b"\0" * 8), "complex64 tensors are not supported"),
    (lod_file(code=24, dims=[1], data=b"\0" * 16), "complex128 tensors are not supported"),
    (lod_file(code=5, dims=[-2, -2], data=b"\0" * 16), "negative dimension -2"),
    (lod_file(code=5, dims=[1] * 65, data=b"\0" * 4), "more than 64 dimensions"),
    (lod_file(desc_bytes=b"\x10\x02", data=b"\0" * 8), "no data type"),
    (lod_file(desc_bytes=b"\x08\x05\x10", data=b""), "truncated TensorDesc varint"),
    (lod_file(desc_bytes=b"\x08" + b"\xff" * 11, data=b""), "overlong TensorDesc varint"),
    (lod_file(desc_bytes=b"\x08\x05\x12\x7f\x01", data=b""), "dims run past"),
    (lod_file(desc_bytes=b"\x08\x05\x1b", data=b""), "invalid wire type 3"),
    (lod_file(desc_bytes=b"\x00\x05", data=b""), "field number 0"),
    (struct.pack("<IQ", 0, 2**63) + GOOD[12:], "absurd LoD level"),
    (struct.pack("<IQQ", 0, 1, 2**40) + GOOD[12:], "does not fit"),
    (struct.pack("<IQQ", 0, 1, 7) + b"\0" * 7 + GOOD[12:], "does not fit"),
])
def test_lod_bad_files_name_the_file(data, why):
    with pytest.raises(ConvertError, match=why) as e:
        read_lod_tensor(data, "ck/conv1_weights")
    assert str(e.value).startswith("ck/conv1_weights: ")
    assert "\n" not in str(e.value)


def test_lod_huge_dims_refused_without_allocating():
    data = lod_file(code=6, dims=[2**40, 2**40], data=b"\0" * 64)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ConvertError, match="only 64 data bytes follow"):
            read_lod_tensor(data, "big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 0.5
    assert peak < 64 * 1024
    # the largest int64 dims, many of them: still refused quickly
    data = lod_file(code=5, dims=[2**63 - 1] * 64, data=b"")
    with pytest.raises(ConvertError, match="only 0 data bytes follow"):
        read_lod_tensor(data, "big")
    # a zero dim next to huge ones: 0 bytes is consistent, but numpy cannot build it
    with pytest.raises(ConvertError, match="big"):
        read_lod_tensor(lod_file(code=5, dims=[0, 2**62, 2**62], data=b""), "big")


def test_per_variable_dir_names_bad_file(tmp_path):
    write(tmp_path / "ck" / "fc_0.w_0", lod_file(W))
    write(tmp_path / "ck" / "fc_0.b_0", lod_file(np.ones(3, np.float32))[:-2])
    with pytest.raises(ConvertError) as e:
        read_checkpoint(tmp_path / "ck")
    assert str(tmp_path / "ck" / "fc_0.b_0") in str(e.value) and "truncated" in str(e.value)


def test_per_variable_dir_ignores_training_state_without_parsing(tmp_path):
    ck = tmp_path / "ck"
    write(ck / "res2a.acsquare.conv2d.output.1.b_0", lod_file(np.ones(4, np.float32)))
    write(ck / "conv1_acsquare_weights", lod_file(W))
    write(ck / "conv1_acsquare_weights_velocity_0", b"not a tensor at all")  # never parsed
    write(ck / "@LR_DECAY_COUNTER@", b"\xff")
    write(ck / "learning_rate_0", lod_file(np.array([0.1], np.float32)))
    c = read_checkpoint(ck)
    assert c.format == "per-variable"
    assert sorted(c.tensors) == ["conv1_acsquare_weights", "res2a.acsquare.conv2d.output.1.b_0"]
    assert c.ignored == ["@LR_DECAY_COUNTER@", "conv1_acsquare_weights_velocity_0",
                         "learning_rate_0"]
    assert len(c.files) == 5 and c.path == ck
    # the hash covers every file, ignored ones included, and only changes when a file does
    h0 = c.sha256
    assert read_checkpoint(ck).sha256 == h0
    (ck / "@LR_DECAY_COUNTER@").write_bytes(b"\xfe")
    h1 = read_checkpoint(ck).sha256
    assert h1 != h0
    (ck / "learning_rate_0").rename(ck / "learning_rate_1")
    assert read_checkpoint(ck).sha256 != h1


def test_sha256_formula(tmp_path):
    write(tmp_path / "a", lod_file(W))
    write(tmp_path / "b_velocity_0", b"xyz")
    h = hashlib.sha256()
    for name in ("a", "b_velocity_0"):
        data = (tmp_path / name).read_bytes()
        h.update(name.encode() + b"\0" + struct.pack("<Q", len(data)) + data)
    assert read_checkpoint(tmp_path).sha256 == h.hexdigest()
    write(tmp_path / "b_velocity_0", b"xyz")  # pickle dir: hash over the .pdparams only
    d = tmp_path / "p"
    raw = pickle.dumps({"w": W})
    write(d / "m.pdparams", raw)
    write(d / "m.pdopt", b"anything")
    h = hashlib.sha256(b"m.pdparams\0" + struct.pack("<Q", len(raw)) + raw)
    assert read_checkpoint(d).sha256 == h.hexdigest()


def _peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_about_one_copy(tmp_path):
    big = np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32)  # 4 MiB
    pv = tmp_path / "pv"
    write(pv / "fc_0.w_0", lod_file(big))
    write(pv / "fc_0.w_0_velocity_0", lod_file(big))  # hashed in chunks, not parsed
    ck, peak = _peak(lambda: read_checkpoint(pv))
    np.testing.assert_array_equal(ck.tensors["fc_0.w_0"], big)
    assert peak < big.nbytes * 1.1 + 2**20, peak
    del ck
    # pickles: arrays stay backed by the bytes read from the file (protocol 2: a transient of
    # a few times the tensor being decoded, never a second copy of everything)
    parts = {f"w{i}": big[: 320] + i for i in range(6)}  # 6 x 1.25 MiB
    total, largest = sum(a.nbytes for a in parts.values()), parts["w0"].nbytes
    for proto in (2, 3, 4, 5):
        pk = tmp_path / f"pk{proto}"
        write(pk / "m.pdparams", pickle.dumps(parts, protocol=proto))
        ck, peak = _peak(lambda: read_checkpoint(pk))
        _assert_same(ck.tensors, parts)
        limit = total * 1.05 + (5 * largest if proto == 2 else 0) + 2**20
        assert peak < limit, (proto, peak / total)
        del ck


@pytest.mark.parametrize("name, state", [
    ("fc_0.w_0", False), ("conv1_acsquare_weights", False), ("bn_conv1_acsquare_mean", False),
    ("bn_conv1_acsquare_variance", False), ("res2a.acsquare.conv2d.output.1.b_0", False),
    ("fc_0.w_0_velocity_0", True), ("x_moment1_0", True), ("x_moment2_12", True),
    ("x_beta1_pow_acc_0", True), ("x_beta2_pow_acc_3", True), ("learning_rate_0", True),
    ("@LR_DECAY_COUNTER@", True), ("fc_0.w_0@GRAD", True), ("x_mean_square_0", True),
    ("learning_rate", False), ("my_velocity", False),
])
def test_is_training_state(name, state):
    assert is_training_state(name) is state


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
    (pickle.dumps({1: W}), "a key of type int"),
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
    raw = _unpickle(_ck(tmp_path, blob))
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
        _unpickle(_ck(tmp_path, blob))


def test_pickle_numpy_dtype_segfault_regression(tmp_path):
    # in a subprocess: before the fix this killed the interpreter (SIGSEGV)
    p = _ck(tmp_path, NUMPY_DTYPE_SEGFAULT)
    code = ("import sys; from acnet_convert.checkpoint import load_pickle\n"
            "from acnet_convert.errors import ConvertError\n"
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


def test_does_not_import_paddle():
    code = ("import sys, time; t = time.perf_counter(); import acnet_convert.checkpoint; "
            "assert 'paddle' not in sys.modules, 'paddle imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --------------------------------------------------------------------------------------------
# round trips against files written by Paddle itself

_GEN_STATIC = r"""
import os, sys
import numpy as np
import paddle
paddle.enable_static()
out = sys.argv[1]
main, startup = paddle.static.Program(), paddle.static.Program()
extra = {
    "fp64_1d": np.linspace(-1, 1, 7),
    "int64_2d": np.arange(-3, 3, dtype="int64").reshape(2, 3),
    "fp32_4d": (np.arange(2 * 3 * 2 * 2, dtype="float32").reshape(2, 3, 2, 2) - 5.5),
    "int32_1d": np.array([1, 2, 3], dtype="int32"),
    "fp16_1d": np.array([1.5, -2.0], dtype="float16"),
    "scalar_0d": np.array(3.25, dtype="float32"),
    "@LR_DECAY_COUNTER@": np.array([7], dtype="int64"),
}
with paddle.static.program_guard(main, startup):
    x = paddle.static.data("image", [None, 3, 8, 8], "float32")
    c = paddle.static.nn.conv2d(x, 4, 3, param_attr=paddle.ParamAttr(name="conv1_acsquare_weights"),
                                bias_attr=False)
    f = paddle.static.nn.fc(paddle.flatten(c, 1), 5)
    loss = paddle.mean(f)
    paddle.optimizer.Momentum(0.1, momentum=0.9).minimize(loss)
    for n, a in extra.items():
        paddle.static.create_global_var(shape=list(a.shape), value=0, dtype=str(a.dtype),
                                        persistable=True, name=n)
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
scope = paddle.static.global_scope()
for n, a in extra.items():
    t = scope.find_var(n).get_tensor()
    t.set(a, paddle.CPUPlace())
    if n == "fp64_1d":
        t.set_lod([[0, 3, 7]])
exe.run(main, feed={"image": np.ones((2, 3, 8, 8), "float32")}, fetch_list=[loss])  # a step
pers = [v for v in main.list_vars() if v.persistable and v.name not in ("feed", "fetch")]
paddle.static.save_vars(exe, os.path.join(out, "pervar"), main, vars=pers)
np.savez(os.path.join(out, "pervar_expected.npz"),
         **{v.name: np.array(scope.find_var(v.name).get_tensor()) for v in pers})
paddle.static.save(main, os.path.join(out, "static", "model"))
params = [v for v in pers if isinstance(v, paddle.base.framework.Parameter)]
np.savez(os.path.join(out, "static_expected.npz"),
         **{v.name: np.array(scope.find_var(v.name).get_tensor()) for v in params})
paddle.save({"n": main.state_dict()}, os.path.join(out, "nested_static.pdparams"))
"""

_GEN_DYGRAPH = r"""
import os, sys
import numpy as np
import paddle
out = sys.argv[1]
paddle.seed(0)
class M(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = paddle.nn.Conv2D(3, 4, 3, weight_attr=paddle.ParamAttr(name="conv1_weights"))
        self.bn = paddle.nn.BatchNorm2D(4)
        self.fc = paddle.nn.Linear(4, 2)
    def forward(self, x):
        return self.fc(paddle.flatten(self.bn(self.conv(x)).mean([2, 3]), 1))
m = M()
opt = paddle.optimizer.Adam(parameters=m.parameters())
m(paddle.randn([2, 3, 5, 5])).mean().backward()
opt.step()
sd = m.state_dict()
os.makedirs(os.path.join(out, "dygraph"))
paddle.save(sd, os.path.join(out, "dygraph", "model.pdparams"))
paddle.save(opt.state_dict(), os.path.join(out, "dygraph", "model.pdopt"))
os.makedirs(os.path.join(out, "dygraph_p2"))
paddle.save(sd, os.path.join(out, "dygraph_p2", "model.pdparams"), protocol=2)
merged = dict(sd)
merged.update({k: v for k, v in opt.state_dict().items() if isinstance(v, paddle.Tensor)})
os.makedirs(os.path.join(out, "merged"))
paddle.save(merged, os.path.join(out, "merged", "all.pdparams"))
np.savez(os.path.join(out, "dygraph_expected.npz"), **{v.name: v.numpy() for v in sd.values()})
np.savez(os.path.join(out, "merged_expected.npz"),
         **{(v.name if k in sd else k): v.numpy() for k, v in merged.items()})
t = paddle.to_tensor(np.arange(6, dtype="float32").reshape(2, 3))
paddle.save({"a": t, "n": {"b": t}, "l": [t]}, os.path.join(out, "nested_dygraph.pdparams"))
"""


@pytest.fixture(scope="module")
def paddle_files(tmp_path_factory):
    if not HAVE_PADDLE:
        pytest.skip("paddle is not installed")
    out = tmp_path_factory.mktemp("paddle")
    gens = []
    for name, code, extra_env in (("static", _GEN_STATIC, {"FLAGS_enable_pir_api": "0"}),
                                  ("dygraph", _GEN_DYGRAPH, {})):
        script = out / f"gen_{name}.py"
        script.write_text(textwrap.dedent(code))
        env = dict(os.environ, GLOG_minloglevel="2", **extra_env)
        gens.append(subprocess.Popen([sys.executable, str(script), str(out)], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for g in gens:
        log = g.communicate(timeout=300)[0]
        assert g.returncode == 0, log.decode(errors="replace")[-3000:]
    return out


def _expected(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)
        assert got[k].flags.writeable and got[k].flags.c_contiguous


def test_paddle_save_vars_round_trip(paddle_files):
    ck = read_checkpoint(paddle_files / "pervar")
    want = _expected(paddle_files / "pervar_expected.npz")
    assert ck.format == "per-variable"
    ignored = sorted(k for k in want if is_training_state(k))
    assert ck.ignored == ignored
    assert "@LR_DECAY_COUNTER@" in ignored and "learning_rate_0" in ignored
    assert "conv1_acsquare_weights_velocity_0" in ignored and "fc_0.w_0_velocity_0" in ignored
    _assert_same(ck.tensors, {k: v for k, v in want.items() if k not in ignored})
    assert {"fp64_1d", "int64_2d", "fp32_4d", "scalar_0d", "conv1_acsquare_weights"} <= set(ck.tensors)
    assert ck.tensors["fp64_1d"].dtype == np.float64 and ck.tensors["int64_2d"].dtype == np.int64
    assert len(ck.files) == len(want)


def test_paddle_static_save_round_trip(paddle_files):
    ck = read_checkpoint(paddle_files / "static")  # model.pdparams + .pdopt + .pdmodel
    assert ck.format == "pdparams" and ck.ignored == []
    _assert_same(ck.tensors, _expected(paddle_files / "static_expected.npz"))


@pytest.mark.parametrize("sub", ["dygraph", "dygraph_p2"])
def test_paddle_save_state_dict_round_trip(paddle_files, sub):
    ck = read_checkpoint(paddle_files / sub)
    assert ck.format == "pdparams" and ck.ignored == []
    want = _expected(paddle_files / "dygraph_expected.npz")
    assert "conv1_weights" in want  # renamed from the structured name "conv.weight"
    _assert_same(ck.tensors, want)


def test_paddle_save_with_optimizer_state(paddle_files):
    ck = read_checkpoint(paddle_files / "merged")
    want = _expected(paddle_files / "merged_expected.npz")
    ignored = sorted(k for k in want if is_training_state(k))
    assert ck.ignored == ignored and any(k.endswith("_moment1_0") for k in ignored)
    assert any(k.endswith("_beta2_pow_acc_0") for k in ignored)
    _assert_same(ck.tensors, {k: v for k, v in want.items() if k not in ignored})


def _deep_equal(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
                and np.array_equal(a, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_deep_equal, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_deep_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_restricted_unpickler_matches_pickle_on_paddle_files(paddle_files):
    files = sorted(paddle_files.rglob("*.pdparams")) + sorted(paddle_files.rglob("*.pdopt"))
    assert len(files) >= 7
    for f in files:
        with open(f, "rb") as fh:
            assert _deep_equal(pickle.load(fh, encoding="latin1"), _unpickle(f)), f
    # nested objects are not flat checkpoints: refused with a clear message
    with pytest.raises(ConvertError, match="tensor 'n' is a dict"):
        load_pickle(paddle_files / "nested_static.pdparams")


# --------------------------------------------------------------------------------------------
# property-based: hostile bytes only ever give ConvertError or a well-formed array

FUZZ = settings(max_examples=200, deadline=1000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_lod(data: bytes) -> None:
    tracemalloc.start()
    try:
        arr = read_lod_tensor(data, "fuzz")
    except ConvertError as e:
        assert str(e).startswith("fuzz") and "\n" not in str(e)
        arr = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 2 * len(data) + 64 * 1024, (peak, len(data))
    if arr is not None:
        assert type(arr) is np.ndarray and arr.flags.c_contiguous and arr.flags.writeable
        assert arr.dtype in CODES and arr.nbytes <= len(data)


@st.composite
def arrays(draw):
    dtype = draw(st.sampled_from(sorted(CODES, key=str)))
    shape = tuple(draw(st.lists(st.integers(0, 4), max_size=4)))
    raw = draw(st.binary(min_size=int(np.prod(shape)) * dtype.itemsize,
                         max_size=int(np.prod(shape)) * dtype.itemsize))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


@st.composite
def mutated(draw, valid: bytes):
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "delete", "overwrite"]))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(pos, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "splice":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "overwrite":
            chunk = draw(st.sampled_from([b"\xff" * 8, b"\x00" * 8, struct.pack("<q", -1),
                                          struct.pack("<Q", 2**40), b"\x80" * 10]))
            data[pos:pos + len(chunk)] = chunk
    return bytes(data)


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_lod_random_bytes(data):
    _check_lod(data)


@FUZZ
@given(st.data(), arrays(), st.lists(st.lists(st.integers(0, 9), max_size=4), max_size=2),
       st.booleans())
def test_fuzz_lod_mutations(data, arr, lod, packed):
    valid = lod_file(arr, lod=lod, packed=packed)
    out = read_lod_tensor(valid, "fuzz")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == (arr != 0).tobytes() if arr.dtype == np.bool_ else out.tobytes() == arr.tobytes()
    _check_lod(data.draw(mutated(valid)))


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
        try:
            out = load_pickle(p)
        except ConvertError as e:
            assert str(p) in str(e) and "\n" not in str(e)
            return
    assert isinstance(out, dict)
    for k, v in out.items():
        assert isinstance(k, str) and type(v) is np.ndarray
        assert v.dtype.kind in "biufc" and v.flags.c_contiguous and v.flags.writeable
