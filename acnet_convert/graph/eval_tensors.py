"""Evaluators of constants, shapes and arithmetic (what constant folding computes), float64."""
from __future__ import annotations

from typing import Any

import numpy as np

from acnet_convert.fold import numeric
from acnet_convert.graph.eval_base import Unevaluable, as_float, dtype_of, ints, keep_float, registry, scalar
from acnet_convert.graph.ir import Node

TABLE, evaluates = registry()


# ----------------------------------------------------------------------------------------------
# constants and shapes


@evaluates("full")
def _full(node: Node, args: list[Any]) -> np.ndarray:
    shape = ints(args[0] if args else None, node.attrs.get("shape", [1]))
    return keep_float(np.full(shape, node.attrs.get("value", 0.0)), dtype_of(node.attrs.get("dtype", "float32")))


@evaluates("full_int_array")
def _full_int_array(node: Node, args: list[Any]) -> np.ndarray:
    return np.asarray(node.attrs.get("value", []), dtype=dtype_of(node.attrs.get("dtype", "int64")))


@evaluates("assign_value")
def _assign_value(node: Node, args: list[Any]) -> np.ndarray:
    values, shape = node.attrs.get("values"), node.attrs.get("shape")
    if values is None or shape is None:
        raise Unevaluable("assign_value without values")
    return keep_float(np.asarray(values).reshape([int(d) for d in shape]), dtype_of(node.attrs.get("dtype", "float32")))


@evaluates("full_like")
def _full_like(node: Node, args: list[Any]) -> np.ndarray:
    dtype = node.attrs.get("dtype")
    target = dtype_of(dtype) if dtype not in (None, "undefined", "Undefined") else np.asarray(args[0]).dtype
    return keep_float(np.full(np.shape(args[0]), scalar(args[1] if len(args) > 1 else None, node.attrs.get("value", 0.0))), target)


@evaluates("shape", "shape64")
def _shape(node: Node, args: list[Any]) -> np.ndarray:
    return np.asarray(np.shape(args[0]), dtype=np.int64 if node.op == "shape64" else np.int32)


@evaluates("assign", "assign_out_")
def _assign(node: Node, args: list[Any]) -> Any:
    return args[0]


@evaluates("cast")
def _cast(node: Node, args: list[Any]) -> np.ndarray:
    return keep_float(np.asarray(args[0]), dtype_of(node.attrs.get("dtype", "float32")))


@evaluates("reshape")
def _reshape(node: Node, args: list[Any]) -> np.ndarray:
    x = np.asarray(args[0])
    shape = ints(args[1] if len(args) > 1 else None, node.attrs.get("shape"))
    shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]  # 0 copies the input's dimension
    out = x.reshape(shape)
    return (out, None) if len(node.outputs) > 1 else out


@evaluates("expand")
def _expand(node: Node, args: list[Any]) -> np.ndarray:
    x = np.asarray(args[0])
    shape = ints(args[1] if len(args) > 1 else None, node.attrs.get("shape"))
    lead = len(shape) - x.ndim
    target = [x.shape[i - lead] if d == -1 else d for i, d in enumerate(shape)]
    return np.broadcast_to(x, target).copy()


@evaluates("tile")
def _tile(node: Node, args: list[Any]) -> np.ndarray:
    return np.tile(np.asarray(args[0]), ints(args[1] if len(args) > 1 else None, node.attrs.get("repeat_times")))


@evaluates("concat")
def _concat(node: Node, args: list[Any]) -> np.ndarray:
    parts = [np.asarray(a) for a in args[0]]
    axis = int(scalar(args[1] if len(args) > 1 else None, node.attrs.get("axis", 0)))
    return np.concatenate(parts, axis=axis)


@evaluates("stack")
def _stack(node: Node, args: list[Any]) -> np.ndarray:
    return np.stack([np.asarray(a) for a in args[0]], axis=int(node.attrs.get("axis", 0)))


@evaluates("transpose")
def _transpose(node: Node, args: list[Any]) -> np.ndarray:
    return np.transpose(np.asarray(args[0]), [int(p) for p in node.attrs.get("perm", [])])


