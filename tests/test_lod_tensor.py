"""Tests for acnet_convert.read.lod_tensor: Paddle's serialized LoDTensor, read and written."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acnet_convert.common.errors import ConvertError
from acnet_convert.read.lod_tensor import lod_tensor_bytes, read_lod_tensor, write_lod_tensor
from tests.lod_bytes import CODES, desc, lod_file

HAVE_PADDLE = importlib.util.find_spec("paddle") is not None
W = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2) - 7.25


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path

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
    (struct.pack("<I", 1) + GOOD[4:], "LoDTensor version field is not 0"),
    (lod_file(W, tversion=2), "tensor version field is not 0"),
    (lod_file(W, desc_size=70000) + b"\0" * 70000, "descriptor size 70000 is too large"),
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


# --------------------------------------------------------------------------------------------
# huge and stray files (issue 12, rows 6 and 11)


def _sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # a hole: no disk space, but fstat says `size`
    return path


@pytest.mark.parametrize("head, why", [
    (b"\x07" + GOOD[1:], "version field is not 0"),  # a bad header
    (GOOD, "trailing garbage"),  # a good header that promises 96 bytes, not a terabyte
    (lod_file(code=5, dims=[2**38], data=b""), r"header says 274877906944 float32 but only \d+ data bytes"),
])
def test_header_and_size_are_checked_before_the_data_is_read(tmp_path, head, why):
    # the old reader read the whole file first: 30 s and 6.3 GB for 6 GB, MemoryError for 1 TB
    p = _sparse(tmp_path / "w", head, 1 << 40)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with open(p, "rb") as f, pytest.raises(ConvertError, match=why) as e:
            read_lod_tensor(f, str(p))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1 and peak < 256 * 1024, peak
    assert str(e.value).startswith(f"{p}: ")


def test_messages_quote_no_bytes_of_a_stray_file():
    # a text file where a tensor belongs: its first bytes are not echoed as a "version" number
    for data in (b"TOPSECRET password=hunter2\n", b"\0\0\0\0TOPSECRET\n" * 4):
        with pytest.raises(ConvertError) as e:
            read_lod_tensor(data, "ck/fc_0.w_0")
        msg = str(e.value)
        assert "TOPS" not in msg and str(struct.unpack("<I", b"TOPS")[0]) not in msg, msg
        assert str(struct.unpack("<Q", b"TOPSECRE")[0]) not in msg, msg


def test_names_are_escaped_in_messages():
    with pytest.raises(ConvertError) as e:
        read_lod_tensor(b"junk", "ck/x\nerror: all good\x1b[2J")
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    assert msg.startswith("ck/x\\nerror: all good\\x1b[2J: ")


def test_hasher_sees_every_byte(tmp_path):
    data = lod_file(W.reshape(6, 4), lod=[[0, 2, 6]])
    p = write(tmp_path / "w", data)
    for source in (data, open(p, "rb")):
        h = hashlib.sha256()
        read_lod_tensor(source, "w", h)
        assert h.hexdigest() == hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# writing


ALL_DTYPES = [np.bool_, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64, np.uint8, np.int8]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 2, 2), (5,), (), (0, 3)])
def test_writer_round_trips(tmp_path, dtype, shape):
    arr = (np.arange(int(np.prod(shape))).reshape(shape) % 7 - 3).astype(dtype)
    data = lod_tensor_bytes(arr)
    assert data == lod_file(arr)  # the hand-written layout of tests/lod_bytes.py
    out = read_lod_tensor(data, "x")
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)
    write_lod_tensor(tmp_path / "x", arr)
    assert (tmp_path / "x").read_bytes() == data


def test_writer_takes_any_layout_and_byte_order():
    arr = np.arange(12, dtype=">f8").reshape(3, 4).T  # big-endian, not C-contiguous
    assert lod_tensor_bytes(arr) == lod_tensor_bytes(np.ascontiguousarray(arr, dtype="<f8"))
    np.testing.assert_array_equal(read_lod_tensor(lod_tensor_bytes(arr), "x"), arr)


@pytest.mark.parametrize("arr", [np.zeros(2, np.complex64), np.zeros(2, np.uint32), np.array(["a"]),
                                 np.array([None])])
def test_writer_refuses_what_paddle_cannot_hold(arr):
    with pytest.raises(ValueError, match="no type for"):
        lod_tensor_bytes(arr)


_PADDLE_CHILD = r"""
import os, sys
import numpy as np
import paddle
paddle.enable_static()
saved, ours, out = sys.argv[1:4]
arrays = dict(np.load(os.path.join(out, "arrays.npz")))
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    made = [paddle.static.create_global_var(shape=list(a.shape), value=0, dtype=str(a.dtype),
                                            persistable=True, name=n) for n, a in arrays.items()]
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
scope = paddle.static.global_scope()
for n, a in arrays.items():
    scope.find_var(n).get_tensor().set(a, paddle.CPUPlace())
paddle.static.save_vars(exe, saved, main, vars=made)  # Paddle's own files, to compare bytes with
for n in arrays:
    scope.find_var(n).get_tensor().set(np.zeros_like(arrays[n]), paddle.CPUPlace())
paddle.static.load_vars(exe, ours, main, vars=made)  # the files our writer made
np.savez(os.path.join(out, "loaded.npz"), **{n: np.array(scope.find_var(n).get_tensor()) for n in arrays})
"""


@pytest.mark.skipif(not HAVE_PADDLE, reason="paddle is not installed")
def test_paddle_writes_the_same_bytes_and_loads_ours(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "conv1_acsquare_weights": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "fc_0.b_0": rng.standard_normal(5).astype(np.float32),
        "fp64_2d": rng.standard_normal((2, 3)),
        "fp16_1d": np.array([1.5, -2], np.float16),
        "int64_1d": np.arange(-3, 3, dtype=np.int64),
        "int32_3d": np.arange(24, dtype=np.int32).reshape(2, 3, 4),
        "uint8_1d": np.array([0, 255, 7], np.uint8),
        "int8_1d": np.array([-128, 127], np.int8),
        "scalar_0d": np.array(3.25, np.float32),
    }  # no bool: Paddle has no save/load kernel for it
    ours = tmp_path / "ours"
    ours.mkdir()
    for name, arr in arrays.items():
        write_lod_tensor(ours / name, arr)
    np.savez(tmp_path / "arrays.npz", **arrays)
    (tmp_path / "child.py").write_text(textwrap.dedent(_PADDLE_CHILD))
    # Paddle's legacy static API (save_vars / load_vars) needs PIR off before paddle is imported
    env = dict(os.environ, FLAGS_enable_pir_api="0", GLOG_minloglevel="2")
    run = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path / "saved"), str(ours),
                          str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    for name, arr in arrays.items():
        assert (tmp_path / "saved" / name).read_bytes() == lod_tensor_bytes(arr), name
    with np.load(tmp_path / "loaded.npz") as loaded:
        for name, arr in arrays.items():
            assert loaded[name].dtype == arr.dtype and loaded[name].shape == arr.shape, name
            np.testing.assert_array_equal(loaded[name], arr, err_msg=name)
