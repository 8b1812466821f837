"""One small translation per ONNX op: an ONNX node in the graph's vocabulary (Paddle's op names,
operand order and attribute names, as `program_reader` writes them; see `graph.ir`).

A handler takes the node's inputs (names, None for an absent optional input), its decoded
attributes, its outputs and a `Context` that knows constant values and ranks; it returns
(op, inputs, attrs), or None when the node is not one the passes read (a Relu, a Gemm, a Conv
of another rank, a Slice with steps): the reader then keeps it as `onnx::<OpType>` with its own
attributes, and the writer keeps it as it was. A node the converter cannot accept at all (a
BatchNormalization in training mode) raises `BadNode` with the reason.

Pure Python and numpy: handlers see plain values, never a protobuf.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np

from acnet_convert.graph.ir import Input

Translation = tuple[str, tuple[Input, ...], dict[str, Any]]
Handler = Callable[[Sequence[Optional[str]], dict[str, Any], Sequence[str], "Context"], Optional[Translation]]
HANDLERS: dict[str, Handler] = {}
# onnx.TensorProto data types -> numpy's names (what TensorInfo.dtype and `cast` say)
DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
          10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


class BadNode(Exception):
    """A node the converter refuses (the reason; the reader names the file and the node)."""


class Context(Protocol):
    def constant(self, name: Optional[str]) -> np.ndarray | None: ...

    def rank(self, name: Optional[str]) -> int | None: ...

    def shape(self, name: Optional[str]) -> tuple[int, ...] | None: ...


def handles(*op_types: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for op in op_types:
            HANDLERS[op] = fn
        return fn

    return register


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _hw_pads(pads: Sequence[int]) -> list[int]:
    """ONNX's [top, left, bottom, right] as Paddle's [top, bottom, left, right]."""
    return [int(pads[0]), int(pads[2]), int(pads[1]), int(pads[3])]


_AUTO_PAD = {"NOTSET": "EXPLICIT", "": "EXPLICIT", "VALID": "VALID", "SAME_UPPER": "SAME", "SAME_LOWER": "SAME_LOWER"}


# ----------------------------------------------------------------------------------------------
# the ops of regions


@handles("Conv")
def _conv(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    rank = ctx.rank(inputs[1])
    kernel = a.get("kernel_shape")
    if (rank is not None and rank != 4) or (kernel is not None and len(kernel) != 2) or (rank is None and kernel is None):
        return None
    pads = a.get("pads", [0, 0, 0, 0])
    algorithm = _AUTO_PAD.get(str(a.get("auto_pad", "NOTSET")))
    strides, dilations = list(a.get("strides", [1, 1])), list(a.get("dilations", [1, 1]))
    if algorithm == "SAME_LOWER":  # Paddle has no such padding: explicit where the size is known
        pads = _same_lower(ctx.shape(inputs[0]), kernel or (ctx.shape(inputs[1]) or ())[2:], strides, dilations)
        algorithm = "EXPLICIT" if pads is not None else None
    if pads is None or len(pads) != 4 or algorithm is None:
        return None
    attrs = {"strides": strides, "paddings": _hw_pads(pads) if algorithm == "EXPLICIT" else [0, 0, 0, 0],
             "dilations": dilations, "groups": int(a.get("group", 1)), "padding_algorithm": algorithm,
             "data_format": "NCHW"}
    bias = inputs[2] if len(inputs) > 2 else None
    return "conv2d", (inputs[0], inputs[1]) if bias is None else (inputs[0], inputs[1], bias), attrs


def _same_lower(x: tuple[int, ...] | None, kernel: Sequence[int], strides: Sequence[int],
                dilations: Sequence[int]) -> list[int] | None:
    """ONNX's SAME_LOWER as [top, left, bottom, right] for a static input (the extra pixel goes
    before), or None."""
    if x is None or len(x) != 4 or min(x[2:]) < 1 or len(kernel) != 2:
        return None
    before, after = [], []
    for n, k, s, d in zip(x[2:], kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        before.append(total - total // 2)
        after.append(total // 2)
    return before + after


@handles("BatchNormalization")
def _batch_norm(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    if int(a.get("training_mode", 0)) or sum(1 for o in outputs if o) > 1:
        raise BadNode("a BatchNormalization in training mode (it updates running statistics): export the model in "
                      "eval mode, model.eval()")
    x, scale, offset, mean, variance = (list(inputs) + [None] * 5)[:5]
    attrs = {"epsilon": float(a.get("epsilon", 1e-5)), "momentum": float(a.get("momentum", 0.9)), "is_test": True,
             "use_global_stats": False, "trainable_statistics": False, "data_format": "NCHW"}
    return "batch_norm", (x, mean, variance, scale, offset), attrs


_BINARY = {"Add": "add", "Sub": "subtract", "Mul": "multiply", "Div": "divide", "Pow": "elementwise_pow",
           "Equal": "equal", "Max": "maximum", "Min": "minimum"}


@handles(*_BINARY)
def _binary(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    op = _BINARY[str(a["__op__"])]
    if len(inputs) != 2:  # Max / Min take any number of operands
        return None
    return op, (inputs[0], inputs[1]), {}


@handles("Sum")
def _sum(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    return "add_n", (tuple(t for t in inputs if t),), {}


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


@handles("Pad")
def _pad(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    x = inputs[0]
    pads, rank = ctx.constant(inputs[1] if len(inputs) > 1 else None), ctx.rank(x)
    mode = _PAD_MODES.get(str(a.get("mode", "constant")))
    if pads is None or rank is None or mode is None:
        return None
    pads = _ints(pads)
    half = len(pads) // 2
    axes_name = inputs[3] if len(inputs) > 3 else None
    axes = list(range(rank)) if axes_name is None else ctx.constant(axes_name)
    if axes is None:
        return None
    axes = [v % rank for v in _ints(axes)]
    if len(axes) != half or len(pads) % 2:
        raise BadNode(f"pads {pads} do not fit axes {axes}")
    paddings = [0] * (2 * rank)
    for k, axis in enumerate(axes):
        paddings[2 * axis], paddings[2 * axis + 1] = pads[k], pads[k + half]
    value_name = inputs[2] if len(inputs) > 2 else None
    value = ctx.constant(value_name) if value_name else None
    pad_value = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) == 1 else 0.0
    attrs = {"paddings": paddings, "mode": mode, "pad_value": pad_value, "data_format": "NCHW"}
    return "pad", (x,) if value_name is None else (x, value_name), attrs


@handles("Slice")
def _slice(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    x, starts, ends = inputs[0], inputs[1], inputs[2]
    axes_name = inputs[3] if len(inputs) > 3 else None
    steps_name = inputs[4] if len(inputs) > 4 else None
    if steps_name is not None:
        steps = ctx.constant(steps_name)
        if steps is None or any(s != 1 for s in _ints(steps)):
            return None
    if axes_name is not None:
        axes = ctx.constant(axes_name)
        if axes is None:
            return None
        axes = _ints(axes)
    else:
        count = ctx.constant(starts)
        count = count if count is not None else ctx.constant(ends)
        if count is None:
            return None
        axes = list(range(np.size(count)))
    return "slice", (x, starts, ends), {"axes": axes, "infer_flags": [1] * len(axes), "decrease_axis": []}


@handles("AveragePool")
def _average_pool(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    kernel = list(a.get("kernel_shape", []))
    pads = a.get("pads", [0, 0, 0, 0])
    algorithm = _AUTO_PAD.get(str(a.get("auto_pad", "NOTSET")))
    if len(kernel) != 2 or len(pads) != 4 or algorithm is None or any(d != 1 for d in a.get("dilations", [1, 1])):
        return None
    attrs = {"pooling_type": "avg", "kernel_size": kernel, "strides": list(a.get("strides", [1, 1])),
             "paddings": _hw_pads(pads) if algorithm == "EXPLICIT" else [0, 0, 0, 0],
             "exclusive": not int(a.get("count_include_pad", 0)), "ceil_mode": bool(a.get("ceil_mode", 0)),
             "padding_algorithm": algorithm, "global_pooling": False, "adaptive": False, "data_format": "NCHW"}
    return "pool2d", (inputs[0],), attrs


# ----------------------------------------------------------------------------------------------
# constants, shapes and layout: what constant folding reads


@handles("Identity")
def _identity(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    return "assign", (inputs[0],), {}


@handles("Concat")
def _concat(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    return "concat", (tuple(t for t in inputs if t),), {"axis": int(a.get("axis", 0))}


@handles("Shape")
def _shape(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    if "start" in a or "end" in a:
        return None
    return "shape64", (inputs[0],), {}


@handles("Expand")
def _expand(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    return "expand", (inputs[0], inputs[1]), {}


@handles("Reshape")
def _reshape(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    if int(a.get("allowzero", 0)):  # Paddle's 0 copies the input's dimension, as ONNX's default does
        return None
    return "reshape", (inputs[0], inputs[1]), {}


@handles("Transpose")
def _transpose(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    perm = a.get("perm")
    if perm is None:
        rank = ctx.rank(inputs[0])
        if rank is None:
            return None
        perm = list(reversed(range(rank)))
    return "transpose", (inputs[0],), {"perm": [int(p) for p in perm]}


@handles("Unsqueeze", "Squeeze")
def _squeeze(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    op = "unsqueeze" if a["__op__"] == "Unsqueeze" else "squeeze"
    axes = inputs[1] if len(inputs) > 1 else None
    return op, (inputs[0],) if axes is None else (inputs[0], axes), {}


@handles("Cast")
def _cast(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    dtype = DTYPES.get(int(a.get("to", 0)))
    return None if dtype is None else ("cast", (inputs[0],), {"dtype": dtype})


@handles("ConstantOfShape")
def _constant_of_shape(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    value = a.get("value")
    array = np.zeros(1, np.float32) if value is None else np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "fiub":
        return None
    scalar = array.reshape(-1)[0].item()
    return "full", (inputs[0],), {"value": scalar, "dtype": array.dtype.name}


_UNARY = {"Sqrt": "sqrt", "Reciprocal": "reciprocal", "Exp": "exp", "Abs": "abs", "Log": "log", "Floor": "floor",
          "Ceil": "ceil", "Not": "logical_not"}


@handles(*_UNARY)
def _unary(inputs: Sequence[Optional[str]], a: dict[str, Any], outputs: Sequence[str], ctx: Context) -> Optional[Translation]:
    return _UNARY[str(a["__op__"])], (inputs[0],), {}


def translate(op_type: str, inputs: Sequence[Optional[str]], attrs: dict[str, Any], outputs: Sequence[str],
              ctx: Context) -> Optional[Translation]:
    """The node in the graph's vocabulary, or None (kept as `onnx::<op_type>`)."""
    handler = HANDLERS.get(op_type)
    if handler is None:
        return None
    return handler(inputs, {**attrs, "__op__": op_type}, outputs, ctx)
