"""One handler per graph op for the legacy Paddle writer (`writer.translate`): each names
the pre-PIR operator, its slots and attributes as Paddle's `op_compat.yaml` maps them from the
PIR op (`add` -> `elementwise_add` X/Y/Out, `conv2d` -> Input/Filter/Output, `pool2d`'s
kernel_size operand -> the `ksize` attribute, `leaky_relu`'s negative_slope -> `alpha`, ...).
Adding an op is adding a handler here. Pure Python: nothing here imports Paddle.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from acnet_convert.write.handlers import Registry
from acnet_convert.graph.ir import Node
from acnet_convert.read.lod_tensor import VAR_TYPES
from acnet_convert.common.text import printable

from acnet_convert.write.legacy.builder import CONSTANT_OPS

if TYPE_CHECKING:
    from acnet_convert.write.legacy.builder import LegacyBuilder


Handler = Callable[["LegacyBuilder", Node], None]
REGISTRY: Registry[Handler] = Registry()
HANDLERS = REGISTRY.handlers
handles = REGISTRY.handles


def supported_ops() -> list[str]:
    return REGISTRY.supported(CONSTANT_OPS)


def _same_name_unary(legacy: str, **renamed: str) -> Handler:
    """An op whose legacy form reads X and writes Out; `renamed` maps legacy attribute names to
    the graph's (or to a literal with `=`)."""

    def translate(b: LegacyBuilder, node: Node) -> None:
        attrs: dict[str, Any] = {}
        for legacy_name, source in renamed.items():
            if source.startswith("="):
                attrs[legacy_name] = float(source[1:])
            elif source in node.attrs:
                attrs[legacy_name] = node.attrs[source]
        b.op(legacy, {"X": [b.input(0)]}, {"Out": [b.output()]}, **attrs)

    return translate


for _op in ("relu", "sigmoid", "tanh", "exp", "abs", "sqrt", "rsqrt", "square", "floor", "ceil", "log",
            "reciprocal", "silu", "swish", "relu6", "softsign", "logsigmoid", "tanh_shrink", "erf", "sin", "cos",
            "sign", "assign", "round", "logical_not"):
    HANDLERS[_op] = _same_name_unary(_op)
HANDLERS["gelu"] = _same_name_unary("gelu", approximate="approximate")
HANDLERS["leaky_relu"] = _same_name_unary("leaky_relu", alpha="negative_slope")
HANDLERS["elu"] = _same_name_unary("elu", alpha="alpha")
HANDLERS["celu"] = _same_name_unary("celu", alpha="alpha")
HANDLERS["selu"] = _same_name_unary("selu", scale="scale", alpha="alpha")
HANDLERS["softplus"] = _same_name_unary("softplus", beta="beta", threshold="threshold")
HANDLERS["mish"] = _same_name_unary("mish", threshold="lambda")
HANDLERS["hardswish"] = _same_name_unary("hard_swish", threshold="=6", scale="=6", offset="=3")
HANDLERS["hardsigmoid"] = _same_name_unary("hard_sigmoid", slope="slope", offset="offset")
HANDLERS["hardtanh"] = _same_name_unary("brelu", t_min="t_min", t_max="t_max")
HANDLERS["softmax"] = _same_name_unary("softmax", axis="axis")
HANDLERS["log_softmax"] = _same_name_unary("log_softmax", axis="axis")

_ELEMENTWISE = {"add": "elementwise_add", "subtract": "elementwise_sub", "multiply": "elementwise_mul",
                "divide": "elementwise_div", "maximum": "elementwise_max", "minimum": "elementwise_min",
                "elementwise_pow": "elementwise_pow", "remainder": "elementwise_mod",
                "floor_divide": "elementwise_floordiv"}


@handles(*_ELEMENTWISE)
def _elementwise(b: LegacyBuilder, node: Node) -> None:
    b.op(_ELEMENTWISE[node.op], {"X": [b.input(0)], "Y": [b.input(1)]}, {"Out": [b.output()]}, axis=-1)


