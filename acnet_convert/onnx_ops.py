"""One translator per Paddle op kind, registered in `HANDLERS`: adding an op is adding a function.

A handler receives the `OnnxBuilder` (see onnx_writer) and one graph `Node`, and adds the ONNX
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

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
from onnx import TensorProto, helper

from acnet_convert.errors import ConvertError
from acnet_convert.handlers import Registry
from acnet_convert.graph import Input, Node
from acnet_convert.text import printable

if TYPE_CHECKING:
    from acnet_convert.onnx_writer import OnnxBuilder

Handler = Callable[["OnnxBuilder", Node], None]
REGISTRY: Registry[Handler] = Registry()
HANDLERS = REGISTRY.handlers
handles = REGISTRY.handles


def supported_ops() -> list[str]:
    return REGISTRY.supported()


NO_HANDLER = "op '{op}' has no ONNX translation"


def refusal(where: str, reason: str) -> ConvertError:
    """One line: where the node sits, why it cannot be translated, what can be."""
    return ConvertError(f"{printable(where)}: {reason}; supported ops: {', '.join(supported_ops())}")


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


# ----------------------------------------------------------------------------------------------
# constants and plumbing


@handles("full", "full_int_array", "assign_value")
def constant_op(ctx: OnnxBuilder, node: Node) -> None:
    # the value lives in Graph.constants; ctx.tensor() makes an initializer only if an op reads
    # it as a tensor (most are read as attributes: kernel sizes, axes, shapes)
    if ctx.graph.constant(node.output) is None:
        raise ctx.fail(f"the value of this constant ({printable(dict(node.attrs))}) is not known")


@handles("full_like")
def full_like(ctx: OnnxBuilder, node: Node) -> None:
    x = ctx.tensor(node.inputs[0])
    if _operand(node, 1) is not None:
        value = _floats(ctx, node.inputs[1], "fill value")[0]
    else:
        value = float(node.attrs.get("value", 0))
    elem = ctx.dtype(node.output)
    typed = np.asarray(value).astype(helper.tensor_dtype_to_np_dtype(elem)).item()
    fill = helper.make_tensor("value", elem, [1], [typed])
    ctx.op("ConstantOfShape", [ctx.op("Shape", [x])], [ctx.output(node)], value=fill)


@handles("assign")
def assign(ctx: OnnxBuilder, node: Node) -> None:
    ctx.alias(node.output, ctx.tensor(node.inputs[0]))


@handles("cast")
def cast(ctx: OnnxBuilder, node: Node) -> None:
    to = ctx.onnx_type(str(node.attrs.get("dtype")))
    ctx.op("Cast", [ctx.tensor(node.inputs[0])], [ctx.output(node)], to=to)


@handles("shape", "shape64")
def shape(ctx: OnnxBuilder, node: Node) -> None:
    _int64_result(ctx, node, ctx.op("Shape", [ctx.tensor(node.inputs[0])]))


def _int64_result(ctx: OnnxBuilder, node: Node, value: str) -> None:
    """ONNX makes this int64; the graph's tensor may want another integer type."""
    want = ctx.dtype(node.output)
    if want == TensorProto.INT64:
        ctx.alias(node.output, value)
    else:
        ctx.op("Cast", [value], [ctx.output(node)], to=want)


# ----------------------------------------------------------------------------------------------
# convolution and normalisation


