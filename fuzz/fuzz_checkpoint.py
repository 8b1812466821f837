"""atheris fuzz target for acnet_convert.read.checkpoint.read_checkpoint, the function `fuse` (and
`inspect`, `verify`) calls on SOURCE.

Each input is written to a temporary folder twice and read the two ways a checkpoint arrives: as
the one variable of a per-variable folder (`CKPT/fc_0.w_0`) and as a `.pdparams` file named by
itself (`CKPT/model.pdparams`). Any exception other than ConvertError is a finding, as is a
message that is not one printable line naming the file, or a result that is not str -> writable
C-contiguous ndarray. Run with a memory limit: the readers' budgets keep every input far below it.

    .venv/bin/pip install atheris
    mkdir -p /tmp/ckpt-corpus
    .venv/bin/python fuzz/fuzz_checkpoint.py --seed-corpus /tmp/ckpt-corpus   # write seeds
    .venv/bin/python fuzz/fuzz_checkpoint.py /tmp/ckpt-corpus -max_total_time=120 -rss_limit_mb=1024 -timeout=10
"""
from __future__ import annotations

import pickle
import sys
import tempfile
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["acnet_convert"]):
    from acnet_convert.read.checkpoint import read_checkpoint
    from acnet_convert.common.errors import ConvertError

import numpy as np  # noqa: E402  (not instrumented)

from fuzz.fuzz_lod_tensor import seeds as lod_seeds, write_seed_corpus  # noqa: E402

_ROOT = Path(tempfile.mkdtemp(prefix="fuzz-ckpt-"))
_PER_VARIABLE = _ROOT / "pv"
_PICKLE = _ROOT / "pk" / "model.pdparams"
_PER_VARIABLE.mkdir()
_PICKLE.parent.mkdir()


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def seeds() -> dict[str, bytes]:
    w = np.arange(24, dtype="<f4").reshape(2, 3, 2, 2)
    found = dict(lod_seeds())
    found.update({
        "pickle4": pickle.dumps({"w": w, "b": np.arange(3, dtype=np.int64), "w_velocity_0": w}, protocol=4),
        "pickle2_structured": pickle.dumps({"w": w[0, 0], "StructuredToParameterName@@": {"w": "fc_0.w_0"}},
                                           protocol=2),
        "pickle2_big": pickle.dumps({"w@@.0": w.reshape(-1)[:10], "w@@.1": w.reshape(-1)[10:],
                                     "UnpackBigParamInfor@@": {"w": {"OriginShape": w.shape,
                                                                     "slices": ["w@@.0", "w@@.1"]}}}, protocol=2),
        "pickle4_reducers": pickle.dumps({"a": _Reduce(tuple, (("n", w[0]),)),
                                          "b": _Reduce(eval, ("data", {"data": w[1]}))}, protocol=4),
        "pickle5": pickle.dumps({"s": np.float32(1.5), "v": np.arange(4.0)}, protocol=5),
        "pickle4_shared": pickle.dumps({f"k{i}": w for i in range(4)}, protocol=4),
    })
    return found


def _check_error(err: ConvertError, path: Path) -> None:
    msg = str(err)
    if str(path) not in msg or not msg.isprintable():
        raise AssertionError(f"bad error message: {msg!r}") from None


def _check_result(ck) -> None:
    for name, arr in ck.tensors.items():
        if type(name) is not str or type(arr) is not np.ndarray:
            raise AssertionError(f"tensor {name!r} is a {type(arr).__name__}")
        if not (arr.flags.c_contiguous and arr.flags.writeable) or arr.dtype.kind not in "biuf":
            raise AssertionError(f"tensor {name!r}: {arr.dtype} {arr.flags}")


def TestOneInput(data: bytes) -> None:
    _PER_VARIABLE.joinpath("fc_0.w_0").write_bytes(data)
    _PICKLE.write_bytes(data)
    for source, named in ((_PER_VARIABLE, _PER_VARIABLE / "fc_0.w_0"), (_PICKLE, _PICKLE)):
        try:
            ck = read_checkpoint(source)
        except ConvertError as err:
            _check_error(err, named)
            continue
        _check_result(ck)


def main() -> None:
    if write_seed_corpus(seeds):
        return
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