@handles("add_n")
def _add_n(b: LegacyBuilder, node: Node) -> None:
    b.op("sum", {"X": b.inputs(0)}, {"Out": [b.output()]})


def _is_depthwise(b: LegacyBuilder, node: Node) -> bool:
    """Paddle's own rule (static `conv2d`): groups == input channels and the output channels a
    multiple of them."""
    groups = int(node.attrs.get("groups", 1))
    weight = b.graph.tensors.get(node.inputs[1]) if isinstance(node.inputs[1], str) else None
    if weight is None and isinstance(node.inputs[1], str) and node.inputs[1] in b.graph.weights:
        shape = b.graph.weights[node.inputs[1]].shape
    else:
        shape = weight.shape if weight else ()
    return groups > 1 and len(shape) == 4 and shape[1] == 1 and shape[0] % groups == 0


@handles("conv2d")
def _conv2d(b: LegacyBuilder, node: Node) -> None:
    a = node.attrs
    attrs = {k: a[k] for k in ("strides", "paddings", "padding_algorithm", "dilations", "groups", "data_format") if k in a}
    kind = "depthwise_conv2d" if _is_depthwise(b, node) else "conv2d"
    x, w = b.input(0), b.input(1)
    if len(node.inputs) < 3 or node.inputs[2] is None:
        b.op(kind, {"Input": [x], "Filter": [w]}, {"Output": [b.output()]}, **attrs)
        return
    # a conv with a bias: conv2d, then elementwise_add of the [C] bias on axis 1, as Paddle's
    # static conv2d writes it
    if a.get("data_format", "NCHW") not in ("NCHW", "AnyLayout"):
        raise b.fail(f"a conv bias with data format {printable(a.get('data_format'))}")
    raw = b.temp(f"{node.output}.conv", b.graph.tensors[node.output].dtype if node.output in b.graph.tensors else "float32")
    b.op(kind, {"Input": [x], "Filter": [w]}, {"Output": [raw]}, **attrs)
    b.op("elementwise_add", {"X": [raw], "Y": [b.input(2)]}, {"Out": [b.output()]}, axis=1)


@handles("conv2d_transpose", "depthwise_conv2d_transpose")
def _conv2d_transpose(b: LegacyBuilder, node: Node) -> None:
    a = node.attrs
    attrs = {k: a[k] for k in ("strides", "paddings", "output_padding", "padding_algorithm", "groups", "dilations",
                               "data_format") if k in a}
    attrs["output_size"] = b.ints(2, "output_size", []) if len(node.inputs) > 2 else list(a.get("output_size", []))
    b.op(node.op, {"Input": [b.input(0)], "Filter": [b.input(1)]}, {"Output": [b.output()]}, **attrs)


@handles("batch_norm")
def _batch_norm(b: LegacyBuilder, node: Node) -> None:
    # PIR: batch_norm(x, mean, variance, scale, bias); the legacy op writes its running
    # statistics in place (MeanOut is Mean), and saved statistics nobody reads
    a = node.attrs
    mean, variance = b.input(1), b.input(2)
    for index, var in ((1, mean), (2, variance)):  # is_test: MeanOut/VarianceOut are Mean/Variance,
        if index < len(node.outputs):  # unchanged; a BN layer called twice reads them (legacy sources)
            b.names[node.outputs[index]] = var
    inputs = {"X": [b.input(0)], "Mean": [mean], "Variance": [variance], "Scale": b.optional(3), "Bias": b.optional(4)}
    outputs = {"Y": [b.output(0)], "MeanOut": [mean], "VarianceOut": [variance],
               "SavedMean": [b.temp(f"{node.output}.saved_mean")], "SavedVariance": [b.temp(f"{node.output}.saved_variance")]}
    b.op("batch_norm", inputs, outputs, is_test=True, momentum=float(a.get("momentum", 0.9)),
         epsilon=float(a.get("epsilon", 1e-5)), data_layout=a.get("data_format", "NCHW"),
         use_global_stats=bool(a.get("use_global_stats", False)),
         trainable_statistics=bool(a.get("trainable_statistics", False)))


