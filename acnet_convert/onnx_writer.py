"""The ONNX deploy model: the package's `Graph` translated op by op with `onnx.helper`.

`build_onnx` walks the graph's nodes in order and hands each one to the handler registered for
its op in `onnx_ops` (one small function per op kind); `OnnxBuilder` is what the handlers build
with: its helpers return the name of the tensor they make, so calls chain. The graph reader and
this writer never see each other's formats: the reader makes a `Graph`, this reads one.

Names: graph inputs keep their feed names, weights keep their parameter names (initializers,
byte-identical float32 arrays), every other tensor keeps the graph's name for it; the output is
`logits` (several outputs: `output_0`, `output_1`, ...). An op without a handler, or attributes
a handler cannot express exactly, is a `ConvertError` naming the op and where it sits, raised
before anything is written.

Imports onnx, never Paddle.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import acnet_convert
from acnet_convert import onnx_ops, staging
from acnet_convert.errors import ConvertError
from acnet_convert.graph import Graph, Input, Node, TensorInfo, unique_name
from acnet_convert.text import printable

MIN_OPSET, MAX_OPSET = 13, 21
OUTPUT = "logits"
PRODUCER = "acnet-convert"
FP16_MAX = float(np.finfo(np.float16).max)  # 65504

# Paddle dtype names -> ONNX element types
ONNX_TYPES = {
    "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
}
# initializers at most this big also go into the skeleton model used for shape inference
_SMALL = 4096


def _float_weights(graph: Graph) -> Iterator[tuple[str, np.ndarray]]:
    for name, array in graph.weights.items():
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.floating):
            yield name, array


def fp16_overflowing(graph: Graph) -> list[str]:
    """Names of the float weights holding a value beyond float16's largest finite 65504 (NaN
    and inf count as not fitting)."""
    return [name for name, array in _float_weights(graph) if array.size and not (np.abs(array) <= FP16_MAX).all()]


def fp16_range_report(graph: Graph) -> tuple[list[str], int, int]:
    """How the graph's float weights fare in float16: (`fp16_overflowing`, number of nonzero
    values that become 0, number of float values in all)."""
    underflow = total = 0
    for _name, array in _float_weights(graph):
        total += array.size
        with np.errstate(over="ignore"):
            underflow += int(np.count_nonzero((array != 0) & (array.astype(np.float16) == 0)))
    return fp16_overflowing(graph), underflow, total


class OnnxBuilder:
    """The ONNX graph under construction, and the helpers that handlers build it with.

    Handlers read graph tensors with `tensor(name)` (the ONNX name of a graph tensor, making
    the initializer of a weight or constant on first use), write a node's outputs to
    `output(node, i)`, and add ONNX nodes with `op(...)`, which returns the output name(s)."""

    def __init__(self, graph: Graph, opset: int, fp16: bool, output_names: Mapping[str, str]) -> None:
        self.graph = graph
        self.opset = opset
        self.fp16 = fp16
        self.float_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.node: Node | None = None  # the graph node being translated
        self._names: dict[str, str] = {}  # graph tensor -> ONNX tensor
        self._taken: set[str] = set()
        self._preferred = dict(output_names)  # graph output tensor -> the ONNX name it should get
        self._consumers = graph.consumers()
        self._nodes_done: set[int] = set()
        self._typed: dict[str, onnx.ValueInfoProto] = {}  # big initializers, typed, for inference
        self._small: list[onnx.TensorProto] = []
        self._inferred: dict[str, onnx.ValueInfoProto] = {}
        self._inferred_at = -1
        # weights and constants keep their names whenever they are materialised
        self._taken.update(graph.weights, graph.constants, self._preferred.values())

    # ---- names ------------------------------------------------------------------------------

    def unique(self, hint: str) -> str:
        return unique_name(hint, self._taken)

    def reserve(self, name: str) -> None:
        self._taken.add(name)

    def tensor(self, name: Input) -> str:
        """The ONNX name holding graph tensor `name`; a weight or constant becomes an
        initializer the first time it is read."""
        if not isinstance(name, str):
            raise self.fail(f"operand {printable(name)} is not a single tensor")
        if name in self._names:
            return self._names[name]
        if name in self.graph.weights:
            array = np.asarray(self.graph.weights[name])
            self._names[name] = self._initializer(self._cast_float(array), name)
            return self._names[name]
        value = self.graph.constant(name)
        if value is not None:
            self._names[name] = self._initializer(self._cast_float(np.asarray(value)), name)
            return self._names[name]
        raise self.fail(f"tensor {printable(name)} is read before any op writes it")

    def output(self, node: Node, index: int = 0) -> str:
        """The ONNX name to write graph tensor `node.outputs[index]` to."""
        name = node.outputs[index]
        if name not in self._names:
            preferred = self._preferred.pop(name, None)  # an output name, reserved for this tensor
            self._names[name] = preferred if preferred is not None else self.unique(name)
        return self._names[name]

    def alias(self, name: str, onnx_name: str) -> None:
        """Graph tensor `name` is `onnx_name` (an op that computes the identity)."""
        self._names[name] = onnx_name

    # ---- what handlers may ask about the graph ---------------------------------------------

    def constant(self, name: Input) -> np.ndarray | None:
        """The value of a constant operand (a constant op's output or a parameter), else None."""
        if not isinstance(name, str):
            return None
        value = self.graph.constant(name)
        if value is None and name in self.graph.weights:
            value = self.graph.weights[name]
        return None if value is None else np.asarray(value)

    def info(self, name: Input) -> TensorInfo | None:
        return self.graph.tensors.get(name) if isinstance(name, str) else None

    def rank(self, name: Input) -> int | None:
        if isinstance(name, str) and name in self.graph.weights:
            return np.asarray(self.graph.weights[name]).ndim
        info = self.info(name)
        return None if info is None else len(info.shape)

    def dtype(self, name: Input) -> int:
        """The ONNX element type graph tensor `name` has in the model being built."""
        if isinstance(name, str) and name in self.graph.weights:
            dtype = np.asarray(self.graph.weights[name]).dtype.name
        else:
            info = self.info(name)
            dtype = info.dtype if info is not None else "float32"
        return self.onnx_type(dtype)

    def onnx_type(self, dtype: str) -> int:
        if dtype not in ONNX_TYPES:
            raise self.fail(f"dtype {printable(dtype)} has no ONNX equivalent")
        if self.fp16 and dtype == "float32":
            return TensorProto.FLOAT16
        return ONNX_TYPES[dtype]

    def used(self, name: str) -> bool:
        return bool(self._consumers.get(name)) or name in self.graph.outputs

    def sole_consumer(self, name: str) -> tuple[int, Node] | None:
        """The node that alone reads `name` (once), when `name` is no graph output."""
        users = self._consumers.get(name, [])
        if len(users) != 1 or name in self.graph.outputs:
            return None
        return users[0], self.graph.nodes[users[0]]

    def take(self, index: int) -> None:
        """Mark node `index` as translated by the current handler (a fused pattern)."""
        self._nodes_done.add(index)

    def inferred(self) -> dict[str, onnx.ValueInfoProto]:
        """Types and shapes ONNX shape inference gives the tensors of the model built so far
        (symbolic dimensions kept). Large initializers enter as typed inputs, not as data."""
        if self._inferred_at != len(self.nodes):
            skeleton = helper.make_graph(self.nodes, "skeleton", list(self.inputs) + list(self._typed.values()), [],
                                         initializer=self._small)
            model = helper.make_model(skeleton, opset_imports=[helper.make_opsetid("", self.opset)])
            model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
            self._inferred = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info]}
            self._inferred_at = len(self.nodes)
        return self._inferred

    def static_shape(self, onnx_name: str) -> list[int | None] | None:
        """The shape of tensor `onnx_name` as far as it is fixed (None for a dimension that is
        not: symbolic batch, dynamic size), or None when not even the rank is known."""
        value = self.inferred().get(onnx_name)
        if value is None:
            init = next((t for t in self._small if t.name == onnx_name), None)
            return None if init is None else list(init.dims)
        if not value.type.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]

    def fail(self, reason: str) -> ConvertError:
        """The error for the node being translated: what ONNX cannot express, on one line."""
        return onnx_ops.refusal(self.node.where() if self.node is not None else "the graph", reason)

    # ---- building ---------------------------------------------------------------------------

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | str | Sequence[str] = 1, **attrs: Any) -> Any:
        """Add an ONNX node writing `outputs` (names, or a count of fresh names derived from the
        graph node being translated); returns its output name (a list when it has several)."""
        if isinstance(outputs, str):
            outputs = [outputs]
        elif isinstance(outputs, int):
            hint = self.node.outputs[0] if self.node is not None else op_type
            outputs = [self.unique(f"{hint}.{op_type.lower()}") for _ in range(outputs)]
        outputs = list(outputs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=outputs[0], **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def const(self, value: Any, dtype: Any = None, hint: str = "const") -> str:
        """An initializer holding `value`; floats take the model's float type unless `dtype`."""
        array = np.asarray(value, dtype=dtype)
        if dtype is None:
            array = self._cast_float(array)
        prefix = self.node.outputs[0] if self.node is not None else "const"
        return self._initializer(array, self.unique(f"{prefix}.{hint}"))

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), np.int64, hint)

    def scalar(self, value: float, elem_type: int | None = None, hint: str = "scalar") -> str:
        """A rank-0 initializer of the model's float type (or `elem_type`)."""
        np_type = helper.tensor_dtype_to_np_dtype(elem_type if elem_type is not None else self.float_type)
        with np.errstate(over="ignore"):
            return self.const(np.asarray(value, dtype=np.float64).astype(np_type), np_type, hint)

    def _cast_float(self, array: np.ndarray) -> np.ndarray:
        if self.fp16 and array.dtype == np.float32:
            with np.errstate(over="ignore"):
                return array.astype(np.float16)
        return array

    def _initializer(self, array: np.ndarray, name: str) -> str:
        self._taken.add(name)
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.initializers.append(tensor)
        if array.size <= _SMALL:
            self._small.append(tensor)
        else:
            self._typed[name] = helper.make_tensor_value_info(name, tensor.data_type, list(array.shape))
        return name

    def add_input(self, name: str, elem_type: int, dims: Sequence[int | str]) -> None:
        self._taken.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(dims)))

    def translate(self) -> None:
        for index, node in enumerate(self.graph.nodes):
            if index in self._nodes_done:
                continue
            self.node = node
            onnx_ops.HANDLERS[node.op](self, node)  # build_onnx refused ops without one up front
        self.node = None


