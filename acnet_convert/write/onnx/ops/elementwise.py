"""Elementwise arithmetic, activations and reductions."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from acnet_convert.graph.ir import Node
from acnet_convert.write.onnx.ops._common import _axis, _cast_to, _floats, _int64_result, _ints, _nchw, _operand, _rank, _reduce, handles
from acnet_convert.common.text import printable

if TYPE_CHECKING:
    from acnet_convert.write.onnx.builder import OnnxBuilder

# ----------------------------------------------------------------------------------------------
# elementwise arithmetic (Paddle broadcasts like numpy, as ONNX does)

_BINARY = {"add": "Add", "subtract": "Sub", "multiply": "Mul", "divide": "Div", "maximum": "Max",
           "minimum": "Min", "elementwise_pow": "Pow"}


@handles(*_BINARY)
def binary(ctx: OnnxBuilder, node: Node) -> None:
    want = ctx.dtype(node.output)  # Paddle promotes mixed operand types; ONNX wants them equal
    operands = [_cast_to(ctx, ctx.tensor(name), ctx.dtype(name), want) for name in node.inputs[:2]]
    axis = int(node.attrs.get("axis", -1))
    if axis != -1:  # the old elementwise ops align y with x from `axis`: append y's missing trailing axes
        x_rank, y_rank = _rank(ctx, node.inputs[0]), _rank(ctx, node.inputs[1])
        trailing = x_rank - _axis(axis, x_rank) - y_rank
        if trailing > 0:
            operands[1] = ctx.op("Unsqueeze", [operands[1], ctx.ints(list(range(y_rank, y_rank + trailing)), "axes")])
    ctx.op(_BINARY[node.op], operands, [ctx.output(node)])


@handles("add_n")
def add_n(ctx: OnnxBuilder, node: Node) -> None:
    terms = node.inputs[0] if isinstance(node.inputs[0], tuple) else tuple(node.inputs)
    ctx.op("Sum", [ctx.tensor(t) for t in terms], [ctx.output(node)])


@handles("scale")
def scale(ctx: OnnxBuilder, node: Node) -> None:
    """y = scale * x + bias (bias_after_scale) or scale * (x + bias); factors of 1 and terms of
    0 are left out, which changes no bit."""
    x = node.inputs[0]
    elem = ctx.dtype(x)
    factor: str | float = float(node.attrs.get("scale", 1.0))
    if _operand(node, 1) is not None:
        value = ctx.constant(node.inputs[1])
        factor = float(np.asarray(value).reshape(-1)[0]) if value is not None else _cast_to(
            ctx, ctx.tensor(node.inputs[1]), ctx.dtype(node.inputs[1]), elem)
    bias = float(node.attrs.get("bias", 0.0))
    y = ctx.tensor(x)

    def times(v: str) -> str:
        if isinstance(factor, str):
            return ctx.op("Mul", [v, factor])
        return v if factor == 1.0 else ctx.op("Mul", [v, ctx.scalar(factor, elem, "scale")])

    def plus(v: str) -> str:
        return v if bias == 0.0 else ctx.op("Add", [v, ctx.scalar(bias, elem, "bias")])

    ctx.alias(node.output, plus(times(y)) if node.attrs.get("bias_after_scale", True) else times(plus(y)))


# ----------------------------------------------------------------------------------------------
# activations

_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "abs": "Abs", "sqrt": "Sqrt",
          "floor": "Floor", "ceil": "Ceil", "log": "Log", "erf": "Erf", "reciprocal": "Reciprocal", "sign": "Sign",
          "sin": "Sin", "cos": "Cos", "softsign": "Softsign", "logical_not": "Not"}


@handles(*_UNARY)
def unary(ctx: OnnxBuilder, node: Node) -> None:
    ctx.op(_UNARY[node.op], [ctx.tensor(node.inputs[0])], [ctx.output(node)])


@handles("square")
def square(ctx: OnnxBuilder, node: Node) -> None:
    x = ctx.tensor(node.inputs[0])
    ctx.op("Mul", [x, x], [ctx.output(node)])


@handles("rsqrt")
def rsqrt(ctx: OnnxBuilder, node: Node) -> None:
    ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.tensor(node.inputs[0])])], [ctx.output(node)])


def _clip(ctx: OnnxBuilder, node: Node, x: str, low: float | None, high: float | None) -> None:
    elem = ctx.dtype(node.inputs[0])
    bounds = [ctx.scalar(low, elem, "min") if low is not None else "",
              ctx.scalar(high, elem, "max") if high is not None else ""]
    while bounds and bounds[-1] == "":
        bounds.pop()
    ctx.op("Clip", [x, *bounds], [ctx.output(node)])


@handles("relu6")
def relu6(ctx: OnnxBuilder, node: Node) -> None:
    _clip(ctx, node, ctx.tensor(node.inputs[0]), 0.0, float(node.attrs.get("threshold", 6.0)))


@handles("hardtanh")
def hardtanh(ctx: OnnxBuilder, node: Node) -> None:
    low, high = float(node.attrs.get("t_min", -1.0)), float(node.attrs.get("t_max", 1.0))
    _clip(ctx, node, ctx.tensor(node.inputs[0]), low, high)


@handles("clip")
def clip(ctx: OnnxBuilder, node: Node) -> None:
    """Bounds are operands (full ops) in PIR, attributes in old programs; ONNX Clip wants
    rank-0 inputs of x's type. A bound beyond float16's range becomes +-inf: the same clip."""
    bounds = []
    for index, key in ((1, "min"), (2, "max")):
        if _operand(node, index) is not None:
            bounds.append(_floats(ctx, node.inputs[index], f"{key} bound")[0])
        else:
            bounds.append(float(node.attrs[key]) if key in node.attrs else None)
    _clip(ctx, node, ctx.tensor(node.inputs[0]), bounds[0], bounds[1])


@handles("leaky_relu")
def leaky_relu(ctx: OnnxBuilder, node: Node) -> None:
    slope = float(node.attrs.get("negative_slope", 0.02))
    ctx.op("LeakyRelu", [ctx.tensor(node.inputs[0])], [ctx.output(node)], alpha=slope)


@handles("elu")
def elu(ctx: OnnxBuilder, node: Node) -> None:
    ctx.op("Elu", [ctx.tensor(node.inputs[0])], [ctx.output(node)], alpha=float(node.attrs.get("alpha", 1.0)))


@handles("prelu")
def prelu(ctx: OnnxBuilder, node: Node) -> None:
    """mode all: alpha [1]; element: alpha [C, H, W] (broadcasts as it is); channel: alpha [C],
    reshaped to [C, 1, ...] so that it lines up with NCHW's channel axis."""
    _nchw(ctx, node)
    x, alpha = ctx.tensor(node.inputs[0]), ctx.tensor(node.inputs[1])
    mode = str(node.attrs.get("mode", "all"))
    if mode == "channel":
        rank = _rank(ctx, node.inputs[0])
        alpha = ctx.op("Reshape", [alpha, ctx.ints([-1] + [1] * (rank - 2), "shape")])
    elif mode not in ("all", "element"):
        raise ctx.fail(f"prelu mode {printable(mode)} is not supported")
    ctx.op("PRelu", [x, alpha], [ctx.output(node)])


