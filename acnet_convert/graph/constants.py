"""Constant folding, control flow on constants, identities: the passes before regions are found.

- Every op whose operands are all weights or constants (or shapes that are static) is
  evaluated once, in float64 (`evaluate`). A float result that an op which stays still reads
  becomes a new weight (DBB's `weight + id_tensor`, BNAndPad's pad values, a cast parameter);
  the ops that made it go. Integer results (shapes, axes, bounds) stay as the ops that make
  them (they cost nothing and keep their operand form), their values known in `constants`.
- An `if` whose condition is such a constant is resolved: the taken block's nodes run where
  the `if` was, the other block is dropped (PP-YOLOE+'s `if self.alpha:` on a parameter). One
  whose condition depends on the input is refused: control flow on data is not supported.
- Identities go (scale by 1 adding 0, `+ 0`, `- 0`, `* 1`, `/ 1`, assign, a cast to the same
  type, dropout in inference): what read their output reads their input.

The result is a graph by the contract of `ir` (kept nodes keep their origin; only their inputs
may change; new weights are new parameters).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.evaluate import Unevaluable, can_evaluate, evaluate
from acnet_convert.graph.ir import Block, Graph, Input, Node, TensorInfo, unique_name

# ops never folded: they are how a program reads and writes, or they are constants already
_NOT_FOLDED = ("data", "feed", "fetch", "full", "full_int_array", "assign_value")
_IDENTITY_OPS = ("assign", "cast", "dropout", "scale", "add", "subtract", "multiply", "divide")
_SMALL = 1024  # integer values (shapes, axes, bounds) at most this big are kept known


def _renamed(item: Input, names: dict[str, str]) -> Input:
    if isinstance(item, tuple):
        return tuple(names.get(t, t) for t in item)
    return names.get(item, item) if isinstance(item, str) else item


def _rewire(node: Node, names: dict[str, str]) -> Node:
    if not names:
        return node
    inputs = tuple(_renamed(i, names) for i in node.inputs)
    return node if inputs == node.inputs else replace(node, inputs=inputs)


class _Folder:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.values: dict[str, Any] = {**graph.constants, **graph.weights}
        self.folded: dict[str, Node] = {}  # output -> the folded node making it
        self.names: dict[str, str] = {}  # tensor -> the tensor it is (resolved control flow)
        self.nodes: list[Node] = []

    def run(self) -> list[Node]:
        self._walk(self.g.nodes)
        return self.nodes

    def _walk(self, nodes: tuple[Node, ...] | list[Node]) -> None:
        for node in nodes:
            node = _rewire(node, self.names)
            if node.op == "if":
                self._resolve(node)
                continue
            self.nodes.append(node)
            if node.op in _NOT_FOLDED or not can_evaluate(node.op):
                if node.op in ("shape", "shape64"):
                    self._static_shape(node)
                continue
            reads = list(node.tensor_inputs())
            if reads and all(t in self.values for t in reads):
                try:
                    evaluate(self.g, [node], self.values)
                except Unevaluable:
                    continue
                for out in node.outputs:
                    self.folded[out] = node

    def _static_shape(self, node: Node) -> None:
        info = self.g.tensors.get(node.inputs[0]) if isinstance(node.inputs[0], str) else None
        if info is not None and all(d >= 0 for d in info.shape):
            self.values[node.outputs[0]] = np.asarray(info.shape, np.int64 if node.op == "shape64" else np.int32)
            self.folded[node.outputs[0]] = node

    def _resolve(self, node: Node) -> None:
        cond = self.values.get(node.inputs[0]) if isinstance(node.inputs[0], str) else None
        if cond is None:
            raise ConvertError(f"{printable(node.where())}: control flow whose condition depends on the input is not "
                               "supported (only an `if` on a constant, such as a parameter, is resolved)")
        taken: Block = node.attrs["branches"][0 if bool(np.asarray(cond).reshape(-1)[0]) else 1]
        self._walk(taken.nodes)
        for out, y in zip(node.outputs, taken.yields):
            self.names[out] = self.names.get(y, y)


def fold_constants(graph: Graph) -> Graph:
    """`graph` with constants folded, control flow on constants resolved and identities gone."""
    folder = _Folder(graph)
    nodes = folder.run()
    outputs = [folder.names.get(t, t) for t in graph.outputs]
    weights = dict(graph.weights)
    tensors = dict(graph.tensors)
    taken = set(weights) | set(tensors) | {o for n in nodes for o in n.outputs}
    # float values that an op which stays reads become weights; integer ones keep their ops
    kept_ids = {id(n) for n in nodes if n.outputs[0] not in folder.folded}
    materialized: dict[str, str] = {}
    for node in nodes:
        if id(node) not in kept_ids:
            continue
        for t in node.tensor_inputs():
            if t in folder.folded and t not in materialized and _is_float(folder.values[t]):
                name = unique_name(_weight_name(graph, folder.folded[t], t), taken)
                weights[name] = np.asarray(folder.values[t], np.float64)
                info = graph.tensors.get(t)
                tensors[name] = TensorInfo(tuple(np.shape(folder.values[t])), info.dtype if info else "float32")
                materialized[t] = name
    for t in outputs:  # an output computed from constants alone stays computed
        materialized.pop(t, None)
    nodes = [_rewire(n, materialized) for n in nodes]
    # the small integer values keep their ops and are known too (a crop's bounds made of constants)
    constants = dict(graph.constants)
    for t, node in folder.folded.items():
        value = np.asarray(folder.values[t]) if t in folder.values else None
        if value is not None and not _is_float(value) and value.size <= _SMALL and t not in materialized:
            constants[t] = value
    folded_graph = replace(graph, nodes=nodes, outputs=outputs, weights=weights, tensors=tensors, constants=constants)
    return drop_identities(folded_graph.pruned())


def _is_float(value: Any) -> bool:
    return np.issubdtype(np.asarray(value).dtype, np.floating)


def _weight_name(graph: Graph, node: Node, tensor: str) -> str:
    """A folded tensor is named after the first weight it was computed from."""
    source = next((t for t in node.tensor_inputs() if t in graph.weights), None)
    return f"{source}.folded" if source else tensor


# ----------------------------------------------------------------------------------------------
# identities


def _constant(graph: Graph, name: Input) -> np.ndarray | None:
    if not isinstance(name, str):
        return None
    value = graph.weights.get(name)
    return graph.constant(name) if value is None else np.asarray(value)


def _identity_of(graph: Graph, node: Node) -> str | None:
    """The operand `node` passes through unchanged, if it does."""
    op, inputs = node.op, node.inputs
    x = inputs[0] if inputs and isinstance(inputs[0], str) else None
    if op == "assign":
        return x
    if op == "cast":
        info = graph.tensors.get(x) if x else None
        return x if info is not None and info.dtype == str(node.attrs.get("dtype", "")).lower() else None
    if op == "dropout":
        return x if node.attrs.get("is_test") and node.attrs.get("mode", "upscale_in_train") == "upscale_in_train" else None
    if op == "scale":
        s = _constant(graph, inputs[1]) if len(inputs) > 1 and inputs[1] is not None else np.asarray(node.attrs.get("scale", 1.0))
        ok = s is not None and s.size == 1 and float(s.reshape(-1)[0]) == 1.0 and float(node.attrs.get("bias", 0.0)) == 0.0
        return x if ok else None
    if op in ("add", "subtract", "multiply", "divide") and len(inputs) == 2:
        neutral = 1.0 if op in ("multiply", "divide") else 0.0
        candidates = (0, 1) if op in ("add", "multiply") else (0,)
        for keep in candidates:
            other = _constant(graph, inputs[1 - keep])
            if other is not None and other.size == 1 and float(other.reshape(-1)[0]) == neutral:
                kept = inputs[keep]
                # a scalar constant never changes the shape of what it is added to
                return kept if isinstance(kept, str) and _constant(graph, kept) is None else None
    return None


def drop_identities(graph: Graph) -> Graph:
    names: dict[str, str] = {}
    nodes = []
    for node in graph.nodes:
        node = _rewire(node, names)
        source = _identity_of(graph, node) if node.op in _IDENTITY_OPS else None
        if source is not None and node.outputs[0] not in graph.outputs:
            names[node.outputs[0]] = source
            continue
        nodes.append(node)
    if not names:
        return graph
    return replace(graph, nodes=nodes).pruned()