@handles("pool2d")
def _pool2d(b: LegacyBuilder, node: Node) -> None:
    a = node.attrs
    attrs = {k: a[k] for k in ("strides", "paddings", "ceil_mode", "exclusive", "data_format", "pooling_type",
                               "global_pooling", "adaptive", "padding_algorithm") if k in a}
    b.op("pool2d", {"X": [b.input(0)]}, {"Out": [b.output()]}, ksize=b.ints(1, "kernel_size"), **attrs)


@handles("flatten")
def _flatten(b: LegacyBuilder, node: Node) -> None:
    out = b.output()
    b.op("flatten_contiguous_range", {"X": [b.input(0)]}, {"Out": [out], "XShape": [b.temp(f"{out}.xshape")]},
         start_axis=int(node.attrs.get("start_axis", 1)), stop_axis=int(node.attrs.get("stop_axis", -1)))


@handles("reshape")
def _reshape(b: LegacyBuilder, node: Node) -> None:
    out = b.output()
    b.op("reshape2", {"X": [b.input(0)]}, {"Out": [out], "XShape": [b.temp(f"{out}.xshape")]}, shape=b.ints(1, "shape"))


@handles("transpose")
def _transpose(b: LegacyBuilder, node: Node) -> None:
    out = b.output()
    b.op("transpose2", {"X": [b.input(0)]}, {"Out": [out], "XShape": [b.temp(f"{out}.xshape")]},
         axis=[int(v) for v in node.attrs["perm"]])


@handles("squeeze", "unsqueeze")
def _squeeze(b: LegacyBuilder, node: Node) -> None:
    out = b.output()
    b.op(f"{node.op}2", {"X": [b.input(0)]}, {"Out": [out], "XShape": [b.temp(f"{out}.xshape")]},
         axes=b.ints(1, "axis", []))


@handles("matmul")
def _matmul(b: LegacyBuilder, node: Node) -> None:
    b.op("matmul_v2", {"X": [b.input(0)], "Y": [b.input(1)]}, {"Out": [b.output()]},
         trans_x=bool(node.attrs.get("transpose_x", False)), trans_y=bool(node.attrs.get("transpose_y", False)))


@handles("scale")
def _scale(b: LegacyBuilder, node: Node) -> None:
    b.op("scale", {"X": [b.input(0)]}, {"Out": [b.output()]}, scale=b.scalar(1, "scale", 1.0),
         bias=float(node.attrs.get("bias", 0.0)), bias_after_scale=bool(node.attrs.get("bias_after_scale", True)))


_REDUCE = {"mean": "reduce_mean", "max": "reduce_max", "min": "reduce_min", "prod": "reduce_prod"}


@handles(*_REDUCE)
def _reduce(b: LegacyBuilder, node: Node) -> None:
    axis = b.ints(1, "axis", [])
    rank = len(b.graph.tensors[node.inputs[0]].shape) if node.inputs[0] in b.graph.tensors else None
    reduce_all = not axis or (rank is not None and sorted(a % rank for a in axis) == list(range(rank)))
    b.op(_REDUCE[node.op], {"X": [b.input(0)]}, {"Out": [b.output()]}, dim=axis, keep_dim=bool(node.attrs.get("keepdim", False)),
         reduce_all=reduce_all)


@handles("concat")
def _concat(b: LegacyBuilder, node: Node) -> None:
    b.op("concat", {"X": b.inputs(0)}, {"Out": [b.output()]}, axis=int(b.scalar(1, "axis", 0)))


@handles("split", "split_with_num")
def _split(b: LegacyBuilder, node: Node) -> None:
    outs = [b.output(i) for i in range(len(node.outputs))]
    if node.op == "split":
        sections, num, axis = b.ints(1, "sections"), 0, int(b.scalar(2, "axis"))
    else:
        sections, num, axis = [], int(node.attrs["num"]), int(b.scalar(1, "axis"))
    b.op("split", {"X": [b.input(0)]}, {"Out": outs}, sections=sections, num=num, axis=axis)