@evaluates("squeeze", "unsqueeze")
def _squeeze(node: Node, args: list[Any]) -> Any:
    x = np.asarray(args[0])
    axes = ints(args[1] if len(args) > 1 else None, node.attrs.get("axis", []))
    if node.op == "unsqueeze":
        for a in sorted(a + x.ndim + 1 if a < 0 else a for a in axes):
            x = np.expand_dims(x, a)
    else:
        axes = [a % x.ndim for a in axes] if axes else [i for i, d in enumerate(x.shape) if d == 1]
        x = np.squeeze(x, axis=tuple(a for a in axes if x.shape[a] == 1))
    return (x, None) if len(node.outputs) > 1 else x


@evaluates("slice")
def _slice(node: Node, args: list[Any]) -> Any:
    starts, ends = ints(args[1]), ints(args[2])
    if isinstance(args[0], numeric.RankOne) and {int(a) % 4 for a in node.attrs.get("axes", [])} <= {2, 3} \
            and not node.attrs.get("decrease_axis"):  # a crop of H/W keeps the channels' scale
        hw = [slice(None), slice(None)]
        for axis, start, end in zip(node.attrs.get("axes", []), starts, ends):
            hw[int(axis) % 4 - 2] = slice(start, min(end, 1 << 62))
        return args[0].cropped((hw[0], hw[1]))
    x = np.asarray(args[0])
    index: list[Any] = [slice(None)] * x.ndim
    for axis, start, end in zip(node.attrs.get("axes", []), starts, ends):
        index[int(axis)] = slice(start, min(end, 1 << 62))
    out = x[tuple(index)]
    decrease = [int(a) for a in node.attrs.get("decrease_axis", [])]
    if decrease:
        out = np.squeeze(out, axis=tuple(decrease))
    return out


# ----------------------------------------------------------------------------------------------
# arithmetic


_BINARY = {
    "add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide,
    "maximum": np.maximum, "minimum": np.minimum, "elementwise_pow": np.power,
    "equal": np.equal, "not_equal": np.not_equal, "greater_than": np.greater, "less_than": np.less,
    "greater_equal": np.greater_equal, "less_equal": np.less_equal,
}


@evaluates(*_BINARY)
def _binary(node: Node, args: list[Any]) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(_BINARY[node.op](as_float(args[0]), as_float(args[1])))


_UNARY = {"sqrt": np.sqrt, "rsqrt": lambda x: 1.0 / np.sqrt(x), "exp": np.exp, "abs": np.abs, "square": np.square,
          "reciprocal": lambda x: 1.0 / x, "log": np.log, "sign": np.sign, "floor": np.floor, "ceil": np.ceil,
          "logical_not": np.logical_not}


@evaluates(*_UNARY)
def _unary(node: Node, args: list[Any]) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(_UNARY[node.op](as_float(args[0])))


@evaluates("pow")
def _pow(node: Node, args: list[Any]) -> np.ndarray:
    return np.power(as_float(args[0]), scalar(args[1] if len(args) > 1 else None, node.attrs.get("y", 1.0)))


@evaluates("add_n")
def _add_n(node: Node, args: list[Any]) -> np.ndarray:
    terms = args[0] if isinstance(args[0], list) else [args[0]]
    return np.sum([as_float(t) for t in terms], axis=0)


@evaluates("scale")
def _scale(node: Node, args: list[Any]) -> np.ndarray:
    x = as_float(args[0])
    s = scalar(args[1] if len(args) > 1 else None, node.attrs.get("scale", 1.0))
    b = float(node.attrs.get("bias", 0.0))
    return x * s + b if node.attrs.get("bias_after_scale", True) else (x + b) * s


@evaluates("dropout")
def _dropout(node: Node, args: list[Any]) -> Any:
    if not node.attrs.get("is_test", False):
        raise Unevaluable("a dropout in training mode")
    x = as_float(args[0])
    if node.attrs.get("mode", "upscale_in_train") == "downgrade_in_infer":
        x = x * (1.0 - scalar(args[2] if len(args) > 2 else None, node.attrs.get("p", 0.5)))
    return (x, None) if len(node.outputs) > 1 else x


@evaluates("sum", "mean")
def _reduce(node: Node, args: list[Any]) -> np.ndarray:
    x = as_float(args[0])
    axis = ints(args[1] if len(args) > 1 else None, node.attrs.get("axis", []))
    axes = tuple(a % x.ndim for a in axis) if axis else None
    fn = np.sum if node.op == "sum" else np.mean
    return np.asarray(fn(x, axis=axes, keepdims=bool(node.attrs.get("keepdim", False))))
