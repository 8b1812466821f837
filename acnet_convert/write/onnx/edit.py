"""The fused ONNX model of an ONNX source: the deploy graph applied to the source model by
difference (`graph.ir`'s contract), the rest of the model left as it was.

- A deploy node with an origin is those source nodes, kept: the same NodeProtos (names,
  attributes, domains), reading other tensors where the deploy graph rewired them.
- A deploy node without an origin is new: a `conv2d` becomes a Conv (with its bias), an `add`
  an Add (a Sum of more terms); new weights become initializers.
- Source nodes no deploy node stands for go, and so do initializers, inputs and value_info
  entries that nothing reads any more; a source node that a kept node still reads stays.
- The model's IR version, opsets, functions, metadata and producer stay; the outputs keep their
  names (an Identity renames one that the passes moved to another tensor).

Kept initializers are the source's TensorProtos; `save_onnx` writes those the source kept in
external data into OUT's own `model.onnx.data`, with new ones that are as large.
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable
from acnet_convert.graph.ir import Graph, Node, unique_name
from acnet_convert.read.onnx.model import OnnxModel, check_structure

NewNode = Callable[[Node, str], Any]  # (deploy node, a free node name) -> NodeProto
_NEW: dict[str, NewNode] = {}


def makes(*ops: str) -> Callable[[NewNode], NewNode]:
    def register(fn: NewNode) -> NewNode:
        for op in ops:
            _NEW[op] = fn
        return fn

    return register


@makes("conv2d")
def _conv(node: Node, name: str) -> Any:
    from onnx import helper

    a = node.attrs
    if str(a.get("padding_algorithm", "EXPLICIT")).upper() != "EXPLICIT" or str(a.get("data_format", "NCHW")) != "NCHW":
        raise ConvertError(f"internal: a new conv with padding {a.get('padding_algorithm')} in {a.get('data_format')}")
    top, bottom, left, right = [int(p) for p in a["paddings"]]
    return helper.make_node("Conv", [t for t in node.inputs if t is not None], list(node.outputs), name=name,
                            strides=[int(s) for s in a.get("strides", [1, 1])], pads=[top, left, bottom, right],
                            dilations=[int(d) for d in a.get("dilations", [1, 1])], group=int(a.get("groups", 1)))


@makes("add", "add_n")
def _add(node: Node, name: str) -> Any:
    """An add of two terms is an Add; of more (a partial sum left beside a fused conv) a Sum."""
    from onnx import helper

    terms = [t for item in node.inputs for t in (item if isinstance(item, tuple) else (item,)) if t is not None]
    return helper.make_node("Add" if len(terms) == 2 else "Sum", terms, list(node.outputs), name=name)


def _reads(node: Any) -> set[str]:
    """Every tensor a NodeProto reads, its sub-graphs' outer-scope reads included."""
    names = {t for t in node.input if t}
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == 5 else list(attr.graphs) if attr.type == 10 else []):
            inner = {t.name for t in g.initializer} | {i.name for i in g.input}
            for sub in g.node:
                names |= _reads(sub) - inner
                inner |= set(sub.output)
            names |= {o.name for o in g.output} - inner
    return names


