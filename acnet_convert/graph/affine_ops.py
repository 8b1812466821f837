"""Which ops are affine in one operand, and what each does to an `Affine` map (`fold.affine`).

`data_operands(graph, node, known)` says which operands of `node` carry the input when the op
is affine in them and every other operand is a constant (a weight, a constant, or for a
concat a field computed from constants and shapes only); None when the op is not affine that
way. `apply(graph, node, maps)` composes: the maps of its data operands in, the map of its
output out (`NotAConv` when the composite is not a convolution in the interior).

The ops: conv2d (constant kernel, optional bias), batch_norm in inference mode, add,
subtract, multiply and divide by a constant scalar or per-channel vector, scale, add_n, zero
or constant pads (`pad`, `pad3d` and F.pad's unsqueeze/squeeze around it), crops (`slice` on
H/W), a concat of the input with constant fields along H or W (a pad with per-channel values,
as DBB's BNAndPad writes it), fixed-window average pooling, and the identities.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from acnet_convert.fold import affine as A
from acnet_convert.fold.affine import Affine, NotAConv
from acnet_convert.graph.eval_base import Unevaluable, pair
from acnet_convert.graph.eval_nn import conv_padding, hw_padding
from acnet_convert.graph.ir import Graph, Node

BIG = 1 << 30  # slice ends at or above this mean "to the end"
_SUMS = ("add", "subtract", "add_n")


def per_channel(value: np.ndarray | None, channels: int | None) -> np.ndarray | float | None:
    """A constant that broadcasts over NCHW as one value per channel (or one value): the
    vector (or the scalar), else None."""
    if value is None:
        return None
    v = np.asarray(value, np.float64)
    if v.size == 1:
        return float(v.reshape(-1)[0])
    if v.ndim > 4 or v.ndim < 3:
        return None
    shape = v.shape[-3:]
    if shape[1:] != (1, 1) or (channels is not None and shape[0] != channels) or any(d != 1 for d in v.shape[:-3]):
        return None
    return v.reshape(-1)


class Known:
    """What a region may read besides its input: weights, constants, and fields (tensors made
    from constants and shapes only)."""

    def __init__(self, graph: Graph, fields: set[str]) -> None:
        self.graph = graph
        self.fields = fields

    def constant(self, name: object) -> np.ndarray | None:
        if not isinstance(name, str):
            return None
        if name in self.graph.weights:
            return self.graph.weights[name]
        return self.graph.constant(name)

    def is_constant(self, name: object) -> bool:
        return isinstance(name, str) and (name in self.graph.weights or name in self.graph.constants)

    def channels(self, name: object) -> int | None:
        info = self.graph.tensors.get(name) if isinstance(name, str) else None
        return info.shape[1] if info is not None and len(info.shape) == 4 and info.shape[1] > 0 else None


def _nchw(node: Node) -> bool:
    return str(node.attrs.get("data_format", "NCHW")) in ("NCHW", "AnyLayout")


def _constant_operands(node: Node, known: Known, indices: range | tuple[int, ...]) -> bool:
    return all(i >= len(node.inputs) or node.inputs[i] is None or known.is_constant(node.inputs[i]) for i in indices)


def data_operands(node: Node, known: Known) -> tuple[int, ...] | None:
    """The operands that carry the input, when `node` is affine in them (see module doc)."""
    op, inputs = node.op, node.inputs
    if op == "conv2d":
        w = known.constant(inputs[1]) if len(inputs) > 1 else None
        algorithm = str(node.attrs.get("padding_algorithm", "EXPLICIT")).upper()
        fixed = algorithm in ("EXPLICIT", "VALID") or (algorithm == "SAME" and pair(node.attrs.get("strides", [1, 1])) == (1, 1))
        ok = w is not None and np.ndim(w) == 4 and _nchw(node) and fixed and _constant_operands(node, known, (2,))
        return (0,) if ok else None
    if op == "batch_norm":
        inference = (node.attrs.get("is_test") or node.attrs.get("use_global_stats")) and not node.attrs.get("trainable_statistics")
        return (0,) if inference and _nchw(node) and _constant_operands(node, known, (1, 2, 3, 4)) else None
    if op in ("add", "subtract"):
        data = tuple(i for i in (0, 1) if not known.is_constant(inputs[i]))
        if len(data) == 1:
            other = known.constant(inputs[1 - data[0]])
            return data if per_channel(other, known.channels(inputs[data[0]])) is not None else None
        return data or None
    if op in ("multiply", "divide"):
        if known.is_constant(inputs[0]) == known.is_constant(inputs[1]):
            return None
        data = 0 if known.is_constant(inputs[1]) else 1
        if op == "divide" and data == 1:
            return None
        factor = known.constant(inputs[1 - data])
        return (data,) if per_channel(factor, known.channels(inputs[data])) is not None else None
    if op == "scale":
        return (0,) if _constant_operands(node, known, (1,)) else None
    if op == "add_n":
        terms = inputs[0] if isinstance(inputs[0], tuple) else (inputs[0],)
        return (0,) if any(not known.is_constant(t) for t in terms) else None
    if op in ("pad", "pad3d"):
        if node.attrs.get("mode", "constant") != "constant" or not _constant_operands(node, known, range(1, len(inputs))):
            return None
        try:
            hw_padding(node, known.constant(inputs[1]) if op == "pad3d" and len(inputs) > 1 else None)
        except Unevaluable:
            return None
        return (0,)
    if op in ("squeeze", "unsqueeze"):
        axes = known.constant(inputs[1]) if len(inputs) > 1 else None
        return (0,) if axes is not None and [int(a) for a in np.asarray(axes).reshape(-1)] in ([2], [-3]) else None
    if op == "slice":
        ok = _constant_operands(node, known, (1, 2)) and not node.attrs.get("decrease_axis")
        return (0,) if ok and all(int(a) % 4 in (2, 3) for a in node.attrs.get("axes", [])) else None
    if op == "pool2d":
        a = node.attrs
        ok = (a.get("pooling_type") == "avg" and not a.get("adaptive") and not a.get("global_pooling") and _nchw(node)
              and str(a.get("padding_algorithm", "EXPLICIT")).upper() in ("EXPLICIT", "VALID")
              and _constant_operands(node, known, (1,)))
        return (0,) if ok else None
    if op == "concat":
        parts = inputs[0] if isinstance(inputs[0], tuple) else (inputs[0],)
        axis = known.constant(inputs[1]) if len(inputs) > 1 else node.attrs.get("axis")
        data = [t for t in parts if not known.is_constant(t) and t not in known.fields]
        if axis is None or len(data) != 1 or int(np.asarray(axis).reshape(-1)[0]) % 4 not in (2, 3):
            return None
        return (0,)
    if op in ("assign", "dropout", "cast"):
        if op == "dropout" and not node.attrs.get("is_test"):
            return None
        if op == "cast" and str(node.attrs.get("dtype", "")).lower() not in ("float32", "float64", "float16"):
            return None
        return (0,)
    return None


# ----------------------------------------------------------------------------------------------
# composing


def _shape(graph: Graph, name: object) -> tuple[int, ...] | None:
    info = graph.tensors.get(name) if isinstance(name, str) else None
    return info.shape if info is not None else None


def apply(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str] = frozenset()) -> Affine:
    """The map of `node`'s output from the maps of its data operands (and its constants). The
    maps of `owned` tensors are read by this node alone: it may reuse their arrays."""
    fn = _APPLY.get(node.op)
    if fn is None:
        raise NotAConv(f"op '{node.op}' is not affine")
    return fn(node, maps, known, owned)


def _conv(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    x = node.inputs[0]
    w = np.asarray(known.constant(node.inputs[1]))
    b = known.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    # SAME with stride 1 is a fixed padding; the input size does not matter
    padding = conv_padding(node, (1 << 20, 1 << 20), w.shape[2:])
    return A.conv(maps[x], w, None if b is None else np.asarray(b).reshape(-1), pair(node.attrs.get("strides", [1, 1])),
                  pair(node.attrs.get("dilations", [1, 1])), padding, int(node.attrs.get("groups", 1)))


def _batch_norm(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    x, mean, variance, scale, offset = (list(node.inputs) + [None] * 5)[:5]
    return A.batch_norm(maps[x], None if scale is None else known.constant(scale), None if offset is None else known.constant(offset),
                        known.constant(mean), known.constant(variance), float(node.attrs.get("epsilon", 1e-5)), x in owned)


def _signed_terms(node: Node, known: Known) -> list[tuple[object, float]]:
    if node.op == "add_n":
        terms = node.inputs[0] if isinstance(node.inputs[0], tuple) else (node.inputs[0],)
        return [(t, 1.0) for t in terms]
    return [(node.inputs[0], 1.0), (node.inputs[1], -1.0 if node.op == "subtract" else 1.0)]


def _sum(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    data, mine, constant = [], [], 0.0
    terms = _signed_terms(node, known)
    for term, sign in terms:
        if known.is_constant(term):
            c = per_channel(known.constant(term), None)
            if c is None:
                raise NotAConv(f"{node.where()} adds a constant that is not one value per channel")
            constant = constant + sign * np.asarray(c)
        else:
            alone = term in owned and sum(t == term for t, _ in terms) == 1
            data.append(A.scale_shift(maps[term], sign, 0.0, alone) if sign != 1.0 else maps[term])  # type: ignore[index]
            mine.append(alone)
    total = data[0] if len(data) == 1 else A.add(data, mine)
    return A.scale_shift(total, 1.0, constant, len(data) > 1 or mine[0])


def _product(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    data = 0 if not known.is_constant(node.inputs[0]) else 1
    a = maps[node.inputs[data]]  # type: ignore[index]
    factor = per_channel(known.constant(node.inputs[1 - data]), a.out_channels)
    f = np.asarray(factor, np.float64)
    if node.op == "divide":
        f = 1.0 / f
    return A.scale_shift(a, f, 0.0, node.inputs[data] in owned)


def _scale(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    a = maps[node.inputs[0]]  # type: ignore[index]
    s = known.constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else node.attrs.get("scale", 1.0)
    s = float(np.asarray(s).reshape(-1)[0])
    b = float(node.attrs.get("bias", 0.0))
    return A.scale_shift(a, s, b if node.attrs.get("bias_after_scale", True) else b * s, node.inputs[0] in owned)


def _pad(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    pads = known.constant(node.inputs[1]) if node.op == "pad3d" and len(node.inputs) > 1 else None
    top, bottom, left, right = hw_padding(node, pads)
    return A.pad(maps[node.inputs[0]], top, bottom, left, right)  # type: ignore[index]


def _identity(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    a = maps[node.inputs[0]]  # type: ignore[index]
    if node.op == "dropout" and node.attrs.get("mode", "upscale_in_train") == "downgrade_in_infer":
        p = known.constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else node.attrs.get("p", 0.5)
        return A.scale_shift(a, 1.0 - float(np.asarray(p).reshape(-1)[0]), 0.0, node.inputs[0] in owned)
    return a


def _slice(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    x = node.inputs[0]
    shape = _shape(known.graph, x)
    starts = [int(v) for v in np.asarray(known.constant(node.inputs[1])).reshape(-1)]
    ends = [int(v) for v in np.asarray(known.constant(node.inputs[2])).reshape(-1)]
    crop = [0, 0, 0, 0]
    for axis, start, end in zip(node.attrs.get("axes", []), starts, ends):
        axis = int(axis) % 4
        size = shape[axis] if shape is not None and len(shape) == 4 and shape[axis] > 0 else None
        if start < 0:
            if size is None:
                raise NotAConv("a slice from the end of an axis of any size")
            start += size
        if end >= BIG:
            after = 0
        elif end < 0:
            after = -end
        elif size is not None:
            after = max(size - end, 0)
        else:
            raise NotAConv("a slice to a fixed row of an axis of any size")
        crop[2 * (axis - 2)] += max(start, 0)
        crop[2 * (axis - 2) + 1] += after
    return A.pad(maps[x], -crop[0], -crop[1], -crop[2], -crop[3])  # type: ignore[index]


def _pool(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    a = node.attrs
    size = pair([int(v) for v in np.asarray(known.constant(node.inputs[1]) if len(node.inputs) > 1 else a.get("kernel_size")).reshape(-1)])
    stride = pair(a.get("strides", [1, 1]))
    fake = Node("conv2d", (), (), {"padding_algorithm": a.get("padding_algorithm", "EXPLICIT"), "paddings": a.get("paddings", [0, 0])})
    top, bottom, left, right = conv_padding(fake, (1 << 20, 1 << 20), size)
    if a.get("ceil_mode"):  # the last window may hang over the end: as if padded by stride - 1 more
        bottom, right = bottom + stride[0] - 1, right + stride[1] - 1
    return A.avg_pool(maps[node.inputs[0]], size, stride, (top, bottom, left, right))  # type: ignore[index]


def _concat(node: Node, maps: Mapping[str, Affine], known: Known, owned: frozenset[str]) -> Affine:
    parts = node.inputs[0] if isinstance(node.inputs[0], tuple) else (node.inputs[0],)
    axis = known.constant(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("axis")
    axis = int(np.asarray(axis).reshape(-1)[0]) % 4
    data = next(t for t in parts if t in maps)
    before = after = 0
    seen = False
    for t in parts:
        if t == data:
            seen = True
            continue
        shape = _shape(known.graph, t)
        if shape is None or len(shape) != 4 or shape[axis] < 0:
            raise NotAConv("a concat of a field whose size along the axis is not fixed")
        if seen:
            after += shape[axis]
        else:
            before += shape[axis]
    a = maps[data]  # type: ignore[index]
    return A.pad(a, before, after, 0, 0) if axis == 2 else A.pad(a, 0, 0, before, after)


_APPLY: dict[str, Callable[[Node, Mapping[str, Affine], Known, frozenset[str]], Affine]] = {
    "conv2d": _conv, "batch_norm": _batch_norm, "add": _sum, "subtract": _sum, "add_n": _sum,
    "multiply": _product, "divide": _product, "scale": _scale, "pad": _pad, "pad3d": _pad,
    "squeeze": _identity, "unsqueeze": _identity, "assign": _identity, "dropout": _identity, "cast": _identity,
    "slice": _slice, "pool2d": _pool, "concat": _concat,
}


def is_sum(node: Node) -> bool:
    return node.op in _SUMS


def cost(node: Node, known: Known) -> float:
    """Multiply-adds per output pixel of a conv or pool (before the strides of what follows)."""
    if node.op == "conv2d":
        w = np.shape(known.constant(node.inputs[1]))
        return float(np.prod(w))
    if node.op == "pool2d":
        size = known.constant(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("kernel_size")
        return float(np.prod(np.asarray(size))) * (known.channels(node.inputs[0]) or 1)
    return 0.0
