"""A pad whose border holds one value per channel, as exporters write it: DBB's BNAndPad
(`F.pad(bn(x))`, then the four border strips slice-assigned the BN's value of zero) becomes a
Pad and four ScatterND, with the indices computed from shapes (torch's legacy exporter:
Shape/Range/Expand/Where...) or given as constants between Transposes (dynamo). The reader
turns each such chain into ONE graph node the passes understand:

    pad(x, value) with paddings [0, 0, 0, 0, top, bottom, left, right], value a [1, C, 1, 1]
    constant (a weight of the graph named `<output>.pad_value`)

whose origin lists every ONNX node it stands for (the chain and what computes only its indices,
updates and pads), so a kept pad keeps them all.

Only what is proven becomes a pad. Structure first: the chain's data path is Pad (constant
mode) -> ScatterND (reduction none) / Transpose / Identity, each intermediate read by the next
alone (and by Shape nodes that belong to the chain), and the indices, updates and pads are
computed from constants and shapes only, never from a value of the data path. Then every output
element is either a copy of an input element or a constant. Evaluating the chain (onnx's
reference evaluator) on two inputs whose elements are all distinct and differ everywhere tells
which is which: the interior must be the input at its place, and the rest one value per channel.
A model whose input size is not fixed is probed at two input sizes (batch 1 and 2, two H/W).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

_DATA_PATH = ("ScatterND", "Transpose", "Identity")
# ops whose output's shape follows from their input's shape and constant operands: one that
# reads the data path and feeds only Shape nodes reads no value of it
_SHAPE_KEEPING = ("Slice", "Transpose", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Expand", "Cast", "Pad")
_MAX_TRIES = 3  # chain ends tried per Pad, longest first
_MAX_PROBE = 1 << 23  # elements: the probe's values 1000 + k stay distinct in float32
Shapes = Callable[[str], "tuple[int, ...] | None"]


class Sizes(Protocol):
    """The model's tensor shapes at each size the chains are probed at (`probes`), told what a
    canonical pad's output is (`learn`) so the shapes after it are known for the next chain."""

    def probes(self) -> list[Shapes]: ...

    def learn(self, x: str, y: str, padding: tuple[int, int, int, int]) -> None: ...


@dataclass(frozen=True)
class ScatterPad:
    last: int  # index of the chain's last node: where the pad sits in the graph
    input: str
    output: str
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    value: np.ndarray  # [1, C, 1, 1], the input's dtype
    members: tuple[int, ...]  # every ONNX node it stands for


class _Declined(Exception):
    pass


