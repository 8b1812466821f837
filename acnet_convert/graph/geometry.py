"""Where a branch reads its input, and whether branches share one kernel grid: the tap
arithmetic behind folding branches into one conv. Pure Python on a few integers per axis.

A conv with kernel k, dilation d, stride s and padding (before, after) on an input cropped by
(c_before, c_after) reads, for output position i, input rows i*s + first + u*d (u < k), with
first = c_before - before. Its output size is (in + extent - 1) // s + 1, with
extent = before + after - c_before - c_after - d*(k - 1). Branches fold into one conv exactly
when they share stride, dilation and extent (equal shapes for every input size), their first
taps sit on one dilated grid, and no branch both crops and pads one side (where the fused conv
reads real pixels, every branch does). Then each kernel lands in the fused one at
(first - min first) / d.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from acnet_convert.graph.ir import Graph, Node

BIG = 1 << 30  # slice ends at or above this mean "to the end"


class NotFusable(Exception):
    """Why branches do not fold into one conv (a sum's `Declined.reason`)."""


@dataclass(frozen=True)
class Geometry:
    """Where one branch reads its input, per axis (h, w): the taps of output position i sit at
    input rows i*stride + first + u*dilation, u < kernel; crops and pads are per side."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right (conv padding + explicit pads)
    crop: tuple[int, int, int, int]  # top, bottom, left, right (slices of the input)

    def first(self, axis: int) -> int:
        return self.crop[2 * axis] - self.pad[2 * axis]

    def extent(self, axis: int) -> int:
        """Output size = (in + extent - 1) // stride + 1: equal extents, equal shapes for any input."""
        k, d = self.kernel[axis], self.dilation[axis]
        return self.pad[2 * axis] + self.pad[2 * axis + 1] - self.crop[2 * axis] - self.crop[2 * axis + 1] - d * (k - 1)



IDENTITY = Geometry((1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (0, 0, 0, 0))


def pair(value: Any, name: str) -> tuple[int, int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise NotFusable(f"{name} {value} is not 2-D")
    return values[0], values[1]


def conv_padding(node: Node) -> tuple[int, int, int, int]:
    algorithm = str(node.attrs.get("padding_algorithm", "EXPLICIT")).upper()
    if algorithm == "VALID":
        return 0, 0, 0, 0
    if algorithm != "EXPLICIT":
        raise NotFusable(f"padding_algorithm {algorithm} depends on the input size")
    p = [int(v) for v in node.attrs.get("paddings", [0, 0])]
    if len(p) == 2:
        return p[0], p[0], p[1], p[1]
    if len(p) == 4:
        return p[0], p[1], p[2], p[3]
    raise NotFusable(f"paddings {p} are not 2-D")



def conv_geometry(graph: Graph, conv: Node, steps: Sequence[Node]) -> Geometry:
    """The geometry of `conv` reading its input through crop/pad `steps` (outermost first)."""
    kh, kw = graph.weights[conv.inputs[1]].shape[2:]  # type: ignore[index]
    pad = list(conv_padding(conv))
    crop = [0, 0, 0, 0]
    for step in steps:
        extra_pad, extra_crop = input_step(graph, step)
        pad = [a + b for a, b in zip(pad, extra_pad)]
        crop = [a + b for a, b in zip(crop, extra_crop)]
    for side in range(4):
        if pad[side] and crop[side]:
            raise NotFusable("a branch both crops and pads the same side of its input")
    return Geometry(
        (int(kh), int(kw)),
        pair(conv.attrs.get("strides", [1, 1]), "strides"),
        pair(conv.attrs.get("dilations", [1, 1]), "dilations"),
        tuple(pad),  # type: ignore[arg-type]
        tuple(crop),  # type: ignore[arg-type]
    )


def input_step(graph: Graph, node: Node) -> tuple[list[int], list[int]]:
    """The (pad, crop) a slice or pad node applies to H and W: top, bottom, left, right."""
    shape = _shape(graph, node.inputs[0]) if isinstance(node.inputs[0], str) else None
    if node.op in ("squeeze", "unsqueeze"):
        axes = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
        if axes is None or [int(a) for a in axes.reshape(-1)] not in ([2], [-3]):
            raise NotFusable(f"a {node.op} of an axis other than the one F.pad adds")
        return [0, 0, 0, 0], [0, 0, 0, 0]
    if node.op == "slice":
        starts, ends = graph.constant(node.inputs[1]), graph.constant(node.inputs[2])
        axes = [int(a) for a in node.attrs.get("axes", [])]
        if starts is None or ends is None or node.attrs.get("decrease_axis"):
            raise NotFusable("a slice with computed bounds")
        crop = [0, 0, 0, 0]
        for axis, start, end in zip(axes, starts.tolist(), ends.tolist()):
            axis = axis + 4 if axis < 0 else axis
            size = shape[axis] if shape and len(shape) == 4 and shape[axis] > 0 else None
            if start < 0:
                if size is None:
                    raise NotFusable("a slice from the end of a dynamic axis")
                start += size
            if end >= BIG:
                after = 0
            elif end < 0:
                after = -end
            elif size is not None:
                after = max(size - end, 0)
            else:
                raise NotFusable("a slice to a fixed index of a dynamic axis")
            if axis in (2, 3):
                crop[2 * (axis - 2)] += start
                crop[2 * (axis - 2) + 1] += after
            elif start != 0 or after != 0:
                raise NotFusable("a slice across batch or channels")
        return [0, 0, 0, 0], crop
    mode = str(node.attrs.get("mode", "constant"))
    value = float(node.attrs.get("pad_value", node.attrs.get("value", 0.0)))
    if mode != "constant" or value != 0.0:
        raise NotFusable(f"a {mode} pad with value {value}")
    if node.op == "pad":
        p = graph.constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        p = [int(v) for v in (p.tolist() if p is not None else node.attrs.get("paddings", []))]
        if len(p) != 8 or any(p[:4]):
            raise NotFusable("a pad across batch or channels")
        return p[4:8], [0, 0, 0, 0]
    p = graph.constant(node.inputs[1]) if len(node.inputs) > 1 else None
    p = [int(v) for v in (p.tolist() if p is not None else node.attrs.get("paddings", []))]
    data_format = str(node.attrs.get("data_format", "NCDHW"))
    if len(p) != 6 or data_format != "NCDHW" or any(p[4:]):
        raise NotFusable("a pad3d that is not an H/W zero pad of NCHW")
    left, right, top, bottom = p[:4]
    return [top, bottom, left, right], [0, 0, 0, 0]


@dataclass(frozen=True)
class Grid:
    """The fused conv: kernel, dilation, padding (top, bottom, left, right), and each branch's
    offset in it, in taps."""

    kernel: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    offsets: tuple[tuple[int, int], ...]


def fused_grid(geometries: Sequence[Geometry]) -> Grid:
    """The one conv that reads what all `geometries` read, or NotFusable saying why not."""
    strides = {g.stride for g in geometries}
    if len(strides) != 1:
        raise NotFusable(f"branches with different strides {sorted(strides)}")
    kernel: list[int] = []
    dilation: list[int] = []
    padding: list[int] = []
    offsets: list[list[int]] = [[], []]
    for axis in (0, 1):
        # a dilation only matters along an axis where the kernel is longer than 1
        dilations = {g.dilation[axis] for g in geometries if g.kernel[axis] > 1}
        if len(dilations) > 1:
            raise NotFusable("branches with different dilations")
        d = dilations.pop() if dilations else 1
        extents = {g.extent(axis) for g in geometries}
        if len(extents) != 1:
            raise NotFusable("branches whose output sizes differ for some input sizes")
        extent = extents.pop()
        firsts = [g.first(axis) for g in geometries]
        lo = min(firsts)
        hi = max(f + d * (g.kernel[axis] - 1) for f, g in zip(firsts, geometries))
        if any((f - lo) % d for f in firsts):
            raise NotFusable("kernels that do not sit on one dilated grid (misaligned padding)")
        size = (hi - lo) // d + 1
        before = -lo
        after = extent + d * (size - 1) - before
        if before < 0 or after < 0:
            raise NotFusable("the fused kernel would need a crop of the input")
        kernel.append(size)
        dilation.append(d)
        padding.extend([before, after])
        offsets[axis] = [(f - lo) // d for f in firsts]
    return Grid((kernel[0], kernel[1]), (dilation[0], dilation[1]), tuple(padding),  # type: ignore[arg-type]
                tuple(zip(offsets[0], offsets[1])))


def _shape(graph: Graph, tensor: Any) -> tuple[int, ...] | None:
    info = graph.tensors.get(tensor) if isinstance(tensor, str) else None
    return info.shape if info else None
