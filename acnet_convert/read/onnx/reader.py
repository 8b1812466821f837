"""Read a loaded ONNX model (`model.OnnxModel`) into the package's `Graph`: one node per ONNX
node, in the graph's vocabulary where the passes read it (`ops`), `onnx::<OpType>` with ONNX's
own attributes elsewhere; each node's origin is its ONNX node number (`model.numbered_nodes`).

Tensors keep their ONNX names. Float initializers are weights; integer and boolean ones, and the
values of Constant nodes, are constants (`Graph.constants`). Shapes come from onnx's shape
inference, run on a copy of the model without its large weights. A Pad -> ScatterND chain that
pads with one value per channel becomes one `pad` node (`scatter_pad`). An If on a condition
computed from constants and shapes becomes an `if` node with its two branches as blocks;
constant folding picks one. Refused with one line naming the file and the node: operators of
another domain than ONNX's own (and the model's functions), a Loop or Scan, an If whose
condition depends on the input's values, a BatchNormalization in training mode.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.attributes import check_attributes
from acnet_convert.graph.ir import Block, Graph, Node, TensorInfo
from acnet_convert.read.onnx.model import OnnxModel
from acnet_convert.read.onnx.ops import DTYPES, BadNode, translate
from acnet_convert.read.onnx.scatter_pad import find_scatter_pads
from acnet_convert.read.onnx.shapes import ProbeSizes, infer_shapes, tensor_info
from acnet_convert.read.onnx.small_constants import constant_ancestry, evaluate_small

_STANDARD_DOMAINS = ("", "ai.onnx")
_LOOPS = ("Loop", "Scan", "SequenceMap")
_SHAPE_ONLY = ("Shape", "Size")  # they read a tensor's shape, not its values
_LISTED_VALUES = 4096  # a Constant's values also go into its attributes up to this many


def _attributes(node: Any) -> dict[str, Any]:
    """A node's attributes as plain values (tensors as arrays; sub-graphs left out)."""
    from onnx import helper, numpy_helper

    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type in (5, 10, 9, 13):  # GRAPH, GRAPHS, SPARSE_TENSOR(S): not plain values
            continue
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "replace") for v in value]
        elif attr.type == 4:  # TENSOR
            value = numpy_helper.to_array(value)
        elif attr.type == 12:  # TENSORS
            value = [numpy_helper.to_array(v) for v in value]
        out[attr.name] = value
    return out


def _constant_value(attrs: dict[str, Any]) -> np.ndarray | None:
    if "value" in attrs and isinstance(attrs["value"], np.ndarray):
        return attrs["value"]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype)
    return None


def _array(tensor: Any, model: OnnxModel, span: tuple[int, int] | None) -> np.ndarray:
    """The initializer's value: a read-only view of the file's bytes where it is stored there
    (its raw bytes are not copied out of the protobuf), else onnx's own conversion."""
    from onnx import numpy_helper

    dtype = DTYPES.get(tensor.data_type)
    if span is not None and dtype is not None and dtype != "bfloat16" and tensor.data_location != 1:
        offset, length = span
        count = int(np.prod(tensor.dims, dtype=np.int64))
        if length == count * np.dtype(dtype).itemsize:
            return np.frombuffer(model.data, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                 offset=offset).reshape(tuple(tensor.dims))
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as err:
        raise ConvertError(f"{printable(model.path)}: tensor {printable(tensor.name, 80)} does not hold its "
                           f"{list(tensor.dims)} values ({printable(err, 120)})") from None


