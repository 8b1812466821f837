"""One translator per Paddle op kind (this package: the registry and the helpers the handlers
share; the handlers by family in its modules), registered in `HANDLERS`: adding an op is adding a function.

A handler receives the `OnnxBuilder` (see `builder`) and one graph `Node`, and adds the ONNX
nodes that compute the same function. It reads operands with `ctx.tensor(name)`, constant
operands (kernel sizes, shapes, axes) with `ctx.constant(name)`, writes the node's outputs to
`ctx.output(node, i)`, and raises `ctx.fail(reason)` for anything ONNX cannot express exactly
(a channels-last layout, a window Paddle and ONNX Runtime place differently, ...). Semantics
follow Paddle's kernels (paddle/phi/kernels, ops.yaml) and the ONNX operator specs; where they
differ the comment beside the handler says how the difference is bridged.

Every form used is valid for opsets 13..21; where an operand moved from attribute to input (the
Reduce ops in 18, Split's num_outputs in 18) the handler asks `ctx.opset`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from onnx import TensorProto

from acnet_convert.graph.ir import Input, Node
from acnet_convert.write.handlers import Registry
from acnet_convert.common.text import printable

if TYPE_CHECKING:
    from acnet_convert.write.onnx.builder import OnnxBuilder

Handler = Callable[["OnnxBuilder", Node], None]
REGISTRY: Registry[Handler] = Registry()
HANDLERS = REGISTRY.handlers
handles = REGISTRY.handles
NO_HANDLER = "op '{op}' has no ONNX translation"


def supported_ops() -> list[str]:
    return REGISTRY.supported()


# ----------------------------------------------------------------------------------------------
# shared helpers


def _operand(node: Node, index: int) -> Input:
    return node.inputs[index] if index < len(node.inputs) else None


def _nchw(ctx: OnnxBuilder, node: Node) -> None:
    layout = str(node.attrs.get("data_format", node.attrs.get("data_layout", "NCHW")))
    if layout not in ("NCHW", "NCDHW", "NCL", "AnyLayout"):
        raise ctx.fail(f"data_format {printable(layout)} (channels last) is not supported, only NCHW")


def _ints(ctx: OnnxBuilder, name: Input, what: str) -> list[int]:
    """A constant integer operand (a tuple of constant scalars counts too)."""
    if isinstance(name, tuple):
        return [v for part in name for v in _ints(ctx, part, what)]
    value = ctx.constant(name)
    if value is None:
        raise ctx.fail(f"its {what} is computed at run time; only a constant {what} is supported")
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _ints_or_attr(ctx: OnnxBuilder, node: Node, index: int, key: str, what: str) -> list[int]:
    """Integers given as operand `index` (PIR) or else as attribute `key` (older op forms)."""
    if _operand(node, index) is not None:
        return _ints(ctx, node.inputs[index], what)
    return [int(v) for v in node.attrs.get(key, [])]


def _param_or_fill(ctx: OnnxBuilder, node: Node, index: int, channels: int, fill: float, hint: str) -> str:
    """Optional per-channel operand `index`, or a constant `fill` when the op has none."""
    if _operand(node, index) is not None:
        return ctx.tensor(node.inputs[index])
    return ctx.const(np.full(channels, fill, np.float32), hint=hint)


def _floats(ctx: OnnxBuilder, name: Input, what: str) -> list[float]:
    value = ctx.constant(name)
    if value is None:
        raise ctx.fail(f"its {what} is computed at run time; only a constant {what} is supported")
    return [float(v) for v in np.asarray(value).reshape(-1)]


def _int64_tensor(ctx: OnnxBuilder, name: Input, hint: str) -> str:
    """An int64 1-D ONNX tensor from an integer operand: a constant, a tensor or a tuple of
    scalar tensors (Paddle's vector operands)."""
    if isinstance(name, tuple):
        if all(ctx.constant(part) is not None for part in name):
            return ctx.ints(_ints(ctx, name, hint), hint)
        parts = [_int64_tensor(ctx, part, hint) for part in name]
        return parts[0] if len(parts) == 1 else ctx.op("Concat", parts, axis=0)
    value = ctx.constant(name)
    if value is not None:
        return ctx.ints([int(v) for v in np.asarray(value).reshape(-1)], hint)
    x = ctx.tensor(name)
    if ctx.dtype(name) != TensorProto.INT64:
        x = ctx.op("Cast", [x], to=TensorProto.INT64)
    return ctx.op("Reshape", [x, ctx.ints([-1], "flat")])


def _pads(ctx: OnnxBuilder, paddings: Sequence[int]) -> list[int]:
    """Paddle's 2-D paddings ([h, w] or [top, bottom, left, right]) as ONNX pads
    [top, left, bottom, right]."""
    p = [int(v) for v in paddings]
    if len(p) == 2:
        return [p[0], p[1], p[0], p[1]]
    if len(p) == 4:
        return [p[0], p[2], p[1], p[3]]
    raise ctx.fail(f"paddings {p} are neither 2 nor 4 values")


def _pair(values: Any) -> list[int]:
    v = [int(x) for x in (values if isinstance(values, (list, tuple)) else [values])]
    return v * 2 if len(v) == 1 else v


def _axis(axis: int, rank: int | None) -> int:
    return axis + rank if axis < 0 and rank is not None else axis


def _rank(ctx: OnnxBuilder, name: Input) -> int:
    rank = ctx.rank(name)
    if rank is None:
        raise ctx.fail(f"the rank of {printable(name)} is unknown")
    return rank


def _spatial(ctx: OnnxBuilder, x: str, axes: Sequence[int]) -> list[int] | None:
    """The static sizes of `x` along `axes`, or None when one is not fixed (dynamic size)."""
    shape = ctx.static_shape(x)
    if shape is None or any(a >= len(shape) or shape[a] is None for a in axes):
        return None
    return [int(shape[a]) for a in axes]


def _reduce(ctx: OnnxBuilder, op_type: str, x: str, axes: Sequence[int] | None, keepdims: bool,
            outputs: int | Sequence[str] = 1) -> str:
    """Reduce* with `axes` (None: all): an attribute before opset 18, an input from 18 on
    (ReduceSum: from 13)."""
    as_input = op_type == "ReduceSum" or ctx.opset >= 18
    if axes is None or len(axes) == 0:
        return ctx.op(op_type, [x], outputs, keepdims=int(keepdims))
    if as_input:
        return ctx.op(op_type, [x, ctx.ints(list(axes), "axes")], outputs, keepdims=int(keepdims))
    return ctx.op(op_type, [x], outputs, axes=list(axes), keepdims=int(keepdims))


def _cast_to(ctx: OnnxBuilder, x: str, have: int, want: int) -> str:
    return x if have == want else ctx.op("Cast", [x], to=want)


def _int64_result(ctx: OnnxBuilder, node: Node, value: str) -> None:
    """ONNX makes this int64; the graph's tensor may want another integer type."""
    want = ctx.dtype(node.output)
    if want == TensorProto.INT64:
        ctx.alias(node.output, value)
    else:
        ctx.op("Cast", [value], [ctx.output(node)], to=want)
