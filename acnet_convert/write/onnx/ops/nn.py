"""Convolution, normalisation, pooling and resizing."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from acnet_convert.graph.ir import Input, Node
from acnet_convert.write.onnx.ops._common import _floats, _int64_tensor, _ints, _ints_or_attr, _nchw, _operand, _pads, _pair, _param_or_fill, _rank, _reduce, _spatial, handles
from acnet_convert.common.text import printable

if TYPE_CHECKING:
    from acnet_convert.write.onnx.builder import OnnxBuilder

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