class _Reader:
    def __init__(self, model: OnnxModel) -> None:

        self.model = model
        self.proto = model.proto
        self.index_of = {id(node): i for i, (node, _) in enumerate(model.nodes)}
        self.functions = {(f.domain, f.name) for f in self.proto.functions}
        self.tensors = infer_shapes(self.proto)
        self.weights: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.varying: set[str] = set()  # tensors computed from the input's values
        self.producer = {o: n for n in self.proto.graph.node for o in n.output if o}
        self.computed: dict[str, np.ndarray | None] = {}  # small values computed from constants
        views = model.raw_views()
        for tensor in self.proto.graph.initializer:
            self._initializer(tensor.name, _array(tensor, model, views.get(tensor.name)))

    def _initializer(self, name: str, array: np.ndarray) -> None:
        if array.dtype.kind == "f":
            self.weights[name] = array
        else:
            self.constants[name] = array
        self.tensors[name] = TensorInfo(tuple(int(d) for d in array.shape), array.dtype.name)

    # -- the handlers' Context ----------------------------------------------------------------

    def constant(self, name: Optional[str]) -> np.ndarray | None:
        """A constant's value: an initializer, a Constant node's, or a small value computed from
        those (a handler reads it as an attribute; the node computing it stays in the graph)."""
        if not name:
            return None
        if name in self.constants:
            return self.constants[name]
        if name in self.weights:
            return self.weights[name]
        if name not in self.computed:
            nodes = constant_ancestry(name, self.producer, lambda t: t in self.constants or t in self.weights)
            self.computed[name] = None if nodes is None else evaluate_small(
                name, nodes, lambda t: self.constants.get(t, self.weights.get(t)), self.proto.opset_import,
                self.proto.ir_version)
        return self.computed[name]

    def rank(self, name: Optional[str]) -> int | None:
        info = self.tensors.get(name) if name else None
        return None if info is None else len(info.shape)

    def shape(self, name: Optional[str]) -> tuple[int, ...] | None:
        info = self.tensors.get(name) if name else None
        return None if info is None else info.shape

    # -- nodes ----------------------------------------------------------------------------------

    def bad(self, index: int, why: str) -> ConvertError:
        return ConvertError(f"{self.model.where(index)}: {why}")

    def node(self, onnx_node: Any) -> Node:
        index = self.index_of[id(onnx_node)]
        op_type, domain = onnx_node.op_type, onnx_node.domain
        inputs = [t if t else None for t in onnx_node.input]
        outputs = tuple(onnx_node.output)
        if domain not in _STANDARD_DOMAINS:
            if (domain, op_type) not in self.functions:
                raise self.bad(index, f"operator domain '{printable(domain, 60)}' is not supported: only ONNX's own "
                                      "operators and the model's functions are read")
            return Node(f"{domain}::{op_type}", tuple(inputs), outputs, _attributes(onnx_node), (index,))
        if op_type in _LOOPS:
            raise self.bad(index, f"{op_type} is not supported: a model with loops cannot be folded")
        if op_type == "If":
            return self.if_node(onnx_node, index, inputs, outputs)
        self.track_varying(op_type, inputs, outputs)
        attrs = _attributes(onnx_node)
        if op_type == "Constant":
            return self.constant_node(index, attrs, outputs)
        try:
            done = translate(op_type, inputs, attrs, outputs, self)
        except BadNode as why:
            raise self.bad(index, str(why)) from None
        if done is None:
            return Node(f"onnx::{op_type}", tuple(inputs), outputs, attrs, (index,))
        op, node_inputs, node_attrs = done
        return Node(op, node_inputs, outputs, node_attrs, (index,))

    def track_varying(self, op_type: str, inputs: Iterable[Optional[str]], outputs: Iterable[str]) -> None:
        if op_type not in _SHAPE_ONLY and any(t in self.varying for t in inputs if t):
            self.varying.update(o for o in outputs if o)

    def constant_node(self, index: int, attrs: dict[str, Any], outputs: tuple[str, ...]) -> Node:
        value = _constant_value(attrs)
        if value is None:
            return Node("onnx::Constant", (), outputs, attrs, (index,))
        self.constants[outputs[0]] = value
        self.tensors[outputs[0]] = TensorInfo(tuple(int(d) for d in value.shape), value.dtype.name)
        node_attrs: dict[str, Any] = {"shape": [int(d) for d in value.shape], "dtype": value.dtype.name}
        if value.size <= _LISTED_VALUES:
            node_attrs["values"] = value.reshape(-1).tolist()
        return Node("assign_value", (), outputs, node_attrs, (index,))

    def if_node(self, onnx_node: Any, index: int, inputs: list[Optional[str]], outputs: tuple[str, ...]) -> Node:
        condition = inputs[0]
        if condition is None or condition in self.varying:
            raise self.bad(index, "an If on a condition computed from the input's values cannot be folded "
                                  "(only an If on a constant condition is resolved)")
        branches = {a.name: a.g for a in onnx_node.attribute if a.type == 5}
        if set(branches) != {"then_branch", "else_branch"}:
            raise self.bad(index, "an If without its two branches")
        from onnx import numpy_helper

        blocks = []
        for key in ("then_branch", "else_branch"):
            sub = branches[key]
            for tensor in sub.initializer:
                self._initializer(tensor.name, numpy_helper.to_array(tensor))
            nodes = tuple(self.node(n) for n in sub.node)
            blocks.append(Block(nodes, tuple(o.name for o in sub.output)))
        self.varying.update(o for o in outputs if o and any(t in self.varying for b in blocks for n in b.nodes for t in n.outputs))
        return Node("if", (condition,), outputs, {"branches": tuple(blocks)}, (index,))


def read_graph(model: OnnxModel) -> Graph:
    """The graph of `model` (see the module docstring)."""
    reader = _Reader(model)
    g = model.proto.graph
    feeds = [v.name for v in g.input if v.name not in reader.weights and v.name not in reader.constants]
    if not feeds:  # an initializer named as an input is only its default (IR >= 4): the input is still fed
        shadowed = ", ".join(printable(v.name, 60) for v in g.input[:3]) or "none"
        raise ConvertError(f"{printable(model.path)}: no graph input is left to feed (inputs: {shadowed}); an "
                           "initializer of an input's name is only its default: export the model without it")
    reader.varying.update(feeds)
    for value in [*g.input, *g.output]:
        info = tensor_info(value.type)
        if info is not None:
            reader.tensors[value.name] = info
    if not g.output:
        raise ConvertError(f"{printable(model.path)} has no outputs")

    def dtype_of(name: str) -> str | None:
        info = reader.tensors.get(name)
        return None if info is None else info.dtype

    sizes = ProbeSizes(model.proto, reader.tensors, feeds)
    pads = {p.last: p for p in find_scatter_pads(model.proto, sizes, dtype_of)}
    if pads:
        reader.tensors.update(sizes.own_shapes())
    absorbed = {i for p in pads.values() for i in p.members}
    nodes: list[Node] = []
    for i, onnx_node in enumerate(g.node):
        if i in pads:
            p = pads[i]
            value = f"{p.output}.pad_value"
            reader.weights[value] = p.value.astype(np.float32)
            reader.tensors[value] = TensorInfo(tuple(p.value.shape), "float32")
            top, bottom, left, right = p.padding
            attrs = {"paddings": [0, 0, 0, 0, top, bottom, left, right], "mode": "constant", "pad_value": 0.0,
                     "data_format": "NCHW"}
            nodes.append(Node("pad", (p.input, value), (p.output,), attrs, p.members))
            reader.track_varying("Pad", [p.input], [p.output])
        elif i not in absorbed:
            nodes.append(reader.node(onnx_node))
    outputs = [o.name for o in g.output]
    graph = Graph(nodes, feeds, outputs, reader.tensors, reader.weights, reader.constants, list(outputs))
    check_attributes(graph, printable(model.path))  # the geometry of every conv and pool, before any arithmetic
    return graph
