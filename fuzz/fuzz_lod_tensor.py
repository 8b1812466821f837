"""atheris fuzz target for acnet_convert.read.lod_tensor.read_lod_tensor (the parser alone, fast; the
function `fuse` calls is fuzzed by fuzz_checkpoint.py).

Any exception other than ConvertError is a finding, as is a returned array that is not a
writable C-contiguous array no larger than the input.

    .venv/bin/pip install atheris
    mkdir -p /tmp/lod-corpus
    .venv/bin/python fuzz/fuzz_lod_tensor.py --seed-corpus /tmp/lod-corpus   # write seeds
    .venv/bin/python fuzz/fuzz_lod_tensor.py /tmp/lod-corpus -max_total_time=120 -rss_limit_mb=1024
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["acnet_convert"]):
    from acnet_convert.read.lod_tensor import read_lod_tensor
    from acnet_convert.common.errors import ConvertError

import numpy as np  # noqa: E402  (not instrumented)

from tests.lod_bytes import lod_file  # noqa: E402


def _lod(code: int, dims, data: bytes, lod=(), packed=False) -> bytes:
    return lod_file(code=code, dims=list(dims), data=data, lod=lod, packed=packed)


def seeds() -> dict[str, bytes]:
    w = np.arange(24, dtype="<f4").reshape(2, 3, 2, 2)
    return {
        "fp32_4d": _lod(5, w.shape, w.tobytes()),
        "fp64_1d_packed": _lod(6, [3], np.ones(3, "<f8").tobytes(), packed=True),
        "int64_lod": _lod(3, [3, 1], np.arange(3, dtype="<i8").tobytes(), lod=[[0, 1, 3]]),
        "fp16": _lod(4, [2], np.ones(2, "<f2").tobytes()),
        "bool": _lod(0, [3], b"\x00\x01\x02"),
        "scalar": _lod(5, [], b"\x00\x00\x50\x40"),
        "empty": _lod(5, [0, 4], b""),
        "uint8": _lod(20, [2], b"\x01\xff"),
    }


def TestOneInput(data: bytes) -> None:
    try:
        arr = read_lod_tensor(data, "fuzz")
    except ConvertError as e:
        msg = str(e)
        if not msg.startswith("fuzz") or "\n" in msg:
            raise AssertionError(f"bad error message: {msg!r}") from None
        return
    if type(arr) is not np.ndarray or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise AssertionError("result is not a writable C-contiguous ndarray")
    if arr.nbytes > len(data):
        raise AssertionError(f"array of {arr.nbytes} bytes from {len(data)} input bytes")


def write_seed_corpus(make_seeds: Callable[[], dict[str, bytes]]) -> bool:
    """With `--seed-corpus DIR`: write the seeds into DIR and say so (True); else False."""
    if len(sys.argv) != 3 or sys.argv[1] != "--seed-corpus":
        return False
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    found = make_seeds()
    for name, blob in found.items():
        (out / name).write_bytes(blob)
    print(f"wrote {len(found)} seeds to {out}")
    return True


def main() -> None:
    if write_seed_corpus(seeds):
        return
    for blob in seeds().values():  # the seeds themselves must parse
        TestOneInput(blob)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