@handles("conv2d")
def conv2d(ctx: OnnxBuilder, node: Node) -> None:
    """conv2d / depthwise_conv2d, with the bias the reader merged in. Paddle's SAME ignores the
    dilations (UpdatePaddingAndDilation sets them to 1) and puts the odd pixel last:
    auto_pad SAME_UPPER with dilations 1."""
    _nchw(ctx, node)
    x, w = node.inputs[0], node.inputs[1]
    kernel = _kernel(ctx, w)
    attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=_pair(node.attrs.get("strides", [1, 1])),
                                 group=int(node.attrs.get("groups", 1)))
    algorithm = str(node.attrs.get("padding_algorithm", "EXPLICIT"))
    if algorithm == "SAME":
        attrs.update(auto_pad="SAME_UPPER", dilations=[1, 1])
    else:
        attrs.update(dilations=_pair(node.attrs.get("dilations", [1, 1])),
                     pads=[0, 0, 0, 0] if algorithm == "VALID" else _pads(ctx, node.attrs.get("paddings", [0, 0])))
    inputs = [ctx.tensor(x), ctx.tensor(w)]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        inputs.append(ctx.tensor(node.inputs[2]))
    ctx.op("Conv", inputs, [ctx.output(node)], **attrs)


def _kernel(ctx: OnnxBuilder, w: Input) -> list[int]:
    weight = ctx.constant(w)
    shape = list(weight.shape) if weight is not None else list(ctx.info(w).shape if ctx.info(w) else [])
    if len(shape) != 4 or min(shape[2:]) < 1:
        raise ctx.fail(f"its filter {printable(w)} has shape {shape}, not [O, I, kh, kw]")
    return [int(shape[2]), int(shape[3])]


@handles("conv2d_transpose", "depthwise_conv2d_transpose")
def conv2d_transpose(ctx: OnnxBuilder, node: Node) -> None:
    """Paddle's filter [C_in, C_out/groups, kh, kw] is ConvTranspose's W as it is. An explicit
    output_size becomes the output_padding it implies (Paddle adds the extra rows at the end)."""
    _nchw(ctx, node)
    x, w = ctx.tensor(node.inputs[0]), node.inputs[1]
    kernel = _kernel(ctx, w)
    strides = _pair(node.attrs.get("strides", [1, 1]))
    dilations = _pair(node.attrs.get("dilations", [1, 1]))
    algorithm = str(node.attrs.get("padding_algorithm", "EXPLICIT"))
    if algorithm == "SAME":
        raise ctx.fail("padding_algorithm SAME of a transposed conv is not supported")
    pads = [0, 0, 0, 0] if algorithm == "VALID" else _pads(ctx, node.attrs.get("paddings", [0, 0]))
    output_padding = [int(v) for v in node.attrs.get("output_padding", [])] or [0, 0]
    output_size = _ints(ctx, _operand(node, 2), "output size") if _operand(node, 2) is not None else []
    output_size = output_size or [int(v) for v in node.attrs.get("output_size", [])]
    if output_size:
        sizes = _spatial(ctx, x, [2, 3])
        if sizes is None:
            raise ctx.fail("an explicit output_size needs a fixed input size")
        default = [(sizes[i] - 1) * strides[i] - pads[i] - pads[i + 2] + dilations[i] * (kernel[i] - 1) + 1
                   for i in range(2)]
        output_padding = [int(output_size[i]) - default[i] for i in range(2)]
        if any(p < 0 or p >= max(strides[i], dilations[i]) for i, p in enumerate(output_padding)):
            raise ctx.fail(f"output_size {output_size} is not reachable from input {sizes}")
    ctx.op("ConvTranspose", [x, ctx.tensor(w)], [ctx.output(node)], kernel_shape=kernel, strides=strides,
           dilations=dilations, pads=pads, output_padding=output_padding, group=int(node.attrs.get("groups", 1)))


@handles("batch_norm")
def batch_norm(ctx: OnnxBuilder, node: Node) -> None:
    """Inference-mode BN (running statistics). Paddle's operands are (x, mean, variance, scale,
    bias); scale and bias may be absent (affine off): ones and zeros."""
    _nchw(ctx, node)
    test_mode = bool(node.attrs.get("is_test", True)) and not bool(node.attrs.get("trainable_statistics", False))
    if not (test_mode or bool(node.attrs.get("use_global_stats", False))):
        raise ctx.fail("batch_norm in training mode (batch statistics) is not supported")
    if any(ctx.used(o) for o in node.outputs[1:]):
        raise ctx.fail("batch_norm's running statistics outputs are read by other ops")
    x, mean, variance = node.inputs[0], node.inputs[1], node.inputs[2]
    channels = _channels(ctx, node, mean)
    scale = _param_or_fill(ctx, node, 3, channels, 1.0, "scale")
    bias = _param_or_fill(ctx, node, 4, channels, 0.0, "bias")
    ctx.op("BatchNormalization", [ctx.tensor(x), scale, bias, ctx.tensor(mean), ctx.tensor(variance)],
           [ctx.output(node)], epsilon=float(node.attrs.get("epsilon", 1e-5)))