def _input_dims(graph: Graph, name: str, index: int, static_batch: bool, batch_size: int,
                dynamic_size: bool, input_size: int | None) -> list[int | str]:
    info = graph.tensors.get(name)
    if info is None:
        raise ConvertError(f"graph input {printable(name)} has no known shape")
    suffix = "" if index == 0 else f"_{index}"
    dims: list[int | str] = []
    for axis, dim in enumerate(info.shape):
        if axis == 0:
            dims.append(batch_size if static_batch else "N")
        elif len(info.shape) == 4 and axis >= 2:
            if dynamic_size:
                dims.append(("H", "W")[axis - 2] + suffix)
            elif dim > 0:
                dims.append(dim)
            elif input_size is not None:
                dims.append(input_size)
            else:
                raise ConvertError(f"graph input {printable(name)} has no fixed height and width "
                                   f"(shape {list(info.shape)}): give an input size, or ask for a dynamic size")
        else:
            dims.append(dim if dim > 0 else f"{printable(name)}_{axis}")
    return dims


def _output_value(builder: OnnxBuilder, name: str, elem_type: int, rank: int | None) -> onnx.ValueInfoProto:
    """The graph output's type: the inferred shape (symbolic dimensions kept), else its rank."""
    inferred = builder.inferred().get(name)
    value = onnx.ValueInfoProto()
    if inferred is not None and inferred.type.tensor_type.HasField("shape"):
        value.CopyFrom(inferred)
        value.type.tensor_type.elem_type = elem_type
        return value
    return helper.make_tensor_value_info(name, elem_type, None if rank is None else [None] * rank)


