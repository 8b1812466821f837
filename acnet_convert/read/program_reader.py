"""Read a loaded Paddle program (`program.Program`) into the package's `Graph`: one node per
computing op, Paddle's op names and operand order, parameters as weights, small constants kept
as values, and Paddle's conv-bias idiom merged into one conv.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.attributes import check_attributes
from acnet_convert.graph.ir import Graph, Input, Node, TensorInfo, unique_name
from acnet_convert.read.program import Program

# ops that make a constant whose value the graph keeps (`Graph.constants`)
_CONSTANT_OPS = ("full", "full_int_array", "assign_value")
# attributes that describe Paddle's bookkeeping, not the computation
_BOOKKEEPING = frozenset(
    {"stop_gradient", "op_callstack", "struct_name", "op_role", "op_namescope", "persistable", "place",
     "is_persistable", "op_dist_attr", "chunk_id", "with_quant_attr", "use_mkldnn", "use_onednn",
     "use_cudnn", "use_quantizer", "mkldnn_data_type", "onednn_data_type", "is_distributed", "need_clip",
     "trainable", "is_parameter"}
)


# ----------------------------------------------------------------------------------------------
# PIR ops -> graph nodes


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("paddle.", "")


def _attrs(op: Any) -> dict[str, Any]:
    out = {}
    for key, value in op.attrs().items():
        if key in _BOOKKEEPING:
            continue
        if hasattr(value, "name") and not isinstance(value, (str, int, float, bool, list)):
            value = _dtype_name(value) if "DataType" in type(value).__name__ or "dtype" in type(value).__name__ else str(value)
        out[key] = value
    return out


def _short(op_name: str) -> str:
    name = op_name.split(".", 1)[-1]
    name = name[:-1] if name.endswith("_") and not name.endswith("__") else name
    return "conv2d" if name == "depthwise_conv2d" else name


class _Names:
    """Tensor names for PIR values, keyed by (defining op id, result index): Paddle hands out a
    new Value wrapper on every access, so the wrappers themselves cannot be keys."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[int, int], Input] = {}
        self.taken: set[str] = set()
        self.where: dict[str, tuple[int, int]] = {}

    def unique(self, base: str) -> str:
        return unique_name(base, self.taken)

    def set(self, op: Any, index: int, name: Input, position: int) -> None:
        self.by_key[(op.id(), index)] = name
        if isinstance(name, str):
            self.where.setdefault(name, (position, index))

    def of(self, value: Any) -> Input:
        if not value.initialized():
            return None
        producer = value.get_defining_op()
        if producer is None:
            raise ConvertError("the program reads a block argument: control flow is not supported")
        return self.by_key[(producer.id(), value.index())]


def _tensor_info(value: Any) -> TensorInfo | None:
    try:
        return TensorInfo(tuple(int(d) for d in value.shape), _dtype_name(value.dtype))
    except Exception:  # noqa: BLE001 - vector values have no shape
        return None


def read_graph(source: Program) -> Graph:
    """The graph of `source`: one node per computing op (parameters, feeds, fetches and
    vector packing become names, not nodes), conv biases merged into their conv."""
    names = _Names()
    nodes: list[Node] = []
    inputs: list[str] = []
    outputs: list[str] = []
    output_names: list[str] = []
    tensors: dict[str, TensorInfo] = {}
    weights: dict[str, np.ndarray] = {}
    constants: dict[str, np.ndarray] = {}
    node_of_vector: dict[str, int] = {}
    combines: dict[tuple[int, int], int] = {}  # vector value -> position of the combine making it
    for position, op in enumerate(source.ops):
        kind = op.name()
        if kind == "builtin.parameter":
            name = op.attrs()["parameter_name"]
            names.taken.add(name)
            names.set(op, 0, name, position)
            if source.arrays is not None and name in source.arrays:
                weights[name] = source.arrays[name]
            else:
                variable = source.scope.find_var(name)
                if variable is None:
                    raise ConvertError(f"{printable(source.params)} lacks parameter {printable(name)} that the program reads")
                # moved, not copied: the scope's tensor is emptied and `fill_scope` puts back what
                # is still needed when the program is run or saved (one copy of the weights)
                tensor = variable.get_tensor()
                weights[name] = np.array(tensor)
                tensor._clear()
                if source.arrays is None:
                    source.arrays = {}
                source.arrays[name] = weights[name]
            info = _tensor_info(op.result(0))
            if info is not None:
                tensors[name] = info
            continue
        if kind in ("pd_op.data", "pd_op.feed"):
            name = names.unique(op.attrs()["name"])
            names.set(op, 0, name, position)
            inputs.append(name)
            info = _tensor_info(op.result(0))
            if info is not None:
                tensors[name] = info
            continue
        if kind == "pd_op.fetch":
            outputs.append(names.of(op.operand_source(0)))
            output_names.append(op.attrs().get("name", f"output_{len(outputs) - 1}"))
            continue
        if kind == "builtin.combine":
            names.set(op, 0, tuple(names.of(v) for v in op.operands_source()), position)
            combines[(op.id(), 0)] = position
            continue
        if kind == "builtin.split":
            vector = op.operand_source(0)
            owner = node_of_vector[names.of(vector)]
            parts = tuple(names.unique(f"{nodes[owner].op}_{nodes[owner].origin[0]}.{i}") for i in range(op.num_results()))
            for i, part in enumerate(parts):
                names.set(op, i, part, position)
                info = _tensor_info(op.result(i))
                if info is not None:
                    tensors[part] = info
            old = nodes[owner]
            nodes[owner] = Node(old.op, old.inputs, parts, old.attrs, old.origin + (position,))
            continue
        if op.num_regions() > 0:
            raise ConvertError(f"{printable(source.path)}: op #{position} {printable(kind)} has sub-blocks; control flow is not supported")
        short = _short(kind)
        node_inputs = tuple(names.of(v) for v in op.operands_source())
        results = []
        for i in range(op.num_results()):
            result = op.result(i)
            base = f"{short}_{position}" if op.num_results() == 1 else f"{short}_{position}.{i}"
            name = names.unique(base)
            names.set(op, i, name, position)
            results.append(name)
            info = _tensor_info(result) if result.initialized() else None
            if info is not None:
                tensors[name] = info
        attrs = _attrs(op)
        if short == "batch_norm" and (attrs.get("is_test") or attrs.get("use_global_stats")):
            # in inference its mean_out / variance_out are its mean / variance: a program that
            # runs one BN layer twice reads the first call's outputs, so read the parameters
            names.by_key[(op.id(), 1)] = node_inputs[1]
            names.by_key[(op.id(), 2)] = node_inputs[2]
        # the combine ops packing this op's vector operands go (and are edited) with it
        packed = tuple(
            combines[(v.get_defining_op().id(), v.index())] for v in op.operands_source()
            if v.initialized() and v.get_defining_op() is not None and v.get_defining_op().name() == "builtin.combine"
        )
        nodes.append(Node(short, node_inputs, tuple(results), attrs, (position,) + packed))
        if op.num_results() == 1 and op.result(0).initialized() and _tensor_info(op.result(0)) is None:
            node_of_vector[results[0]] = len(nodes) - 1
        if short in _CONSTANT_OPS:
            value = _constant_value(short, attrs, tensors.get(results[0]))
            if value is not None:
                constants[results[0]] = value
    if not outputs:
        raise ConvertError(f"{printable(source.path)} has no fetch op: it is not an inference program with outputs")
    source.values = names.where
    graph = Graph(nodes, inputs, outputs, tensors, weights, constants, output_names)
    check_attributes(graph, printable(source.path))
    return merge_conv_bias(graph).pruned()