class _Chains:
    def __init__(self, graph: Any, sizes: Sizes, dtype_of: Callable[[str], str | None]) -> None:
        self.g = graph
        self.sizes = sizes
        self.dtype_of = dtype_of
        self.nodes = list(graph.node)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.readers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.input:
                if t:
                    self.readers.setdefault(t, []).append(i)
        self.outputs = {o.name for o in graph.output}
        self.initializers = {t.name: t for t in graph.initializer}
        self.feeds = {i.name for i in graph.input} - set(self.initializers)

    def attr(self, i: int, name: str, default: Any) -> Any:
        from onnx import helper

        for a in self.nodes[i].attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                return value.decode() if isinstance(value, bytes) else value
        return default

    def data_path(self, pad: int) -> list[int]:
        """The Pad and the data-path nodes after it, each the one value reader of the last."""
        chain, tensor = [pad], self.nodes[pad].output[0]
        while tensor not in self.outputs:
            readers = [r for r in self.readers.get(tensor, []) if not self.shape_probe(r)]
            if len(readers) != 1:
                break
            r = readers[0]
            node = self.nodes[r]
            if node.op_type not in _DATA_PATH or node.input[0] != tensor or list(node.input).count(tensor) != 1:
                break
            if node.op_type == "ScatterND" and self.attr(r, "reduction", "none") != "none":
                break
            chain.append(r)
            tensor = node.output[0]
        return chain

    def shape_probe(self, r: int) -> bool:
        """Node `r` reads only the shape of what it reads: a Shape, or a shape-keeping op whose
        outputs only Shape nodes read."""
        node = self.nodes[r]
        if node.op_type == "Shape":
            return True
        return node.op_type in _SHAPE_KEEPING and all(
            o not in self.outputs and all(self.nodes[k].op_type == "Shape" for k in self.readers.get(o, []))
            for o in node.output)

    def side_inputs(self, i: int) -> list[str]:
        node = self.nodes[i]
        return [t for t in node.input[1:] if t] if node.op_type in ("Pad", "ScatterND") else []

    def ancestors(self, chain: Sequence[int], x: str, data: set[str]) -> tuple[set[int], set[str]]:
        """The nodes computing the chain's side inputs, and the outside tensors they read only the
        shape of. _Declined when one reads a value of the data path or of a graph input."""
        found: set[int] = set()
        shapes_read: set[str] = set()
        self._climb([t for i in chain for t in self.side_inputs(i)], chain, x, data, found, shapes_read)
        return found, shapes_read

    def _climb(self, stack: list[str], chain: Sequence[int], x: str, data: set[str], found: set[int],
               shapes_read: set[str]) -> None:
        while stack:
            t = stack.pop()
            if t in data or t == x or t in self.feeds:
                raise _Declined(f"tensor {t} carries the data path's values")
            j = self.producer.get(t)
            if j is None or j in found or j in chain:
                continue
            node = self.nodes[j]
            if any(a.type in (5, 10) for a in node.attribute):
                raise _Declined("control flow among the indices")
            found.add(j)
            if node.op_type != "Shape":
                stack.extend(u for u in node.input if u)
                continue
            source = node.input[0]
            if source == x or source in data or source in self.initializers:
                continue  # the probe has these
            if source in self.feeds:
                shapes_read.add(source)
                continue
            p = self.producer.get(source)
            if p is not None and p not in found and self.shape_probe(p):
                node = self.nodes[p]
                if node.input[0] == x or node.input[0] in data:  # the shape of a slice of the data path
                    found.add(p)
                    stack.extend(u for u in node.input[1:] if u)
                    continue
            # computed from shapes too (then the probe computes it), or only its shape is known
            more: set[int] = set()
            try:
                self._climb([source], chain, x, data, more, shapes_read)
                found |= more
            except _Declined:
                shapes_read.add(source)

    def exclusive(self, chain: Sequence[int], found: set[int]) -> set[int]:
        """The ancestors that only the chain (and each other) read."""
        keep = set(found)
        while True:
            inside = keep | set(chain)
            drop = {j for j in keep for o in self.nodes[j].output
                    if o in self.outputs or any(r not in inside for r in self.readers.get(o, []))}
            if not drop:
                return keep
            keep -= drop