@handles("slice")
def _slice(b: LegacyBuilder, node: Node) -> None:
    a = node.attrs
    b.op("slice", {"Input": [b.input(0)]}, {"Out": [b.output()]}, axes=[int(v) for v in a["axes"]],
         starts=b.ints(1, "starts"), ends=b.ints(2, "ends"), infer_flags=[int(v) for v in a.get("infer_flags", [])],
         decrease_axis=[int(v) for v in a.get("decrease_axis", [])])


@handles("pad3d")
def _pad3d(b: LegacyBuilder, node: Node) -> None:
    a = node.attrs
    b.op("pad3d", {"X": [b.input(0)]}, {"Out": [b.output()]}, paddings=b.ints(1, "paddings"),
         mode=a.get("mode", "constant"), value=float(a.get("pad_value", 0.0)), data_format=a.get("data_format", "NCDHW"))


@handles("pad")
def _pad(b: LegacyBuilder, node: Node) -> None:
    b.op("pad", {"X": [b.input(0)]}, {"Out": [b.output()]}, paddings=[int(v) for v in node.attrs["paddings"]],
         pad_value=b.scalar(1, "pad_value", 0.0))


@handles("dropout")
def _dropout(b: LegacyBuilder, node: Node) -> None:
    # PIR: dropout(x, seed_tensor, p); in an inference program it is the identity
    # (upscale_in_train) or a scale by 1 - p (downgrade_in_infer)
    a = node.attrs
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        raise b.fail("a dropout seeded from a tensor")
    out = b.output(0)
    b.op("dropout", {"X": [b.input(0)]}, {"Out": [out], "Mask": [b.temp(f"{out}.mask", "uint8")]},
         dropout_prob=b.scalar(2, "p", 0.5), is_test=True, dropout_implementation=a.get("mode", "upscale_in_train"))


@handles("bilinear_interp", "nearest_interp", "bicubic_interp", "linear_interp", "trilinear_interp")
def _interp(b: LegacyBuilder, node: Node) -> None:
    # PIR: interp(x, out_size, size_tensor, scale_tensor); constant sizes fold into out_h/out_w
    a = node.attrs
    out_d, out_h, out_w = int(a.get("out_d", -1)), int(a.get("out_h", -1)), int(a.get("out_w", -1))
    scale = [float(s) for s in a.get("scale", [])]
    for index in (1, 2):
        if len(node.inputs) > index and node.inputs[index] is not None:
            size = b.ints(index)
            if len(size) == 1:
                out_w = size[0]
            elif len(size) == 2:
                out_h, out_w = size
            else:
                out_d, out_h, out_w = size[-3:]
            scale = []
    if len(node.inputs) > 3 and node.inputs[3] is not None:
        scale = [float(s) for s in np.asarray(b.constant(3)).reshape(-1)]
    b.op(f"{node.op}_v2", {"X": [b.input(0)]}, {"Out": [b.output()]}, data_layout=a.get("data_format", "NCHW"),
         out_d=out_d, out_h=out_h, out_w=out_w, scale=scale, interp_method=a.get("interp_method", node.op.split("_")[0]),
         align_corners=bool(a.get("align_corners", False)), align_mode=int(a.get("align_mode", 1)))


@handles("cast")
def _cast(b: LegacyBuilder, node: Node) -> None:
    source = b.graph.tensors.get(node.inputs[0]) if isinstance(node.inputs[0], str) else None
    target = str(node.attrs.get("dtype", ""))
    if source is None or source.dtype not in VAR_TYPES or target not in VAR_TYPES:
        raise b.fail(f"a cast to {printable(target)} from an unknown type")
    b.op("cast", {"X": [b.input(0)]}, {"Out": [b.output()]}, in_dtype=VAR_TYPES[source.dtype], out_dtype=VAR_TYPES[target])


@handles("clip")
def _clip(b: LegacyBuilder, node: Node) -> None:
    b.op("clip", {"X": [b.input(0)]}, {"Out": [b.output()]}, min=b.scalar(1, "min"), max=b.scalar(2, "max"))


