"""Constants, casts, shapes and layouts, matrix products."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from onnx import TensorProto, helper

from acnet_convert.graph.ir import Node
from acnet_convert.write.onnx.ops._common import _axis, _cast_to, _floats, _int64_result, _int64_tensor, _ints, _ints_or_attr, _nchw, _operand, _rank, handles
from acnet_convert.common.text import printable

if TYPE_CHECKING:
    from acnet_convert.write.onnx.builder import OnnxBuilder

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


@handles("expand")
def expand(ctx: OnnxBuilder, node: Node) -> None:
    """Paddle's -1 keeps the input's size; ONNX Expand broadcasts like numpy, where a 1 does
    that (Paddle expands nothing else: a target differs from the input only where it is 1)."""
    x = ctx.tensor(node.inputs[0])
    item = _operand(node, 1)
    if item is None or ctx.constant(item) is not None or (
            isinstance(item, tuple) and all(ctx.constant(t) is not None for t in item)):
        target = _ints(ctx, item, "shape") if item is not None else [int(v) for v in node.attrs["shape"]]
        shape = ctx.ints([1 if v == -1 else v for v in target], "shape")
    else:
        shape = ctx.op("Max", [_int64_tensor(ctx, item, "shape"), ctx.ints([1], "one")])
    ctx.op("Expand", [x, shape], [ctx.output(node)])


@handles("select_input")
def select_input(ctx: OnnxBuilder, node: Node) -> None:
    """select_input(mask, x0, x1, ...): the input the int mask names (what a legacy program's
    `if` leaves). The inputs may differ in shape (Where would broadcast them): an If on
    mask == k per input, each branch passing its input on; a constant mask picks it here."""
    mask, choices = node.inputs[0], node.inputs[1:]
    value = ctx.constant(mask)
    if value is not None:
        ctx.alias(node.output, ctx.tensor(choices[int(np.asarray(value).reshape(-1)[0])]))
        return
    index = _cast_to(ctx, ctx.op("Reshape", [ctx.tensor(mask), ctx.ints([], "scalar")]), ctx.dtype(mask),
                     TensorProto.INT64)
    elem = ctx.dtype(node.output)
    result = ctx.tensor(choices[0])
    for k in range(1, len(choices)):
        cond = ctx.op("Equal", [index, ctx.const(np.int64(k), np.int64, "k")])
        out = [ctx.output(node)] if k == len(choices) - 1 else 1
        result = ctx.op("If", [cond], out, then_branch=_passing(ctx, ctx.tensor(choices[k]), elem),
                        else_branch=_passing(ctx, result, elem))
    if len(choices) == 1:
        ctx.alias(node.output, result)


def _passing(ctx: OnnxBuilder, tensor: str, elem: int) -> Any:
    """A branch graph that returns the outer tensor `tensor` as it is."""
    out = ctx.unique(f"{tensor}.passed")
    return helper.make_graph([helper.make_node("Identity", [tensor], [out])], out, [],
                             [helper.make_tensor_value_info(out, elem, None)])


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