def _probe_model(c: _Chains, members: list[int], x: str, outside: set[str], outs: list[str], model: Any) -> Any:
    from onnx import helper

    nodes = [c.nodes[i] for i in members]
    produced = {o for n in nodes for o in n.output}
    read = {t for n in nodes for t in n.input if t}
    inits = [c.initializers[t] for t in sorted(read - produced) if t in c.initializers]
    inputs = [helper.make_empty_tensor_value_info(t) for t in [x, *sorted(outside)]]
    graph = helper.make_graph(nodes, "probe", inputs, [helper.make_empty_tensor_value_info(t) for t in outs], inits)
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def _frame(y_a: np.ndarray, y_b: np.ndarray, a: np.ndarray, b: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """The per-channel value of the border, when the interior is the input at its place."""
    top, bottom, left, right = pad
    n, channels, h, w = a.shape
    if y_a.shape != (n, channels, h + top + bottom, w + left + right) or y_b.shape != y_a.shape:
        raise _Declined("the chain's output is not the padded input's shape")
    inner = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
    if not (np.array_equal(y_a[inner], a) and np.array_equal(y_b[inner], b)):
        raise _Declined("the interior is not the input")
    border = np.ones(y_a.shape[2:], bool)
    border[top:top + h, left:left + w] = False
    va, vb = y_a[:, :, border], y_b[:, :, border]
    if not np.array_equal(va, vb):
        raise _Declined("the border depends on the input")
    value = va[0, :, 0]
    if not np.array_equal(va, np.broadcast_to(value[None, :, None], va.shape)):
        raise _Declined("the border is not one value per channel")
    return value


def _probe(c: _Chains, chain: list[int], members: list[int], x: str, outside: set[str], model: Any) -> tuple[tuple[int, int, int, int], np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    pads_name = c.nodes[chain[0]].input[1]
    y = c.nodes[chain[-1]].output[0]
    evaluator = ReferenceEvaluator(_probe_model(c, members, x, outside, [y, pads_name], model))
    found: tuple[tuple[int, int, int, int], np.ndarray] | None = None
    for shape_of in c.sizes.probes():
        size = shape_of(x)
        outside_shapes = {t: shape_of(t) for t in outside}
        if size is None or len(size) != 4 or min(size) < 1:
            raise _Declined("the padded tensor's size is not known")
        if int(np.prod(size)) > _MAX_PROBE:
            raise _Declined("the padded tensor is too large to probe")
        if any(s is None or min(s, default=0) < 0 for s in outside_shapes.values()):
            raise _Declined("the indices read the shape of a tensor of unknown size")
        a = (1000.0 + np.arange(int(np.prod(size)))).reshape(size).astype(np.float32)
        feeds = {t: np.zeros(s, np.float32) for t, s in outside_shapes.items()}  # type: ignore[arg-type]
        y_a, pads = evaluator.run(None, {x: a, **feeds})
        y_b, _ = evaluator.run(None, {x: -a, **feeds})
        p = [int(v) for v in np.asarray(pads).reshape(-1)]
        if len(p) != 8 or any(p[k] for k in (0, 1, 4, 5)) or min(p) < 0:
            raise _Declined(f"pads {p} are not an H/W pad")
        pad = (p[2], p[6], p[3], p[7])
        value = _frame(np.asarray(y_a), np.asarray(y_b), a, -a, pad)
        if found is not None and (found[0] != pad or not np.array_equal(found[1], value)):
            raise _Declined("the pad differs between sizes")
        found = (pad, value)
    if found is None:
        raise _Declined("no size to probe at")
    return found


def _try(c: _Chains, chain: list[int], model: Any) -> ScatterPad:
    x = c.nodes[chain[0]].input[0]
    if c.dtype_of(x) != "float32":
        raise _Declined("the probe runs float32 tensors")
    data = {c.nodes[i].output[0] for i in chain[:-1]}
    found, outside = c.ancestors(chain, x, data)
    owned = c.exclusive(chain, found)
    for t in data:
        if any(r not in owned and r not in chain for r in c.readers.get(t, [])):
            raise _Declined(f"tensor {t} is read outside the chain")
    pad, value = _probe(c, chain, sorted(found | set(chain)), x, outside, model)
    if not any(pad):
        raise _Declined("nothing is padded")
    return ScatterPad(chain[-1], x, c.nodes[chain[-1]].output[0], pad, value.reshape(1, -1, 1, 1),
                      tuple(sorted(owned | set(chain))))


def find_scatter_pads(model: Any, sizes: Sizes, dtype_of: Callable[[str], str | None]) -> list[ScatterPad]:
    """Every Pad -> ScatterND chain of `model`'s main graph that is a pad with one value per
    channel (see the module docstring), in graph order. `sizes` gives the shapes of the model's
    tensors at each size to probe at (the model's own when they are all static, else two
    concrete input sizes) and learns each pad found."""
    c = _Chains(model.graph, sizes, dtype_of)
    found = []
    for i, node in enumerate(c.nodes):
        if node.op_type != "Pad" or c.attr(i, "mode", "constant") != "constant" or len(node.input) < 2 or not node.input[1]:
            continue
        if len(node.input) > 3 and node.input[3]:  # opset 18's axes: the pads name some axes only
            continue
        chain = c.data_path(i)
        ends = [k for k in range(len(chain), 1, -1) if any(c.nodes[j].op_type == "ScatterND" for j in chain[:k])]
        for k in ends[:_MAX_TRIES]:
            try:
                pad = _try(c, chain[:k], model)
            except _Declined:
                continue
            except Exception:  # noqa: BLE001 - the reference evaluator raises anything on a graph it cannot run
                continue
            found.append(pad)
            sizes.learn(pad.input, pad.output, pad.padding)
            break
    return found
