"""Tensor shapes of an ONNX model, from onnx's shape inference run on a copy of the model
without its large weights (their dims only): the model's own shapes (-1 where it leaves a
dimension free), and, for the pad canonicaliser, the shapes at concrete input sizes.

Shape inference cannot see through a ScatterND whose indices are computed, so each pad the
canonicaliser proves is given back as a hint (its output's shape), and the shapes after it are
inferred again before the next chain is probed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from acnet_convert.graph.ir import TensorInfo
from acnet_convert.read.onnx.ops import DTYPES

_STRIPPED_BYTES = 1024  # weights above this are left out of the copy shape inference reads
_FLOATS = (1, 10, 11, 16)  # float32, float16, float64, bfloat16
# input sizes (batch, H, W) a model whose input size is free is probed at: two, to tell a
# computation that follows the size from one made for a single size
PROBE_INPUTS = ((1, 64, 48), (2, 48, 80))
Shapes = Callable[[str], "tuple[int, ...] | None"]


def tensor_info(type_proto: Any) -> TensorInfo | None:
    if not type_proto.HasField("tensor_type"):
        return None
    t = type_proto.tensor_type
    dtype = DTYPES.get(t.elem_type)
    if dtype is None or not t.HasField("shape"):
        return None
    return TensorInfo(tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim), dtype)


def infer_shapes(proto: Any, fixed: dict[str, tuple[int, ...]] | None = None,
                 hints: dict[str, tuple[int, ...]] | None = None) -> dict[str, TensorInfo]:
    """Shapes of every tensor onnx's shape inference can tell; `fixed` sets the inputs' dims,
    `hints` (-1: unknown) the shapes of float tensors inference cannot see."""
    import onnx

    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    g = proto.graph
    for part in ("node", "input", "output", "value_info"):
        getattr(light.graph, part).extend(getattr(g, part))
    for tensor in g.initializer:  # sized from dims: ByteSize() walks the data
        if tensor.data_type in _FLOATS and 2 * math.prod(tensor.dims) > _STRIPPED_BYTES:
            stub = light.graph.initializer.add()
            stub.name, stub.data_type = tensor.name, tensor.data_type
            stub.dims.extend(tensor.dims)
        else:
            light.graph.initializer.append(tensor)
    for value in light.graph.input:
        for dim, size in zip(value.type.tensor_type.shape.dim, (fixed or {}).get(value.name, ())):
            dim.Clear()
            dim.dim_value = size
    for name, shape in (hints or {}).items():
        value = light.graph.value_info.add()
        value.name = name
        value.type.tensor_type.elem_type = 1
        for size in shape:
            dim = value.type.tensor_type.shape.dim.add()
            if size >= 0:
                dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort: unknown shapes stay unknown
        inferred = light
    infos = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        info = tensor_info(value.type)
        if info is not None:
            infos[value.name] = info
    return infos


@dataclass
class _Size:
    fixed: dict[str, tuple[int, ...]] | None  # the inputs' dims; None: the model's own
    infos: dict[str, TensorInfo] | None = None
    hints: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def current(self, proto: Any) -> dict[str, TensorInfo]:
        if self.infos is None:
            self.infos = infer_shapes(proto, self.fixed, self.hints)
        return self.infos


class ProbeSizes:
    """The sizes chains are probed at: the model's own when its inputs are all fixed, else the
    PROBE_INPUTS sizes (none when an input has another free axis than N, H, W)."""

    def __init__(self, proto: Any, own: dict[str, TensorInfo], feeds: list[str]) -> None:
        self.proto = proto
        self.own = _Size(None, dict(own))
        shapes = [own[f].shape if f in own else None for f in feeds]
        if all(s is not None and min(s, default=1) > 0 for s in shapes):
            self.sizes = [self.own]
        elif all(s is not None and len(s) == 4 and s[1] > 0 for s in shapes):
            self.sizes = [_Size({f: tuple(d if d > 0 else (n, 0, h, w)[k] for k, d in enumerate(s))  # type: ignore[arg-type]
                                 for f, s in zip(feeds, shapes)}) for n, h, w in PROBE_INPUTS]
        else:
            self.sizes = []

    def probes(self) -> list[Shapes]:
        return [(lambda infos: lambda name: infos[name].shape if name in infos else None)(s.current(self.proto))
                for s in self.sizes]

    def learn(self, x: str, y: str, padding: tuple[int, int, int, int]) -> None:
        top, bottom, left, right = padding
        for size in {id(s): s for s in [self.own, *self.sizes]}.values():
            info = size.current(self.proto).get(x)
            if info is not None and len(info.shape) == 4:
                n, c, h, w = info.shape
                size.hints[y] = (n, c, h + top + bottom if h > 0 else -1, w + left + right if w > 0 else -1)
                size.infos = None

    def own_shapes(self) -> dict[str, TensorInfo]:
        """The model's own shapes, with what the pads taught."""
        return self.own.current(self.proto)
