"""Evaluators of the ops of regions, with Paddle's semantics at the borders: conv2d (SAME and
VALID included), batch_norm in inference mode, average pool2d, pad and pad3d, float64."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from acnet_convert.fold import numeric
from acnet_convert.graph.eval_base import Unevaluable, as_float, ints, pair, registry, scalar
from acnet_convert.graph.ir import Node

TABLE, evaluates = registry()


# ----------------------------------------------------------------------------------------------
# the ops of regions


def conv_padding(node: Node, in_hw: Sequence[int], kernel: Sequence[int]) -> tuple[int, int, int, int]:
    """A conv's (top, bottom, left, right) padding on an input of `in_hw` (Paddle's SAME and
    VALID included)."""
    algorithm = str(node.attrs.get("padding_algorithm", "EXPLICIT")).upper()
    strides = pair(node.attrs.get("strides", [1, 1]))
    dilations = pair(node.attrs.get("dilations", [1, 1]))
    if algorithm == "VALID":
        return 0, 0, 0, 0
    if algorithm == "SAME":
        pads = []
        for n, k, s, d in zip(in_hw, kernel, strides, dilations):
            total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
            pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    p = [int(v) for v in node.attrs.get("paddings", [0, 0])]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise Unevaluable(f"paddings {p}")


def _nchw(node: Node) -> None:
    if str(node.attrs.get("data_format", "NCHW")) not in ("NCHW", "AnyLayout"):
        raise Unevaluable(f"{node.op} in layout {node.attrs.get('data_format')}")


@evaluates("conv2d")
def _conv2d(node: Node, args: list[Any]) -> np.ndarray:
    _nchw(node)
    x = args[0] if isinstance(args[0], numeric.RankOne) else as_float(args[0])
    w = np.asarray(args[1])  # float32 weights are read as they are: numeric promotes what it multiplies
    bias = None if len(args) < 3 or args[2] is None else np.asarray(args[2]).reshape(-1)
    padding = conv_padding(node, x.shape[2:], w.shape[2:])
    return numeric.conv2d(x, w, bias, pair(node.attrs.get("strides", [1, 1])), pair(node.attrs.get("dilations", [1, 1])),
                          padding, int(node.attrs.get("groups", 1)))


@evaluates("batch_norm")
def _batch_norm(node: Node, args: list[Any]) -> Any:
    _nchw(node)
    if not (node.attrs.get("is_test") or node.attrs.get("use_global_stats")):
        raise Unevaluable("a batch norm in training mode")
    x, mean, variance, scale, offset = (args + [None] * 5)[:5]
    shape = (1, -1) + (1,) * (np.ndim(x) - 2)
    t = 1.0 / np.sqrt(as_float(variance) + float(node.attrs.get("epsilon", 1e-5)))
    if scale is not None:
        t = t * as_float(scale)
    y = (as_float(x) - as_float(mean).reshape(shape)) * t.reshape(shape)
    if offset is not None:
        y = y + as_float(offset).reshape(shape)
    return (y,) + (None,) * (len(node.outputs) - 1)


@evaluates("pool2d")
def _pool2d(node: Node, args: list[Any]) -> np.ndarray:
    _nchw(node)
    a = node.attrs
    if a.get("pooling_type", "max") != "avg" or a.get("adaptive") or a.get("global_pooling"):
        raise Unevaluable("only fixed-window average pools are evaluated")
    x = as_float(args[0])
    size = pair(ints(args[1] if len(args) > 1 else None, a.get("kernel_size")))
    fake = Node("conv2d", (), (), {"padding_algorithm": a.get("padding_algorithm", "EXPLICIT"),
                                   "paddings": a.get("paddings", [0, 0]), "strides": a.get("strides", [1, 1])})
    padding = conv_padding(fake, x.shape[2:], size)
    return numeric.avg_pool2d(x, size, pair(a.get("strides", [1, 1])), padding, bool(a.get("exclusive", True)),
                              bool(a.get("ceil_mode", False)))


def hw_padding(node: Node, pads: Any) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of a `pad` (all axes, NCHW) or `pad3d` (NCDHW, W first) op;
    refused when it pads the batch, the channels or depth."""
    p = ints(pads, node.attrs.get("paddings"))
    if node.op == "pad":
        if len(p) != 8 or any(p[:4]):
            raise Unevaluable("a pad across batch or channels")
        return p[4], p[5], p[6], p[7]
    if len(p) != 6 or any(p[4:]) or node.attrs.get("data_format", "NCDHW") != "NCDHW":
        raise Unevaluable("a pad3d that is not an H/W pad of NCHW")
    left, right, top, bottom = p[:4]
    return top, bottom, left, right


@evaluates("pad", "pad3d")
def _pad(node: Node, args: list[Any]) -> np.ndarray:
    if node.attrs.get("mode", "constant") != "constant":
        raise Unevaluable(f"a {node.attrs.get('mode')} pad")
    x = as_float(args[0])
    if node.op == "pad3d":
        if x.ndim != 5:
            raise Unevaluable("a pad3d of a tensor that is not 5-D")
        value = scalar(None, node.attrs.get("pad_value", node.attrs.get("value", 0.0)))
        top, bottom, left, right = hw_padding(node, args[1] if len(args) > 1 else None)
        n, c, d, h, w = x.shape
        return numeric.pad(x.reshape(n, c * d, h, w), top, bottom, left, right, value).reshape(n, c, d, h + top + bottom, w + left + right)
    # PIR's pad: paddings an attribute (all axes), the value its second operand (one per
    # channel where a reader made it so: ONNX's Pad + ScatterND of a BNAndPad)
    values = np.asarray(args[1], np.float64).reshape(-1) if len(args) > 1 and args[1] is not None else None
    value = values if values is not None and values.size > 1 else scalar(args[1] if len(args) > 1 else None, node.attrs.get("pad_value", 0.0))
    top, bottom, left, right = hw_padding(node, None)
    return numeric.pad(x, top, bottom, left, right, value)