def _channels(ctx: OnnxBuilder, node: Node, like: Input) -> int:
    value = ctx.constant(like)
    if value is not None:
        return int(value.size)
    info = ctx.info(node.inputs[0])
    if info is None or len(info.shape) < 2 or info.shape[1] < 1:
        raise ctx.fail("its channel count is unknown")
    return int(info.shape[1])


@handles("instance_norm")
def instance_norm(ctx: OnnxBuilder, node: Node) -> None:
    _nchw(ctx, node)
    if any(ctx.used(o) for o in node.outputs[1:]):
        raise ctx.fail("instance_norm's saved statistics are read by other ops")
    channels = _channels(ctx, node, _operand(node, 1))
    scale = _param_or_fill(ctx, node, 1, channels, 1.0, "scale")
    bias = _param_or_fill(ctx, node, 2, channels, 0.0, "bias")
    ctx.op("InstanceNormalization", [ctx.tensor(node.inputs[0]), scale, bias], [ctx.output(node)],
           epsilon=float(node.attrs.get("epsilon", 1e-5)))


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
          "sin": "Sin", "cos": "Cos", "softsign": "Softsign"}


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
# pooling


@handles("pool2d")
def pool2d(ctx: OnnxBuilder, node: Node) -> None:
    kernel = _ints_or_attr(ctx, node, 1, "kernel_size", "kernel size")
    _pool(ctx, node, str(node.attrs.get("pooling_type", "max")), _pair(kernel))


@handles("max_pool2d_with_index")
def max_pool2d_with_index(ctx: OnnxBuilder, node: Node) -> None:
    if any(ctx.used(o) for o in node.outputs[1:]):
        raise ctx.fail("the argmax indices of max pooling are read by other ops")
    _pool(ctx, node, "max", _pair(node.attrs.get("kernel_size", [1, 1])))


