"""A Paddle program file checked before Paddle reads it, and what it declares: its parameters
(name, dtype, shape), against which every tensor header of its `.pdiparams` is checked before
Paddle reads a byte of data.

Paddle's own parsers trust the file: a `.pdiparams` whose first header claims 2 GiB is read
whole (2.4 GB resident, then an error); an attribute that is an array of arrays, an i32 that does
not fit 32 bits, a value id that names no value, an op name no dialect registers reach C++ code
that raises, aborts or crashes. What is checked here is what is cheap to check without Paddle;
the op names Paddle knows are checked right after it parsed them (`program.load_program`).

PIR `.json` (paddle.jit.save, Paddle 3):

    {"base_code": {...}, "program": {"regions": [{"blocks": [{"args": [VALUE...], "ops": [OP...]}]}]}}
    OP     = {"#": "1.conv2d" (dialect.name) | "p" (a parameter), "I": [{"%": id}...] (0: none),
              "O": [VALUE...] (a parameter: one VALUE), "A": [ATTR...] (a parameter: [.., .., .., name]),
              "regions": [...] (control flow)}
    VALUE  = {"%": id, "TT": {"#": "0.t_dtensor", "D": [{"#": "0.t_f32"}, [dims], layout, lod, offset]}}
    ATTR   = {"N": name, "AT": {"#": "0.a_i32" | "0.a_array" | ..., "D": value}}

Legacy `.pdmodel`: a ProgramDesc protobuf; its parameters are block 0's persistable LoDTensor
variables. Either way `.pdiparams` holds them in the order of their sorted names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.protobuf_fields import fields, varint
from acnet_convert.common.text import one_line, printable
from acnet_convert.read.lod_tensor import VAR_TYPES, combined_headers

_PIR_DTYPES = {"t_f16": "float16", "t_f32": "float32", "t_f64": "float64", "t_bf16": "bfloat16", "t_i8": "int8",
               "t_ui8": "uint8", "t_i16": "int16", "t_i32": "int32", "t_i64": "int64", "t_bool": "bool"}
_INT_RANGES = {"a_i32": (-(1 << 31), (1 << 31) - 1), "a_i64": (-(1 << 63), (1 << 63) - 1)}
_MAX_DEPTH = 64  # regions inside ops inside regions: control flow nests a few levels


@dataclass(frozen=True)
class Parameter:
    name: str
    dtype: str  # numpy's name
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Declared:
    """What a program file declares: its top-level op names (in order) and its parameters
    (`complete` False: it also has persistable variables of kinds not checked here)."""

    ops: list[str]
    parameters: list[Parameter]
    complete: bool = True


# ----------------------------------------------------------------------------------------------
# PIR .json


def check_pir(data: bytes, shown: str) -> Declared:
    """Parse and check a PIR program's JSON; ConvertError naming the file (and the op) if it is
    not one Paddle can be given."""
    try:
        program = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConvertError(f"{shown} is not a Paddle program: not valid JSON ({one_line(err)})") from None
    except RecursionError:
        raise ConvertError(f"{shown} is not a Paddle program: JSON nested too deeply") from None
    if not isinstance(program, dict) or not isinstance(program.get("program"), dict):
        raise ConvertError(f"{shown} is not a Paddle inference program (no 'program' entry)")
    walk = _PirWalk(shown)
    regions = program["program"].get("regions")
    walk.regions(regions, "the program", [set()], 0)
    top = regions[0]["blocks"][0]["ops"] if regions and regions[0].get("blocks") else []
    return Declared([op["#"] for op in top], sorted(walk.parameters, key=lambda p: p.name))


class _PirWalk:
    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.parameters: list[Parameter] = []

    def bad(self, where: str, why: str) -> ConvertError:
        return ConvertError(f"{self.shown}: {where} {why}")

    def regions(self, regions: Any, where: str, scopes: list[set[int]], depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise self.bad(where, f"nests regions more than {_MAX_DEPTH} deep")
        if not isinstance(regions, list):
            raise self.bad(where, "has no list of regions")
        for region in regions:
            blocks = region.get("blocks") if isinstance(region, dict) else None
            if not isinstance(blocks, list):
                raise self.bad(where, "has a region without blocks")
            for block in blocks:
                if not isinstance(block, dict) or not isinstance(block.get("ops"), list):
                    raise self.bad(where, "has a block without ops")
                scope: set[int] = set()
                for arg in self.listed(block, "args", where):
                    self.define_argument(arg, scope, f"a block argument of {where}")
                for position, op in enumerate(block["ops"]):
                    self.op(op, position, [*scopes, scope], depth)

    def listed(self, owner: dict, key: str, where: str) -> list:
        """owner[key], a list (absent: empty)."""
        value = owner.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.bad(where, f"has {printable(key)} that is not a list")
        return value

    def define(self, value: Any, scope: set[int], where: str) -> None:
        ident = value.get("%") if isinstance(value, dict) else None
        if type(ident) is not int or ident <= 0:
            raise self.bad(where, "defines a value without a valid id")
        scope.add(ident)

    def define_argument(self, value: Any, scope: set[int], where: str) -> None:
        """A block argument (a loop's carried values): Paddle numbers them -1, -2, ... under "#"
        (its ops read them as %-1, ...)."""
        ident = value.get("#", value.get("%")) if isinstance(value, dict) else None
        if type(ident) is not int or ident == 0:
            raise self.bad(where, "defines a value without a valid id")
        scope.add(ident)

    def op(self, op: Any, position: int, scopes: list[set[int]], depth: int) -> None:
        name = op.get("#") if isinstance(op, dict) else None
        if not isinstance(name, str) or not name:
            raise self.bad(f"op #{position}", "has no name")
        where = f"op #{position} {printable(name.split('.', 1)[-1], 80)}"
        for operand in self.listed(op, "I", where):
            ident = operand.get("%") if isinstance(operand, dict) else None
            if type(ident) is not int:
                raise self.bad(where, "has an operand without a value id")
            if ident != 0 and not any(ident in scope for scope in scopes):  # 0: an absent optional operand
                raise self.bad(where, f"reads value %{ident}, which no op before it defines")
        results = op.get("O")
        if name == "p":
            self.parameter(op, where, scopes[-1])
            return
        if not isinstance(results, list):
            raise self.bad(where, "has no list of results")
        for result in results:
            self.define(result, scopes[-1], where)
        for attribute in self.listed(op, "A", where) + self.listed(op, "OA", where):
            self.attribute(attribute, where)
        if "regions" in op:
            self.regions(op["regions"], where, scopes, depth + 1)

    def parameter(self, op: dict, where: str, scope: set[int]) -> None:
        attrs, result = op.get("A"), op.get("O")
        if not isinstance(attrs, list) or len(attrs) < 4 or not isinstance(attrs[3], str):
            raise self.bad(where, "(a parameter) has no name")
        self.define(result, scope, where)
        dtype, shape = _tensor_type(result.get("TT"))
        if dtype is None or shape is None or any(d < 0 for d in shape):
            raise self.bad(f"parameter {printable(attrs[3])}", "has no fixed shape and data type")
        self.parameters.append(Parameter(attrs[3], dtype, shape))

    def attribute(self, attribute: Any, where: str) -> None:
        typed = attribute.get("AT") if isinstance(attribute, dict) else None
        name = printable(attribute.get("N", "?"), 60) if isinstance(attribute, dict) else "?"
        if not isinstance(typed, dict) or not isinstance(typed.get("#"), str):
            raise self.bad(where, f"has an attribute {name} without a type")
        kind = typed["#"].split(".", 1)[-1]
        value = typed.get("D")
        if kind == "a_array":
            if not isinstance(value, list):
                raise self.bad(where, f"attribute {name} is an array without elements")
            for element in value:
                inner = element.get("#") if isinstance(element, dict) else None
                if not isinstance(inner, str):
                    raise self.bad(where, f"attribute {name} has an element without a type")
                if inner.split(".", 1)[-1] == "a_array":
                    raise self.bad(where, f"attribute {name} is an array of arrays, which no op takes")
                self.attribute({"N": attribute.get("N"), "AT": element}, where)
        elif kind in _INT_RANGES:
            low, high = _INT_RANGES[kind]
            if type(value) is not int or not low <= value <= high:
                raise self.bad(where, f"attribute {name} = {printable(value, 40)} is not a {kind[3:]}-bit integer")


def _tensor_type(typed: Any) -> tuple[str | None, tuple[int, ...] | None]:
    data = typed.get("D") if isinstance(typed, dict) else None
    if not isinstance(data, list) or len(data) < 2 or not isinstance(data[0], dict):
        return None, None
    dtype = _PIR_DTYPES.get(str(data[0].get("#", "")).split(".", 1)[-1])
    dims = data[1]
    if not isinstance(dims, list) or any(type(d) is not int for d in dims):
        return dtype, None
    return dtype, tuple(dims)


# ----------------------------------------------------------------------------------------------
# legacy .pdmodel (ProgramDesc)


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value: an int, or the bytes of a length-delimited field)."""
    for number, wire, value, end in fields(data, 0, len(data)):
        yield number, wire, (value if wire == 0 else data[value:end])


_LOD_TENSOR = 7  # VarType.Type
_NOT_LOADED = {9, 10, 15}  # FEED_MINIBATCH, FETCH_LIST, READER: persistable, never in .pdiparams
_DTYPE_NAMES = {code: name for name, code in VAR_TYPES.items()}


def check_legacy(data: bytes, shown: str) -> Declared:
    """The persistable LoDTensors of a ProgramDesc's first block (its parameters)."""
    parameters, complete = [], True
    try:
        blocks = [value for number, wire, value in _fields(data) if number == 1 and wire == 2]
        if not blocks:
            raise ValueError("no block")
        for number, wire, var in _fields(blocks[0]):
            if number == 3 and wire == 2:
                kind, parameter = _legacy_var(var)
                if parameter is not None:
                    parameters.append(parameter)
                elif kind is not None:
                    complete = False
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        raise ConvertError(f"{shown} is not a Paddle program (ProgramDesc): {err}") from None
    return Declared([], sorted(parameters, key=lambda p: p.name), complete)


def _legacy_var(var: bytes) -> tuple[int | None, Parameter | None]:
    """VarDesc {1 name, 2 VarType {1 type, 3 LoDTensorDesc {1 TensorDesc {1 data_type, 2 dims}}},
    3 persistable}: a persistable LoDTensor's parameter; else the kind of a persistable variable
    Paddle would load too (None: not loaded)."""
    name, kind, persistable, dtype, dims = None, None, False, None, []
    for number, wire, value in _fields(var):
        if number == 1 and wire == 2:
            name = value.decode("utf-8")
        elif number == 3 and wire == 0:
            persistable = bool(value)
        elif number == 2 and wire == 2:
            for n, w, v in _fields(value):
                if n == 1 and w == 0:
                    kind = v
                elif n == 3 and w == 2:
                    for n2, w2, v2 in _fields(v):
                        if n2 == 1 and w2 == 2:
                            dtype, dims = _tensor_desc(v2)
    if not persistable or kind in _NOT_LOADED or name is None:
        return None, None
    if kind != _LOD_TENSOR:
        return kind, None
    return kind, Parameter(name, _DTYPE_NAMES.get(dtype, f"code {dtype}"), tuple(dims))


def _tensor_desc(desc: bytes) -> tuple[int | None, list[int]]:
    dtype, dims = None, []
    for number, wire, value in _fields(desc):
        if number == 1 and wire == 0:
            dtype = value
        elif number == 2 and wire == 0:
            dims.append(value - (1 << 64) if value >= 1 << 63 else value)
        elif number == 2 and wire == 2:
            i = 0
            while i < len(value):
                d, i = varint(value, i)
                dims.append(d - (1 << 64) if d >= 1 << 63 else d)
    return dtype, dims


# ----------------------------------------------------------------------------------------------
# .pdiparams against the program


def check_parameters(declared: Declared, read_at: Callable[[int, int], bytes], size: int, shown: str,
                     program: str) -> None:
    """Every tensor header of the `.pdiparams` file (`read_at`, `size` bytes) against the
    parameters the program declares, in order: same count, dtype and shape; no data is read.
    A program with persistable variables of other kinds gets its headers checked alone."""
    expected = declared.parameters
    if not declared.complete:
        for _ in combined_headers(read_at, size, shown):
            pass
        return
    count = 0
    for count, (dtype, shape) in enumerate(combined_headers(read_at, size, shown), 1):
        if count > len(expected):
            raise ConvertError(f"{shown} holds more tensors than the {len(expected)} parameters {program} declares: "
                               "not the parameters of this program")
        want = expected[count - 1]
        if dtype.name != want.dtype or tuple(shape) != want.shape:
            raise ConvertError(f"{shown}: tensor {count} is {_shape(shape)} {dtype.name} by its header, but {program} "
                               f"declares parameter {printable(want.name)} as {_shape(want.shape)} {want.dtype}: "
                               "not the parameters of this program")
    if count < len(expected):
        raise ConvertError(f"{shown} holds {count} tensors, but {program} declares {len(expected)} parameters "
                           f"(the first missing: {printable(expected[count].name)})")


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"
