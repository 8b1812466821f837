"""atheris fuzz target for the checks a Paddle program passes before Paddle reads it
(acnet_convert.read.program_check): the PIR `.json` walk, the legacy `.pdmodel` (ProgramDesc
protobuf) parameter list, and every `.pdiparams` tensor header against the parameters declared.

Each input is split in two at its first NUL byte: a program (tried as PIR JSON and as a
ProgramDesc) and a parameters file. Any exception other than ConvertError is a finding, as is a
message that is not one printable line naming the file, or a program whose declared parameters
are not (name, numpy dtype, non-negative shape). No Paddle in this process: what these checks
let through is what Paddle would be given.

    .venv/bin/pip install atheris
    mkdir -p /tmp/program-corpus
    .venv/bin/python fuzz/fuzz_program.py --seed-corpus /tmp/program-corpus   # write seeds
    .venv/bin/python fuzz/fuzz_program.py /tmp/program-corpus -max_total_time=120 -rss_limit_mb=1024 -timeout=10
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["acnet_convert"]):
    from acnet_convert.common.errors import ConvertError
    from acnet_convert.read.program_check import check_legacy, check_parameters, check_pir

from fuzz.fuzz_lod_tensor import write_seed_corpus  # noqa: E402

PROGRAM, PARAMS = "model/inference.json", "model/inference.pdiparams"


def _value(ident: int, dims: list[int], dtype: str = "0.t_f32") -> dict:
    return {"%": ident, "TT": {"#": "0.t_dtensor", "D": [{"#": dtype}, dims, "NCHW", [], 0]}}


def _pir(ops: list[dict]) -> bytes:
    return json.dumps({"base_code": {"magic": "pir", "version": 4},
                       "program": {"regions": [{"#": "region_0", "blocks": [{"#": "block_0", "args": [], "ops": ops}]}]}}).encode()


def _header(dims: list[int], code: int = 5) -> bytes:
    desc = b"\x08" + bytes([code]) + b"".join(b"\x10" + bytes([d]) for d in dims)
    return struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc


def _tensor(dims: list[int]) -> bytes:
    count = 1
    for d in dims:
        count *= d
    return _header(dims) + bytes(4 * count)


def _ints(values: list[int]) -> dict:
    return {"#": "0.a_array", "D": [{"#": "0.a_i32", "D": v} for v in values]}


def _conv_program() -> bytes:
    return _pir([
        {"#": "p", "A": [0, 1, 1, "w"], "DA": [], "O": _value(1, [2, 3, 3, 3]), "OA": [1, 0, 1], "QA": []},
        {"#": "1.data", "A": [{"AT": {"#": "0.a_str", "D": "image"}, "N": "name"}], "I": [], "O": [_value(2, [-1, 3, 8, 8])]},
        {"#": "1.conv2d", "A": [{"AT": _ints([1, 1]), "N": "strides"}, {"AT": _ints([1, 1]), "N": "paddings"},
                                {"AT": {"#": "0.a_i32", "D": 1}, "N": "groups"}],
         "I": [{"%": 2}, {"%": 1}], "O": [_value(3, [-1, 2, 8, 8])]},
        {"#": "1.fetch", "A": [{"AT": {"#": "0.a_str", "D": "out"}, "N": "name"}], "I": [{"%": 3}], "O": [_value(4, [-1, 2, 8, 8])]},
    ])


def _legacy_program() -> bytes:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    tensor = field(1, b"\x08\x05\x10\x02\x10\x03")  # TensorDesc {FP32, [2, 3]}
    var_type = b"\x08\x07" + field(3, field(1, tensor))  # VarType {LOD_TENSOR, lod_tensor}
    var = field(1, b"w") + field(2, var_type) + b"\x18\x01"  # VarDesc {name, type, persistable}
    return field(1, b"\x08\x00\x10\x00" + field(3, var))  # ProgramDesc {BlockDesc {idx, parent, vars}}


def seeds() -> dict[str, bytes]:
    return {
        "pir_conv": _conv_program() + b"\0" + _tensor([2, 3, 3, 3]),
        "pir_wrong_params": _conv_program() + b"\0" + _tensor([2, 3]),
        "pir_huge_header": _conv_program() + b"\0" + _header([0x7F, 0x7F, 0x7F, 0x7F]),
        "legacy": _legacy_program() + b"\0" + _tensor([2, 3]),
        "legacy_two_tensors": _legacy_program() + b"\0" + _tensor([2, 3]) + _tensor([1]),
        "empty": b"\0",
    }


def _check_error(err: ConvertError, *names: str) -> None:
    msg = str(err)
    if not msg.isprintable() or not any(name in msg for name in names):
        raise AssertionError(f"bad error message: {msg!r}") from None


def TestOneInput(data: bytes) -> None:
    program, _, params = data.partition(b"\0")
    for check in (check_pir, check_legacy):
        try:
            declared = check(program, PROGRAM)
        except ConvertError as err:
            _check_error(err, PROGRAM)
            continue
        for p in declared.parameters:
            if type(p.name) is not str or type(p.dtype) is not str or any(type(d) is not int or d < 0 for d in p.shape):
                raise AssertionError(f"declared parameter {p!r}")
        try:
            check_parameters(declared, lambda pos, n: params[pos:pos + n], len(params), PARAMS, "inference.json")
        except ConvertError as err:
            _check_error(err, PARAMS, "inference.json")


def main() -> None:
    if write_seed_corpus(seeds):
        return
    for blob in seeds().values():  # the seeds themselves must pass through without a finding
        TestOneInput(blob)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
