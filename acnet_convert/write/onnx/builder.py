"""What the ONNX op handlers build with: `OnnxBuilder` holds the ONNX graph under construction;
its helpers return the name of the tensor they make, so calls chain (tf2onnx's graph builder).
It knows the handlers only as the table it is given, never their modules."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.ir import Graph, Input, Node, TensorInfo, unique_name

# Paddle dtype names -> ONNX element types
ONNX_TYPES = {
    "float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16, "int8": TensorProto.INT8, "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16, "int32": TensorProto.INT32, "int64": TensorProto.INT64, "bool": TensorProto.BOOL,
}

# initializers at most this big also go into the skeleton model used for shape inference
_SMALL = 4096


def refusal(where: str, reason: str, supported: Iterable[str]) -> ConvertError:
    """One line: where the node sits, why it cannot be translated, what can be."""
    return ConvertError(f"{printable(where)}: {reason}", listing=("supported ops", sorted(supported)))


class OnnxBuilder:
    """The ONNX graph under construction, and the helpers that handlers build it with.

    Handlers read graph tensors with `tensor(name)` (the ONNX name of a graph tensor, making
    the initializer of a weight or constant on first use), write a node's outputs to
    `output(node, i)`, and add ONNX nodes with `op(...)`, which returns the output name(s)."""

    def __init__(self, graph: Graph, opset: int, fp16: bool, output_names: Mapping[str, str],
                 handlers: Mapping[str, Callable[["OnnxBuilder", Node], None]]) -> None:
        self.graph = graph
        self.handlers = handlers
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
        return refusal(self.node.where() if self.node is not None else "the graph", reason, self.handlers)

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
        tensor = numpy_helper.from_array(np.asarray(array, order="C"), name)  # 0-d stays 0-d
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
            self.handlers[node.op](self, node)  # build_onnx refused ops without one up front
        self.node = None