def _constant_value(op: str, attrs: dict[str, Any], info: TensorInfo | None) -> np.ndarray | None:
    dtype = attrs.get("dtype", info.dtype if info else "float32")
    dtype = {"bool": "bool", "float32": "float32", "float64": "float64", "int32": "int32", "int64": "int64",
             "float16": "float16"}.get(str(dtype).lower(), None)
    if dtype is None:
        return None
    if op == "full_int_array":
        return np.asarray(attrs.get("value", []), dtype=dtype)
    if op == "full":
        shape = [int(d) for d in attrs.get("shape", [1])]
        return np.full(shape, attrs.get("value", 0), dtype=dtype)
    values = attrs.get("values")
    shape = attrs.get("shape")
    if values is None or shape is None:
        return None
    try:
        return np.asarray(values, dtype=dtype).reshape([int(d) for d in shape])
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# graph clean-ups that read Paddle's idioms


def merge_conv_bias(graph: Graph) -> Graph:
    """conv2d -> add(reshape(b, [1, -1, 1, 1])) (how Paddle writes a conv with a bias) becomes
    one conv2d node reading (x, weight, b), when the conv's output feeds only that add."""
    producers = graph.producers()
    users = graph.consumers()
    drop: set[int] = set()
    replaced: dict[int, Node] = {}
    for i, node in enumerate(graph.nodes):
        if node.op != "conv2d" or len(node.inputs) != 2 or node.attrs.get("data_format", "NCHW") != "NCHW":
            continue
        out = node.output
        if out in graph.outputs or len(users.get(out, [])) != 1:
            continue
        j = users[out][0]
        add = graph.nodes[j]
        if add.op != "add" or len(add.inputs) != 2:
            continue
        other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        if other == out or not isinstance(other, str):
            continue
        bias, extra = _bias_parameter(graph, other, producers, users)
        weight = graph.weights.get(node.inputs[1]) if isinstance(node.inputs[1], str) else None
        if bias is None or weight is None or graph.weights[bias].shape != (weight.shape[0],):
            continue
        replaced[i] = Node("conv2d", (node.inputs[0], node.inputs[1], bias), add.outputs, node.attrs,
                           node.origin + add.origin + tuple(p for k in extra for p in graph.nodes[k].origin))
        drop.add(j)
        drop.update(extra)
    if not replaced:
        return graph
    nodes = [replaced.get(i, n) for i, n in enumerate(graph.nodes) if i not in drop]
    return replace(graph, nodes=nodes)


def _bias_parameter(graph: Graph, name: str, producers: dict[str, int], users: dict[str, list[int]]) -> tuple[str | None, list[int]]:
    """The [C] parameter that `name` is, viewed as [1, C, 1, 1]: the parameter itself shaped
    [1, C, 1, 1] is not accepted (its deploy shape would change), a reshape of a [C] one is."""
    if name not in producers:
        return None, []
    k = producers[name]
    reshape = graph.nodes[k]
    if reshape.op != "reshape" or len(users.get(name, [])) != 1 or name in graph.outputs:
        return None, []
    source = reshape.inputs[0]
    if not graph.is_parameter(source):
        return None, []
    shape = graph.constant(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    channels = graph.weights[source].shape
    if shape is None or len(channels) != 1 or list(shape) not in ([1, -1, 1, 1], [1, channels[0], 1, 1]):
        return None, []
    return source, [k]