@handles("prelu")
def _prelu(b: LegacyBuilder, node: Node) -> None:
    b.op("prelu", {"X": [b.input(0)], "Alpha": [b.input(1)]}, {"Out": [b.output()]},
         mode=node.attrs.get("mode", "all"), data_format=node.attrs.get("data_format", "NCHW"))


@handles("cumsum")
def _cumsum(b: LegacyBuilder, node: Node) -> None:
    a = node.attrs
    b.op("cumsum", {"X": [b.input(0)]}, {"Out": [b.output()]}, axis=int(b.scalar(1, "axis", -1)),
         flatten=bool(a.get("flatten", False)), exclusive=bool(a.get("exclusive", False)), reverse=bool(a.get("reverse", False)))


@handles("shape", "shape64")
def _shape(b: LegacyBuilder, node: Node) -> None:
    # the legacy `shape` op writes int32, the dtype of PIR's `shape`; `shape64` is its int64 cast
    x, out = b.input(0), b.output()
    if node.op == "shape":
        b.op("shape", {"Input": [x]}, {"Out": [out]})
        return
    raw = b.temp(f"{out}.int32", "int32")
    b.op("shape", {"Input": [x]}, {"Out": [raw]})
    b.op("cast", {"X": [raw]}, {"Out": [out]}, in_dtype=VAR_TYPES["int32"], out_dtype=VAR_TYPES["int64"])


@handles("stack")
def _stack(b: LegacyBuilder, node: Node) -> None:
    b.op("stack", {"X": b.inputs(0)}, {"Y": [b.output()]}, axis=int(node.attrs.get("axis", 0)))


@handles("expand")
def _expand(b: LegacyBuilder, node: Node) -> None:
    # PIR: expand(x, shape); the shape is a constant (the `shape` attribute), one int tensor
    # (`Shape`) or scalar tensors (`expand_shapes_tensor`), -1 keeping the input's size
    # (Paddle's own export writes -2 in the attribute for a size a tensor gives; the attribute
    # is what Paddle infers the output's shape from before it runs)
    item = node.inputs[1] if len(node.inputs) > 1 else None
    inputs = {"X": [b.input(0)]}
    if item is None or b.graph.constant(item) is not None or (
            isinstance(item, tuple) and all(b.graph.constant(t) is not None for t in item)):
        b.op("expand_v2", inputs, {"Out": [b.output()]}, shape=b.ints(1, "shape"))
        return
    if isinstance(item, tuple):
        hints = [int(np.asarray(b.graph.constant(t)).reshape(-1)[0]) if b.graph.constant(t) is not None else -2 for t in item]
        b.op("expand_v2", {**inputs, "expand_shapes_tensor": b.inputs(1)}, {"Out": [b.output()]}, shape=hints)
        return
    info = b.graph.tensors.get(node.output)
    if info is None:
        raise b.fail("an expand to a shape computed at run time, of unknown rank")
    hints = [d if d > 0 else -2 for d in info.shape]
    b.op("expand_v2", {**inputs, "Shape": [b.input(1)]}, {"Out": [b.output()]}, shape=hints)


@handles("full_like")
def _full_like(b: LegacyBuilder, node: Node) -> None:
    # PIR: full_like(x, value) with the value a constant operand; the legacy op fill_any_like
    target = str(node.attrs.get("dtype", ""))
    if target not in VAR_TYPES:
        raise b.fail(f"a full_like of dtype {printable(target)}")
    b.op("fill_any_like", {"X": [b.input(0)]}, {"Out": [b.output()]}, value=b.scalar(1, "value"),
         dtype=VAR_TYPES[target])


@handles("select_input")
def _select_input(b: LegacyBuilder, node: Node) -> None:
    # the input the int mask names (what a legacy `if` leaves once its blocks are inlined)
    b.op("select_input", {"X": [b.tensor(t) for t in node.inputs[1:]], "Mask": [b.input(0)]}, {"Out": [b.output()]})