def build_onnx(
    graph: Graph,
    *,
    opset: int = 17,
    static_batch: bool = False,
    batch_size: int = 1,
    dynamic_size: bool = False,
    fp16: bool = False,
    input_size: int | None = None,
    metadata: Mapping[str, str] = {},
) -> onnx.ModelProto:
    """The ONNX model of `graph`.

    Inputs keep the graph's feed names, float32 NCHW, batch dimension "N" (or `batch_size`
    with `static_batch`), height and width from the graph's shapes (`input_size` where the
    program leaves them open), symbolic "H"/"W" with `dynamic_size`. One output is
    `logits`, several are `output_0`, `output_1`, ... With `fp16`, weights and activations are
    float16 and Casts at the borders keep the inputs and outputs float32; a weight that does
    not fit float16 is refused by name (see `fp16_overflowing`).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if batch_size < 1 or (input_size is not None and input_size < 1):
        raise ValueError(f"input size and batch size must be positive (got {input_size}, {batch_size})")
    for node in graph.nodes:  # before any work: the first op without a handler
        if node.op not in onnx_ops.HANDLERS:
            raise onnx_ops.refusal(node.where(), onnx_ops.NO_HANDLER.format(op=printable(node.op)))
    if fp16:
        overflowing = fp16_overflowing(graph)
        if overflowing:
            worst = float(np.nanmax(np.abs(np.asarray(graph.weights[overflowing[0]], np.float64))))
            more = f" (and {len(overflowing) - 1} more)" if len(overflowing) > 1 else ""
            raise ConvertError(f"weight {printable(overflowing[0])} does not fit float16: it holds {worst:.6g}, "
                               f"beyond float16's largest value {FP16_MAX:g}{more}; export without fp16")

    out_names = [OUTPUT] if len(graph.outputs) == 1 else [f"output_{i}" for i in range(len(graph.outputs))]
    preferred: dict[str, str] = {}
    if not fp16:
        for tensor, wanted in zip(graph.outputs, out_names):
            preferred.setdefault(tensor, wanted)
    builder = OnnxBuilder(graph, opset, fp16, preferred)
    for name in out_names:
        builder.reserve(name)

    for index, name in enumerate(graph.inputs):
        dims = _input_dims(graph, name, index, static_batch, batch_size, dynamic_size, input_size)
        info = graph.tensors[name]
        elem = ONNX_TYPES.get(info.dtype)
        if elem is None:
            raise ConvertError(f"graph input {printable(name)} has dtype {printable(info.dtype)}, "
                               "which ONNX cannot carry")
        builder.add_input(name, elem, dims)
        if fp16 and elem == TensorProto.FLOAT:
            builder.alias(name, builder.op("Cast", [name], [builder.unique(f"{name}.fp16")], to=TensorProto.FLOAT16))
        else:
            builder.alias(name, name)

    builder.translate()

    outputs = []
    for tensor, wanted in zip(graph.outputs, out_names):
        source = builder.tensor(tensor)
        elem = builder.dtype(tensor)
        if fp16 and elem == TensorProto.FLOAT16:
            builder.op("Cast", [source], [wanted], to=TensorProto.FLOAT)
            elem = TensorProto.FLOAT
        elif source != wanted:
            builder.op("Identity", [source], [wanted])
        outputs.append(_output_value(builder, wanted, elem, builder.rank(tensor)))

    onnx_graph = helper.make_graph(builder.nodes, "deploy", builder.inputs, outputs, initializer=builder.initializers)
    opset_id = helper.make_opsetid("", opset)
    model = helper.make_model(onnx_graph, opset_imports=[opset_id], producer_name=PRODUCER,
                              producer_version=acnet_convert.__version__)
    # onnx stamps its own newest IR version, which ONNX Runtime may not read yet; the
    # oldest IR that carries this opset is what every runtime supporting the opset accepts.
    model.ir_version = helper.find_min_ir_version_for([opset_id])
    ops = graph.op_counts()
    model.doc_string = (f"deploy graph of {sum(ops.values())} ops ({len(graph.weights)} weights"
                        f"{', float16' if fp16 else ''}), made by {PRODUCER}")
    helper.set_model_props(model, {str(k): str(v) for k, v in metadata.items()})
    return model


def write_onnx(model: onnx.ModelProto, path: Path, replace: bool = True) -> None:
    """Check `model` (onnx.checker with full_check, which runs strict, type-checked shape
    inference) and write it atomically: a temporary file beside `path`, then a rename that
    never replaces a file unless `replace`, nor anything but a regular file (staging)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ConvertError(f"{path.parent}: output directory does not exist")
    data = model.SerializeToString()  # serialized once: checked and written from the same bytes
    onnx.checker.check_model(data, full_check=True)
    staging.write_file(path, data, replace)