def _flat(inputs: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in inputs:
        out.extend(item if isinstance(item, tuple) else [item])
    return out


def _renamed(proto: Any, rename: Mapping[str, str]) -> Any:
    if not any(t in rename for t in proto.input):
        return proto
    from onnx import NodeProto

    copy = NodeProto()
    copy.CopyFrom(proto)
    for k, t in enumerate(copy.input):
        if t in rename:
            copy.input[k] = rename[t]
    return copy


class _Edit:
    def __init__(self, model: OnnxModel, source: Graph, deploy: Graph) -> None:
        self.model, self.source, self.deploy = model, source, deploy
        self.g = model.proto.graph
        self.by_origin = {n.origin: n for n in self._all(source.nodes)}
        self.node_names = {n.name for n, _ in model.nodes if n.name}
        self.emitted: list[Any] = []
        self.kept: set[int] = set()

    @staticmethod
    def _all(nodes: Iterable[Node]) -> Iterable[Node]:
        for node in nodes:
            yield node
            for block in node.attrs.get("branches", ()) if node.op == "if" else ():
                yield from _Edit._all(block.nodes)

    def keep(self, node: Node) -> None:
        before = self.by_origin.get(node.origin)
        if before is None:
            raise ConvertError(f"internal: the deploy graph keeps {node.where()}, which the source graph does not have")
        rename = {a: b for a, b in zip(_flat(before.inputs), _flat(node.inputs)) if a != b and a and b}
        for index in sorted(node.origin):
            if index in self.kept:
                continue
            self.kept.add(index)
            self.emitted.append(_renamed(self.model.nodes[index][0], rename))

    def create(self, node: Node) -> None:
        make = _NEW.get(node.op)
        if make is None:
            raise ConvertError(f"internal: the ONNX editor cannot create a '{printable(node.op)}' node")
        self.emitted.append(make(node, unique_name(f"{node.output}/fused", self.node_names)))

    def resurrect(self, produced: set[str], available: set[str]) -> None:
        """Bring back source nodes that kept nodes still read (an index computation two pads
        share): whatever an emitted node reads must be made by something."""
        producer = {o: i for i, (n, graph) in enumerate(self.model.nodes) if graph is self.g for o in n.output if o}
        while True:
            missing = {t for n in self.emitted for t in _reads(n)} - produced - available
            back = sorted({producer[t] for t in missing if t in producer and producer[t] not in self.kept})
            if not back:
                if missing:
                    raise ConvertError(f"internal: the fused ONNX model reads {printable(sorted(missing)[0])}, which "
                                       "nothing makes")
                return
            for index in back:
                self.kept.add(index)
                node = self.model.nodes[index][0]
                self.emitted.append(node)
                produced.update(o for o in node.output if o)


def _toposorted(nodes: list[Any], available: set[str]) -> list[Any]:
    """`nodes` in an order where each reads only what is available or made before it; the
    given order wherever it already is one."""
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waiting = [{made[t] for t in _reads(n) if t in made and t not in available} for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for d in deps:
            readers.setdefault(d, []).append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for r in readers.get(i, []):
            waiting[r].discard(i)
            if not waiting[r]:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        raise ConvertError("internal: the fused ONNX graph has a cycle")
    return order


def apply_deploy(model: OnnxModel, source: Graph, deploy: Graph) -> Any:
    """`model.proto` (which `source` was read from) edited in place into the fused model, with
    `deploy` applied (see the module docstring); returned. Its kept initializers are not copied."""
    import onnx
    from onnx import helper

    edit = _Edit(model, source, deploy)
    for node in deploy.nodes:
        edit.keep(node) if node.origin else edit.create(node)
    g = model.proto.graph
    feeds = {v.name for v in g.input}
    initializers = {t.name for t in g.initializer}
    known = {**source.weights, **source.constants}
    new_weights = {name: array for name, array in {**deploy.weights, **deploy.constants}.items()
                   if name not in known or array is not known[name]}
    produced = {o for n in edit.emitted for o in n.output if o}
    for before, after in zip(source.outputs, deploy.outputs):
        if before != after:  # the passes moved this output: keep its name for the model's users
            name = unique_name(f"{before}/output", edit.node_names)
            edit.emitted.append(helper.make_node("Identity", [after], [before], name=name))
            produced.add(before)
    read = {t for n in edit.emitted for t in _reads(n)} | {o.name for o in g.output}
    added = {name: new_weights[name] for name in read if name in new_weights and name not in produced}
    edit.resurrect(produced, feeds | (initializers - set(added)) | set(added))
    available = feeds | initializers | set(added)
    nodes = _toposorted(edit.emitted, available)
    read = {t for n in nodes for t in _reads(n)} | {o.name for o in g.output}
    produced = {o for n in nodes for o in n.output if o}

    staged = onnx.GraphProto()
    staged.node.extend(nodes)  # copied before the source's nodes they may be are cleared
    del g.node[:]
    g.node.extend(staged.node)
    for field, keep in (("initializer", lambda t: t.name in read and t.name not in added and t.name not in produced),
                        ("input", lambda v: v.name not in initializers or (v.name in read and v.name not in added)),
                        ("value_info", lambda v: v.name in produced)):
        items = getattr(g, field)
        for k in range(len(items) - 1, -1, -1):
            if not keep(items[k]):
                del items[k]
    for name in sorted(added):  # made in place: appending a TensorProto would copy its bytes again
        array = np.ascontiguousarray(np.asarray(added[name]))
        tensor = g.initializer.add()
        tensor.name, tensor.data_type = name, helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.tobytes()
    model._nodes = None
    return model.proto


def check_onnx(proto: Any, shown: Path | str) -> None:
    """onnx.checker's full check (with shape inference) of the fused model (`check_structure`:
    the weights are not copied for it)."""
    try:
        check_structure(proto, full_check=True)
    except Exception as err:  # noqa: BLE001 - ValidationError, InferenceError
        raise ConvertError(f"internal: the fused ONNX model {printable(shown)} fails onnx.checker: {one_line(err, 300)}") from None


def save_onnx(proto: Any, path: Path, external: Iterable[str], data_name: str) -> list[Path]:
    """Write `proto` to `path`; the tensors named in `external` (the source kept them in external
    data), and new ones at least as large as the smallest of them, go to `data_name` beside it.
    Returns the files written."""
    import onnx
    from onnx.external_data_helper import set_external_data

    external = set(external)
    if external:
        sizes = [len(t.raw_data) for t in proto.graph.initializer if t.name in external]
        smallest = min(sizes) if sizes else 1024
        for tensor in proto.graph.initializer:
            if tensor.HasField("raw_data") and (tensor.name in external or len(tensor.raw_data) >= smallest):
                set_external_data(tensor, data_name)
    onnx.save_model(proto, str(path))
    data = path.parent / data_name
    return [path] + ([data] if data.is_file() else [])
