"""Read a loaded Paddle program (`program.Program`) into the package's `Graph`: one node per
computing op, Paddle's op names and operand order, parameters as weights, small constants kept
as values, and Paddle's conv-bias idiom merged into one conv.

Control flow: a `pd_op.if` becomes a node `if` reading its condition, with its two blocks read
the same way (`ir.Block`: their nodes, what they yield); an op inside a block names the outer
values it reads directly, as PIR does. Loops (`pd_op.while`) and block arguments are refused.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.attributes import check_attributes
from acnet_convert.graph.ir import Block, Graph, Input, Node, TensorInfo, unique_name
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


_DTYPE_NAMES: dict[tuple[type, Any], str] = {}  # Paddle's str() of a dtype is slow, and a program has a few dtypes


def _dtype_name(dtype: Any) -> str:
    key = (type(dtype), dtype)  # two enum types may share values
    try:
        return _DTYPE_NAMES[key]
    except KeyError:
        name = _DTYPE_NAMES[key] = str(dtype).replace("paddle.", "")
        return name
    except TypeError:  # unhashable: not a dtype enum
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


class _BlockArgument(Exception):
    """An op reads a block argument (a loop's carried value): no tensor name for it."""


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
            raise _BlockArgument()
        return self.by_key[(producer.id(), value.index())]


def _tensor_info(value: Any) -> TensorInfo | None:
    try:
        return TensorInfo(tuple(int(d) for d in value.shape), _dtype_name(value.dtype))
    except Exception:  # noqa: BLE001 - vector values have no shape
        return None


class _Reader:
    """One pass over a program's ops, block by block (`read_block`); the names, shapes,
    weights and constants of every block go into one graph."""

    def __init__(self, source: Program) -> None:
        self.source = source
        self.ops = source.ops
        self.position = {op.id(): i for i, op in enumerate(self.ops)}
        self.names = _Names()
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.output_names: list[str] = []
        self.tensors: dict[str, TensorInfo] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.combines: dict[tuple[int, int], int] = {}  # vector value -> position of the combine making it

    def fail(self, position: int, kind: str, why: str) -> ConvertError:
        return ConvertError(f"{printable(self.source.path)}: op #{position} {printable(kind)} {why}")

    def operands(self, op: Any, position: int) -> tuple[Input, ...]:
        try:
            return tuple(self.names.of(v) for v in op.operands_source())
        except _BlockArgument:
            raise self.fail(position, op.name(), "reads a block argument (a loop's value): control flow other "
                                                 "than `if` is not supported") from None

    def known(self, name: str, value: Any) -> None:
        info = _tensor_info(value) if value.initialized() else None
        if info is not None:
            self.tensors[name] = info

    def parameter(self, op: Any, position: int) -> None:
        source = self.source
        name = op.attrs()["parameter_name"]
        self.names.taken.add(name)
        self.names.set(op, 0, name, position)
        if source.arrays is not None and name in source.arrays:
            self.weights[name] = source.arrays[name]
        else:
            variable = source.scope.find_var(name)
            if variable is None:
                raise ConvertError(f"{printable(source.params)} lacks parameter {printable(name)} that the program reads")
            # moved, not copied: the scope's tensor is emptied and `fill_scope` puts back what
            # is still needed when the program is run or saved (one copy of the weights)
            tensor = variable.get_tensor()
            self.weights[name] = np.array(tensor)
            tensor._clear()
            if source.arrays is None:
                source.arrays = {}
            source.arrays[name] = self.weights[name]
        self.known(name, op.result(0))

    def results(self, op: Any, short: str, position: int) -> tuple[str, ...]:
        names = []
        for i in range(op.num_results()):
            base = f"{short}_{position}" if op.num_results() == 1 else f"{short}_{position}.{i}"
            name = self.names.unique(base)
            self.names.set(op, i, name, position)
            names.append(name)
            self.known(name, op.result(i))
        return tuple(names)

    def read_block(self, ops: Any) -> tuple[list[Node], tuple[str, ...]]:
        """The nodes of a block's ops, and what it yields (a sub-block's `cf.yield`)."""
        nodes: list[Node] = []
        yields: tuple[str, ...] = ()
        node_of_vector: dict[str, int] = {}
        names = self.names
        for op in ops:
            position = self.position[op.id()]
            kind = op.name()
            if kind == "builtin.parameter":
                self.parameter(op, position)
            elif kind in ("pd_op.data", "pd_op.feed"):
                name = names.unique(op.attrs()["name"])
                names.set(op, 0, name, position)
                self.inputs.append(name)
                self.known(name, op.result(0))
            elif kind == "pd_op.fetch":
                self.outputs.append(self.operands(op, position)[0])  # type: ignore[arg-type]
                self.output_names.append(op.attrs().get("name", f"output_{len(self.outputs) - 1}"))
            elif kind == "cf.yield":
                yields = self.operands(op, position)  # type: ignore[assignment]
            elif kind == "builtin.combine":
                names.set(op, 0, self.operands(op, position), position)
                self.combines[(op.id(), 0)] = position
            elif kind == "builtin.split":
                owner = node_of_vector[names.of(op.operand_source(0))]  # type: ignore[index]
                old = nodes[owner]
                parts = tuple(names.unique(f"{old.op}_{old.origin[0]}.{i}") for i in range(op.num_results()))
                for i, part in enumerate(parts):
                    names.set(op, i, part, position)
                    self.known(part, op.result(i))
                nodes[owner] = Node(old.op, old.inputs, parts, old.attrs, old.origin + (position,))
            elif kind == "pd_op.if":
                nodes.append(self.if_node(op, position))
            elif op.num_regions() > 0:
                what = "is a loop" if kind == "pd_op.while" else "has sub-blocks"
                raise self.fail(position, kind, f"{what}: control flow other than `if` is not supported")
            else:
                nodes.append(self.node(op, position))
                if op.num_results() == 1 and op.result(0).initialized() and _tensor_info(op.result(0)) is None:
                    node_of_vector[nodes[-1].output] = len(nodes) - 1
        return nodes, yields

    def node(self, op: Any, position: int) -> Node:
        short = _short(op.name())
        inputs = self.operands(op, position)
        results = self.results(op, short, position)
        attrs = _attrs(op)
        if short == "batch_norm" and (attrs.get("is_test") or attrs.get("use_global_stats")):
            # in inference its mean_out / variance_out are its mean / variance: a program that
            # runs one BN layer twice reads the first call's outputs, so read the parameters
            self.names.by_key[(op.id(), 1)] = inputs[1]
            self.names.by_key[(op.id(), 2)] = inputs[2]
        # the combine ops packing this op's vector operands go (and are edited) with it
        packed = tuple(
            self.combines[(v.get_defining_op().id(), v.index())] for v in op.operands_source()
            if v.initialized() and v.get_defining_op() is not None and v.get_defining_op().name() == "builtin.combine"
        )
        if short in _CONSTANT_OPS:
            value = _constant_value(short, attrs, self.tensors.get(results[0]))
            if value is not None:
                self.constants[results[0]] = value
        return Node(short, inputs, results, attrs, (position,) + packed)

    def if_node(self, op: Any, position: int) -> Node:
        """`if` (cond) -> results, its (true, false) blocks in `attrs["branches"]`, each with
        Paddle's conv-bias idiom merged as in the main block."""
        cond = self.operands(op, position)
        branches = []
        if_op = op.as_if_op()
        for block in (if_op.true_block(), if_op.false_block()):
            nodes, yields = self.read_block(block.ops)
            scope = Graph(nodes, [], list(yields), self.tensors, self.weights, self.constants)
            branches.append(Block(tuple(merge_conv_bias(scope).nodes), yields))
        return Node("if", cond, self.results(op, "if", position), {"branches": tuple(branches)}, (position,))


def read_graph(source: Program) -> Graph:
    """The graph of `source`: one node per computing op (parameters, feeds, fetches and
    vector packing become names, not nodes), conv biases merged into their conv, `if` ops
    with their blocks."""
    reader = _Reader(source)
    nodes, _ = reader.read_block(source.program.global_block().ops)
    if not reader.outputs:
        raise ConvertError(f"{printable(source.path)} has no fetch op: it is not an inference program with outputs")
    source.values = reader.names.where
    graph = Graph(nodes, reader.inputs, reader.outputs, reader.tensors, reader.weights, reader.constants,
                  reader.output_names)
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
    # the shape's constant op goes with the reshape when nothing else reads it
    shaped_by = producers.get(reshape.inputs[1])  # type: ignore[arg-type]
    alone = shaped_by is not None and len(users.get(reshape.inputs[1], [])) == 1 and reshape.inputs[1] not in graph.outputs  # type: ignore[arg-type]
    return source, [k, shaped_by] if alone else [k]