def _pool(ctx: OnnxBuilder, node: Node, kind: str, kernel: list[int]) -> None:
    """Paddle's pool2d (paddle/phi/kernels/funcs/pooling.cc): windows start at i*s - pad_top,
    max ignores the padding, exclusive avg divides by the pixels inside the input, the other avg
    by the window clipped to [-pad, H + pad) with pad the top (left) padding on both sides.
    ONNX's count_include_pad=1 clips to [-pad_top, H + pad_bottom): the same when top and
    bottom padding agree, so asymmetric non-exclusive avg pooling is refused."""
    _nchw(ctx, node)
    if kind not in ("max", "avg"):
        raise ctx.fail(f"pooling_type {printable(kind)} is not supported")
    x = ctx.tensor(node.inputs[0])
    out = ctx.output(node)
    if node.attrs.get("global_pooling", False):
        ctx.op("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", [x], [out])
        return
    if node.attrs.get("adaptive", False):
        _adaptive_pool(ctx, node, kind, x, kernel, out)
        return
    strides = _pair(node.attrs.get("strides", [1, 1]))
    algorithm = str(node.attrs.get("padding_algorithm", "EXPLICIT"))
    exclusive = bool(node.attrs.get("exclusive", True))
    ceil_mode = bool(node.attrs.get("ceil_mode", False))
    attrs: dict[str, Any] = dict(kernel_shape=kernel, strides=strides)
    if kind == "avg":
        attrs["count_include_pad"] = 0 if exclusive else 1
    if algorithm == "SAME":
        sizes = _spatial(ctx, x, [2, 3])
        if kind == "avg" and not exclusive:
            if sizes is None:
                raise ctx.fail("non-exclusive avg pooling with SAME padding needs a fixed input size")
            totals = [max((-(-sizes[i] // strides[i]) - 1) * strides[i] + kernel[i] - sizes[i], 0) for i in range(2)]
            if any(t % 2 for t in totals):
                raise ctx.fail("non-exclusive avg pooling with uneven SAME padding divides differently in ONNX")
        ctx.op("MaxPool" if kind == "max" else "AveragePool", [x], [out], auto_pad="SAME_UPPER", **attrs)
        return
    pads = [0, 0, 0, 0] if algorithm == "VALID" else _pads(ctx, node.attrs.get("paddings", [0, 0]))
    if kind == "avg" and not exclusive and (pads[0] != pads[2] or pads[1] != pads[3]):
        raise ctx.fail(f"non-exclusive avg pooling with asymmetric paddings {pads} divides differently in ONNX")
    if ceil_mode:
        # ONNX Runtime drops a last window that would start in the bottom/right padding;
        # Paddle keeps it (and fills it with -FLT_MAX, NaN or 0): refused where visible
        sizes = _spatial(ctx, x, [2, 3])
        if sizes is not None:
            for i in range(2):
                count = (sizes[i] + pads[i] + pads[i + 2] - kernel[i] + strides[i] - 1) // strides[i] + 1
                if (count - 1) * strides[i] >= sizes[i] + pads[i]:
                    raise ctx.fail("with ceil_mode its last window lies wholly in the padding, "
                                   "which ONNX Runtime drops")
        attrs["ceil_mode"] = 1
    ctx.op("MaxPool" if kind == "max" else "AveragePool", [x], [out], pads=pads, **attrs)


def _adaptive_pool(ctx: OnnxBuilder, node: Node, kind: str, x: str, size: list[int], out: str) -> None:
    """Adaptive bins [floor(i H / o), ceil((i + 1) H / o)). Output 1x1 is global pooling; when o
    divides H every bin is a plain window (kernel = stride = H / o); otherwise the bins are cut
    out with Slice and reduced, one axis after the other (a rectangle's mean is the mean of its
    rows' means, its max the max of their maxes). Both of the last two need a fixed size."""
    if any(o < 1 for o in size):
        raise ctx.fail(f"adaptive output size {size} is not supported")
    if size == [1, 1]:
        ctx.op("GlobalMaxPool" if kind == "max" else "GlobalAveragePool", [x], [out])
        return
    sizes = _spatial(ctx, x, [2, 3])
    if sizes is None:
        raise ctx.fail(f"adaptive pooling to {size} needs a fixed input size (not a dynamic one)")
    if all(sizes[i] % size[i] == 0 for i in range(2)):
        window = [sizes[i] // size[i] for i in range(2)]
        ctx.op("MaxPool" if kind == "max" else "AveragePool", [x], [out], kernel_shape=window, strides=window)
        return
    reduce_op = "ReduceMax" if kind == "max" else "ReduceMean"
    y = x
    for i, axis in enumerate((2, 3)):
        length, bins = sizes[i], size[i]
        if length == bins:
            continue
        parts = []
        for b in range(bins):
            start, end = (b * length) // bins, -(-((b + 1) * length) // bins)
            part = ctx.op("Slice", [y, ctx.ints([start], "start"), ctx.ints([end], "end"), ctx.ints([axis], "axis")])
            parts.append(_reduce(ctx, reduce_op, part, [axis], True))
        y = ctx.op("Concat", parts, axis=axis)
    ctx.op("Identity", [y], [out])


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


# ----------------------------------------------------------------------------------------------
# shape and layout


@handles("reshape")
def reshape(ctx: OnnxBuilder, node: Node) -> None:
    """Paddle's 0 copies the input's dimension and -1 is inferred: ONNX Reshape's allowzero=0."""
    if _operand(node, 1) is not None:
        shape = _int64_tensor(ctx, node.inputs[1], "shape")
    else:
        shape = ctx.ints(node.attrs["shape"], "shape")
    ctx.op("Reshape", [ctx.tensor(node.inputs[0]), shape], [ctx.output(node)])


@handles("flatten")
def flatten(ctx: OnnxBuilder, node: Node) -> None:
    """Dimensions start_axis..stop_axis merged into one."""
    rank = _rank(ctx, node.inputs[0])
    x = ctx.tensor(node.inputs[0])
    if rank == 0:
        ctx.op("Reshape", [x, ctx.ints([1], "shape")], [ctx.output(node)])
        return
    start = _axis(int(node.attrs.get("start_axis", 1)), rank)
    stop = _axis(int(node.attrs.get("stop_axis", -1)), rank)
    if start == stop:
        ctx.alias(node.output, x)
    elif start == 1 and stop == rank - 1:
        ctx.op("Flatten", [x], [ctx.output(node)], axis=1)
    elif stop == rank - 1:
        ctx.op("Reshape", [x, ctx.ints([0] * start + [-1], "shape")], [ctx.output(node)])
    else:
        dims = ctx.op("Shape", [x])
        head = ctx.op("Slice", [dims, ctx.ints([0], "zero"), ctx.ints([start], "start")])
        tail = ctx.op("Slice", [dims, ctx.ints([stop + 1], "stop"), ctx.ints([rank], "rank")])
        shape = ctx.op("Concat", [head, ctx.ints([-1], "merged"), tail], axis=0)
        ctx.op("Reshape", [x, shape], [ctx.output(node)])


@handles("transpose")
def transpose(ctx: OnnxBuilder, node: Node) -> None:
    ctx.op("Transpose", [ctx.tensor(node.inputs[0])], [ctx.output(node)], perm=[int(p) for p in node.attrs["perm"]])


@handles("squeeze")
def squeeze(ctx: OnnxBuilder, node: Node) -> None:
    """Paddle leaves an axis whose size is not 1 as it is; ONNX refuses it, so such axes are
    dropped here, which needs their size known."""
    rank = _rank(ctx, node.inputs[0])
    axes = _ints_or_attr(ctx, node, 1, "axes", "axes")
    x = ctx.tensor(node.inputs[0])
    if not axes:
        ctx.op("Squeeze", [x], [ctx.output(node)])
        return
    shape = ctx.static_shape(x) or [None] * rank
    info = ctx.info(node.inputs[0])
    keep = []
    for axis in sorted({_axis(a, rank) for a in axes}):
        size = shape[axis]
        if size is None and info is not None and axis > 0 and info.shape[axis] > 0:
            size = info.shape[axis]  # Paddle's own static shape
        if size is None:
            raise ctx.fail(f"squeeze of axis {axis}, whose size is not fixed (Paddle squeezes it only when it is 1)")
        if size == 1:
            keep.append(axis)
    if not keep:
        ctx.alias(node.output, x)
        return
    ctx.op("Squeeze", [x, ctx.ints(keep, "axes")], [ctx.output(node)])


@handles("unsqueeze")
def unsqueeze(ctx: OnnxBuilder, node: Node) -> None:
    """Paddle inserts the axes one after the other, a negative one counting from the end of the
    tensor as it is at that point; ONNX wants positions in the output: replayed here."""
    rank = _rank(ctx, node.inputs[0])
    axes = _ints_or_attr(ctx, node, 1, "axes", "axes")
    layout = [False] * rank  # True: an inserted axis
    for axis in axes:
        position = axis + len(layout) + 1 if axis < 0 else axis
        layout.insert(min(max(position, 0), len(layout)), True)
    ctx.op("Unsqueeze", [ctx.tensor(node.inputs[0]), ctx.ints([i for i, new in enumerate(layout) if new], "axes")],
           [ctx.output(node)])


@handles("concat")
def concat(ctx: OnnxBuilder, node: Node) -> None:
    parts = node.inputs[0] if isinstance(node.inputs[0], tuple) else (node.inputs[0],)
    axis = _ints(ctx, node.inputs[1], "axis")[0] if _operand(node, 1) is not None else int(node.attrs.get("axis", 0))
    want = ctx.dtype(node.output)
    ctx.op("Concat", [_cast_to(ctx, ctx.tensor(p), ctx.dtype(p), want) for p in parts], [ctx.output(node)], axis=axis)


@handles("stack")
def stack(ctx: OnnxBuilder, node: Node) -> None:
    parts = node.inputs[0] if isinstance(node.inputs[0], tuple) else (node.inputs[0],)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + _rank(ctx, parts[0]) + 1 if axis < 0 else axis
    axes = ctx.ints([axis], "axis")
    ctx.op("Concat", [ctx.op("Unsqueeze", [ctx.tensor(p), axes]) for p in parts], [ctx.output(node)], axis=axis)


@handles("split", "split_with_num")
def split(ctx: OnnxBuilder, node: Node) -> None:
    """`split` takes sections (one may be -1: the rest), `split_with_num` equal parts."""
    x = ctx.tensor(node.inputs[0])
    outputs = [ctx.output(node, i) for i in range(len(node.outputs))]
    axis_operand = node.inputs[2] if node.op == "split" else _operand(node, 1)
    axis = _ints(ctx, axis_operand, "axis")[0] if axis_operand is not None else int(node.attrs.get("axis", 0))
    if node.op == "split_with_num":
        count = int(node.attrs.get("num", len(outputs)))
        if count != len(outputs):
            raise ctx.fail(f"split into {count} parts has {len(outputs)} outputs")
        if ctx.opset >= 18:
            ctx.op("Split", [x], outputs, axis=axis, num_outputs=count)
        else:
            ctx.op("Split", [x], outputs, axis=axis)
        return
    sections = _ints(ctx, node.inputs[1], "sections")
    if -1 in sections:
        rank = _rank(ctx, node.inputs[0])
        shape = ctx.static_shape(x)
        size = shape[_axis(axis, rank)] if shape is not None else None
        if size is None:
            info = ctx.info(node.inputs[0])
            size = info.shape[_axis(axis, rank)] if info is not None and info.shape[_axis(axis, rank)] > 0 else None
        if size is None:
            raise ctx.fail("a section of -1 along an axis whose size is not fixed")
        sections[sections.index(-1)] = size - sum(s for s in sections if s != -1)
    ctx.op("Split", [x, ctx.ints(sections, "sections")], outputs, axis=axis)


@handles("slice")
def slice_(ctx: OnnxBuilder, node: Node) -> None:
    """Paddle clamps starts and ends like numpy, as ONNX Slice does; decrease_axis squeezes."""
    axes = [int(a) for a in node.attrs.get("axes", [])]
    starts = _int64_tensor(ctx, node.inputs[1], "starts")
    ends = _int64_tensor(ctx, node.inputs[2], "ends")
    decrease = [int(a) for a in node.attrs.get("decrease_axis", [])]
    out = ctx.output(node) if not decrease else 1
    y = ctx.op("Slice", [ctx.tensor(node.inputs[0]), starts, ends, ctx.ints(axes, "axes")], out)
    if decrease:
        ctx.op("Squeeze", [y, ctx.ints(decrease, "decrease")], [ctx.output(node)])


@handles("strided_slice")
def strided_slice(ctx: OnnxBuilder, node: Node) -> None:
    axes = [int(a) for a in node.attrs.get("axes", [])]
    starts, ends = _int64_tensor(ctx, node.inputs[1], "starts"), _int64_tensor(ctx, node.inputs[2], "ends")
    steps = _int64_tensor(ctx, node.inputs[3], "steps")
    inputs = [ctx.tensor(node.inputs[0]), starts, ends, ctx.ints(axes, "axes"), steps]
    ctx.op("Slice", inputs, [ctx.output(node)])


@handles("pad")
def pad(ctx: OnnxBuilder, node: Node) -> None:
    """`pad`: paddings [before_0, after_0, before_1, ...] over every axis, constant mode."""
    paddings = [int(p) for p in node.attrs.get("paddings", [])]
    if _operand(node, 1) is not None:
        value = _floats(ctx, node.inputs[1], "pad value")[0]
    else:
        value = float(node.attrs.get("pad_value", 0.0))
    pads = paddings[0::2] + paddings[1::2]
    fill = ctx.scalar(value, ctx.dtype(node.inputs[0]), "value")
    ctx.op("Pad", [ctx.tensor(node.inputs[0]), ctx.ints(pads, "pads"), fill], [ctx.output(node)], mode="constant")


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@handles("pad3d")
def pad3d(ctx: OnnxBuilder, node: Node) -> None:
    """pad3d pads a 5-D NCDHW tensor by [left, right, top, bottom, front, back] (paddle.nn
    .functional.pad puts a 4-D input through it, between an unsqueeze and a squeeze).
    replicate is ONNX's edge, circular its wrap (opset 19+)."""
    _nchw(ctx, node)
    p = _ints_or_attr(ctx, node, 1, "paddings", "paddings")
    if len(p) != 6:
        raise ctx.fail(f"pad3d paddings {p} are not 6 values")
    mode = str(node.attrs.get("mode", "constant"))
    if mode not in _PAD_MODES or (mode == "circular" and ctx.opset < 19):
        raise ctx.fail(f"pad mode {printable(mode)} is not supported at opset {ctx.opset}")
    pads = [0, 0, p[4], p[2], p[0], 0, 0, p[5], p[3], p[1]]
    inputs = [ctx.tensor(node.inputs[0]), ctx.ints(pads, "pads")]
    if mode == "constant":
        inputs.append(ctx.scalar(float(node.attrs.get("pad_value", 0.0)), ctx.dtype(node.inputs[0]), "value"))
    ctx.op("Pad", inputs, [ctx.output(node)], mode=_PAD_MODES[mode])


# ----------------------------------------------------------------------------------------------
# matrix products


@handles("matmul")
def matmul(ctx: OnnxBuilder, node: Node) -> None:
    """numpy matmul after transposing the last two axes where asked (a 1-D operand has none).
    matmul(x [N, in], W [in, out]) + b [out], Paddle's Linear, becomes one Gemm on the
    parameters as they are (Paddle's [in, out] weight is Gemm's B with transB=0)."""
    x_name, y_name = node.inputs[0], node.inputs[1]
    tx, ty = bool(node.attrs.get("transpose_x", False)), bool(node.attrs.get("transpose_y", False))
    if not tx and not ty and _linear(ctx, node):
        return
    operands = []
    for name, flip in ((x_name, tx), (y_name, ty)):
        value = ctx.tensor(name)
        rank = _rank(ctx, name) if flip else 0
        if flip and rank >= 2:
            perm = list(range(rank))
            perm[-2], perm[-1] = perm[-1], perm[-2]
            value = ctx.op("Transpose", [value], perm=perm)
        operands.append(value)
    ctx.op("MatMul", operands, [ctx.output(node)])


def _linear(ctx: OnnxBuilder, node: Node) -> bool:
    x_name, w_name = node.inputs[0], node.inputs[1]
    weight = ctx.graph.weights.get(w_name) if isinstance(w_name, str) else None
    if weight is None or np.ndim(weight) != 2 or ctx.rank(x_name) != 2:
        return False
    found = ctx.sole_consumer(node.output)
    if found is None:
        return False
    index, add = found
    if add.op != "add" or len(add.inputs) != 2 or add.attrs.get("axis", -1) not in (-1, 1):
        return False
    bias_name = add.inputs[1] if add.inputs[0] == node.output else add.inputs[0]
    bias = ctx.graph.weights.get(bias_name) if isinstance(bias_name, str) else None
    if bias is None or np.shape(bias) != (np.shape(weight)[1],):
        return False
    ctx.take(index)
    ctx.op("Gemm", [ctx.tensor(x_name), ctx.tensor(w_name), ctx.tensor(bias_name)], [ctx.output(add)], transB=0)
    return True


# ----------------------------------------------------------------------------------------------
# resizing


@handles("nearest_interp", "bilinear_interp", "bicubic_interp")
def interpolate(ctx: OnnxBuilder, node: Node) -> None:
    """paddle/phi/kernels/cpu/interpolate_kernel.cc. The output size is, in order of
    precedence, the SizeTensor list, the OutSize tensor, int(in * scale) (Scale tensor or the
    scale attribute), or out_h/out_w. The source coordinate of output pixel k is ratio * k
    (nearest: floored; with align_corners rounded half up and ratio (in-1)/(out-1)), for
    bilinear with align_mode 0 ratio * (k + 0.5) - 0.5 clamped at 0; ratio is 1/scale when a
    scale is given, else in/out. In ONNX Resize terms: nearest asymmetric + floor, or
    align_corners + round_prefer_ceil; bilinear pytorch_half_pixel (which, like Paddle, reads
    pixel 0 when the output is 1 wide), asymmetric (align_mode 1) or align_corners; bicubic
    half_pixel or align_corners with a = -0.75. Scales go to Resize as scales, sizes as sizes,
    so the ratio is the one Paddle uses."""
    _nchw(ctx, node)
    if _rank(ctx, node.inputs[0]) != 4:
        raise ctx.fail("only 4-D (NCHW) interpolation is supported")
    x = ctx.tensor(node.inputs[0])
    out_size, size_list, scale_tensor = _operand(node, 1), _operand(node, 2), _operand(node, 3)
    scale_attr = [float(s) for s in node.attrs.get("scale", []) or []]
    scales: list[float] | None = None
    sizes: str | None = None
    if isinstance(size_list, tuple) and size_list:
        sizes = _int64_tensor(ctx, size_list, "size")
    else:
        if scale_tensor is not None:
            scales = _floats(ctx, scale_tensor, "scale")
        elif scale_attr and all(s > 0 for s in scale_attr):
            scales = scale_attr
        if out_size is not None:
            if scales is not None:
                raise ctx.fail("both an output size and a scale: the ratio Paddle uses then has no ONNX form")
            sizes = _int64_tensor(ctx, out_size, "size")
        elif scales is None:
            out_h, out_w = int(node.attrs.get("out_h", -1)), int(node.attrs.get("out_w", -1))
            if out_h < 1 or out_w < 1:
                raise ctx.fail("no output size or scale is given")
            sizes = ctx.ints([out_h, out_w], "size")
    method = str(node.attrs.get("interp_method", node.op.split("_")[0]))
    align_corners = bool(node.attrs.get("align_corners", False))
    attrs: dict[str, Any]
    if method == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="align_corners" if align_corners else "asymmetric",
                     nearest_mode="round_prefer_ceil" if align_corners else "floor")
    elif method == "bilinear":
        if align_corners:
            mode = "align_corners"
        else:
            mode = "pytorch_half_pixel" if int(node.attrs.get("align_mode", 1)) == 0 else "asymmetric"
        attrs = dict(mode="linear", coordinate_transformation_mode=mode)
    elif method == "bicubic":
        attrs = dict(mode="cubic", cubic_coeff_a=-0.75,
                     coordinate_transformation_mode="align_corners" if align_corners else "half_pixel")
    else:
        raise ctx.fail(f"interp_method {printable(method)} is not supported")
    if scales is not None:
        pair = scales * 2 if len(scales) == 1 else scales[:2]
        ctx.op("Resize", [x, "", ctx.const(np.asarray([1.0, 1.0, *pair], np.float32), np.float32, "scales")],
               [ctx.output(node)], **attrs)
        return
    leading = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.ints([0], "zero"), ctx.ints([2], "two")])
    full = ctx.op("Concat", [leading, sizes], axis=0)
    ctx.op("Resize", [x, "", "", full], [ctx.output(node)], **attrs)