@handles("hardsigmoid")
def hardsigmoid(ctx: OnnxBuilder, node: Node) -> None:
    """max(0, min(1, slope * x + offset)). The defaults differ (paddle.nn.functional: slope
    1/6, offset 0.5; the old hard_sigmoid op: 0.2, 0.5; ONNX: alpha 0.2, beta 0.5): the
    attributes are always written out from the op."""
    ctx.op("HardSigmoid", [ctx.tensor(node.inputs[0])], [ctx.output(node)],
           alpha=float(node.attrs.get("slope", 0.1666666716337204)), beta=float(node.attrs.get("offset", 0.5)))


@handles("hardswish")
def hardswish(ctx: OnnxBuilder, node: Node) -> None:
    """x * min(max(x + offset, 0), threshold) / scale with Paddle's fixed 3, 6, 6: ONNX
    HardSwish (opset 14+), or x * HardSigmoid(1/6, 1/2) before; other constants (old programs'
    hard_swish attributes) are written out."""
    x = ctx.tensor(node.inputs[0])
    threshold = float(node.attrs.get("threshold", 6.0))
    scale_ = float(node.attrs.get("scale", 6.0))
    offset = float(node.attrs.get("offset", 3.0))
    elem = ctx.dtype(node.inputs[0])
    if (threshold, scale_, offset) == (6.0, 6.0, 3.0):
        if ctx.opset >= 14:
            ctx.op("HardSwish", [x], [ctx.output(node)])
        else:
            ctx.op("Mul", [x, ctx.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)], [ctx.output(node)])
        return
    gate = ctx.op("Clip", [ctx.op("Add", [x, ctx.scalar(offset, elem, "offset")]), ctx.scalar(0.0, elem, "zero"),
                           ctx.scalar(threshold, elem, "threshold")])
    ctx.op("Div", [ctx.op("Mul", [x, gate]), ctx.scalar(scale_, elem, "scale")], [ctx.output(node)])


@handles("swish", "silu")
def swish(ctx: OnnxBuilder, node: Node) -> None:
    """x * sigmoid(beta * x), beta 1 unless an old program's swish says otherwise."""
    x = ctx.tensor(node.inputs[0])
    beta = float(node.attrs.get("beta", 1.0))
    gate_in = x if beta == 1.0 else ctx.op("Mul", [x, ctx.scalar(beta, ctx.dtype(node.inputs[0]), "beta")])
    ctx.op("Mul", [x, ctx.op("Sigmoid", [gate_in])], [ctx.output(node)])


