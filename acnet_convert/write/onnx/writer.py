"""The ONNX deploy model: the package's `Graph` translated op by op with `onnx.helper`.

`build_onnx` walks the graph's nodes in order and hands each one to the handler registered for
its op in `ops` (one small function per op kind); `OnnxBuilder` (`builder`) is what the handlers build
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
from typing import Collection, Iterator, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper

import acnet_convert
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.ir import Graph
from acnet_convert.out import staging
from acnet_convert.write.onnx.builder import ONNX_TYPES, OnnxBuilder, refusal
from acnet_convert.write.onnx.ops import HANDLERS, NO_HANDLER

MIN_OPSET, MAX_OPSET = 13, 21
OUTPUT = "logits"
PRODUCER = "acnet-convert"
FP16_MAX = float(np.finfo(np.float16).max)  # 65504



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


def _input_dims(graph: Graph, name: str, index: int, static_batch: bool, batch_size: int,
                dynamic_size: bool | Collection[int], input_size: int | None) -> list[int | str]:
    info = graph.tensors.get(name)
    if info is None:
        raise ConvertError(f"graph input {printable(name)} has no known shape")
    suffix = "" if index == 0 else f"_{index}"
    free = {2, 3} if dynamic_size is True else set(dynamic_size or ())
    dims: list[int | str] = []
    for axis, dim in enumerate(info.shape):
        if axis == 0:
            dims.append(batch_size if static_batch else "N")
        elif len(info.shape) == 4 and axis >= 2:
            if axis in free:
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
    dynamic_size: bool | Collection[int] = False,
    fp16: bool = False,
    input_size: int | None = None,
    metadata: Mapping[str, str] = {},
) -> onnx.ModelProto:
    """The ONNX model of `graph`.

    Inputs keep the graph's feed names, float32 NCHW, batch dimension "N" (or `batch_size`
    with `static_batch`), height and width from the graph's shapes (`input_size` where the
    program leaves them open), symbolic "H"/"W" with `dynamic_size` (True: both; or the axes,
    2 and/or 3, to leave symbolic). One output is
    `logits`, several are `output_0`, `output_1`, ... With `fp16`, weights and activations are
    float16 and Casts at the borders keep the inputs and outputs float32; a weight that does
    not fit float16 is refused by name (see `fp16_overflowing`).
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"ONNX opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if batch_size < 1 or (input_size is not None and input_size < 1):
        raise ValueError(f"input size and batch size must be positive (got {input_size}, {batch_size})")
    for node in graph.nodes:  # before any work: the first op without a handler
        if node.op not in HANDLERS:
            raise refusal(node.where(), NO_HANDLER.format(op=printable(node.op)), HANDLERS)
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
    builder = OnnxBuilder(graph, opset, fp16, preferred, HANDLERS)
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