@handles("gelu")
def gelu(ctx: OnnxBuilder, node: Node) -> None:
    """Gelu (opset 20+), else written out as Paddle's kernel computes it:
    exact 0.5 x (1 + erf(x / sqrt 2)); approximate 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = ctx.tensor(node.inputs[0])
    approximate = bool(node.attrs.get("approximate", False))
    if ctx.opset >= 20:
        ctx.op("Gelu", [x], [ctx.output(node)], approximate="tanh" if approximate else "none")
        return
    elem = ctx.dtype(node.inputs[0])
    if approximate:
        cube = ctx.op("Mul", [ctx.op("Mul", [x, x]), x])
        inner = ctx.op("Add", [x, ctx.op("Mul", [cube, ctx.scalar(0.044715, elem, "c")])])
        t = ctx.op("Tanh", [ctx.op("Mul", [inner, ctx.scalar(math.sqrt(2.0 / math.pi), elem, "k")])])
    else:
        t = ctx.op("Erf", [ctx.op("Mul", [x, ctx.scalar(math.sqrt(0.5), elem, "k")])])
    half_x = ctx.op("Mul", [x, ctx.scalar(0.5, elem, "half")])
    ctx.op("Mul", [half_x, ctx.op("Add", [t, ctx.scalar(1.0, elem, "one")])], [ctx.output(node)])


@handles("softmax", "log_softmax")
def softmax(ctx: OnnxBuilder, node: Node) -> None:
    op_type = "Softmax" if node.op == "softmax" else "LogSoftmax"
    ctx.op(op_type, [ctx.tensor(node.inputs[0])], [ctx.output(node)], axis=int(node.attrs.get("axis", -1)))


@handles("dropout")
def dropout(ctx: OnnxBuilder, node: Node) -> None:
    """At inference `upscale_in_train` is the identity and `downgrade_in_infer` multiplies by
    1 - p (computed in float32 as Paddle's kernel does)."""
    if not node.attrs.get("is_test", True):
        raise ctx.fail("dropout in training mode (random) is not supported")
    if any(ctx.used(o) for o in node.outputs[1:]):
        raise ctx.fail("dropout's mask is read by other ops")
    x = ctx.tensor(node.inputs[0])
    mode = str(node.attrs.get("mode", node.attrs.get("dropout_implementation", "downgrade_in_infer")))
    if mode == "upscale_in_train":
        ctx.alias(node.output, x)
        return
    if mode != "downgrade_in_infer":
        raise ctx.fail(f"dropout mode {printable(mode)} is not supported")
    if _operand(node, 2) is not None:
        p = _floats(ctx, node.inputs[2], "p")[0]
    else:
        p = float(node.attrs.get("p", node.attrs.get("dropout_prob", 0.5)))
    keep = float(np.float32(1.0) - np.float32(p))
    ctx.op("Mul", [x, ctx.scalar(keep, ctx.dtype(node.inputs[0]), "keep")], [ctx.output(node)])


# ----------------------------------------------------------------------------------------------
# reductions

_REDUCE = {"mean": "ReduceMean", "sum": "ReduceSum", "max": "ReduceMax", "min": "ReduceMin", "prod": "ReduceProd"}


@handles(*_REDUCE)
def reduce(ctx: OnnxBuilder, node: Node) -> None:
    """Axes are an operand (a constant) or an attribute; none, or reduce_all, means every axis."""
    if _operand(node, 1) is not None:
        axes = _ints(ctx, node.inputs[1], "axes")
    else:
        axes = [int(a) for a in node.attrs.get("axis", node.attrs.get("dim", []))]
    if node.attrs.get("reduce_all", False):
        axes = []
    keepdim = bool(node.attrs.get("keepdim", node.attrs.get("keep_dim", False)))
    x = _cast_to(ctx, ctx.tensor(node.inputs[0]), ctx.dtype(node.inputs[0]), ctx.dtype(node.output))
    _reduce(ctx, _REDUCE[node.op], x, axes, keepdim, [ctx.output(node)])


@handles("argmax", "argmin")
def argmax(ctx: OnnxBuilder, node: Node) -> None:
    x = ctx.tensor(node.inputs[0])
    axis = _ints(ctx, node.inputs[1], "axis")[0] if _operand(node, 1) is not None else int(node.attrs.get("axis", -1))
    if node.attrs.get("flatten", False):
        x, axis = ctx.op("Reshape", [x, ctx.ints([-1], "flat")]), 0
    keepdims = int(bool(node.attrs.get("keepdims", False)))
    _int64_result(ctx, node, ctx.op("ArgMax" if node.op == "argmax" else "ArgMin", [x], axis=axis, keepdims=keepdims))
