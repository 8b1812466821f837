"""The attributes the passes and the writers compute with, checked once when a graph is read:
a stride, dilation or padding that is not a small non-negative integer, a group count that does
not divide the channels, a dilated kernel wider than any input may be. Each of these reached
arithmetic (a modulo by zero), Paddle's shape inference (a 2.5 TB allocation for dilation
100000) or ONNX's checker as an internal error; here each is one line naming the op.
"""
from __future__ import annotations

from typing import Any

from acnet_convert.common.budgets import MAX_SIDE
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.ir import Graph, Node

_CONVS = ("conv2d", "conv2d_transpose", "depthwise_conv2d_transpose")
_POOLS = ("pool2d", "max_pool2d_with_index")


def _ints(node: Node, key: str, low: int, high: int, where: str, lengths: tuple[int, ...] = (2,)) -> list[int] | None:
    value = node.attrs.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) not in lengths:
        raise ConvertError(f"{where}: {key} {printable(value, 60)} is not a list of {' or '.join(map(str, lengths))} "
                           "integers")
    for v in value:
        if type(v) is not int or not low <= v <= high:
            raise ConvertError(f"{where}: {key} {printable(list(value), 60)} must be integers from {low} to {high}")
    return list(value)


def _shape(graph: Graph, name: Any) -> tuple[int, ...] | None:
    if isinstance(name, str):
        if name in graph.weights:
            return tuple(graph.weights[name].shape)
        if name in graph.tensors:
            return graph.tensors[name].shape
    return None


def check_attributes(graph: Graph, source: str) -> None:
    """Refuse the first conv or pool whose geometry no input could have (ConvertError naming
    `source`, the op and its position); the nodes of `if` blocks too."""
    _check_nodes(graph, graph.nodes, source)


def _check_nodes(graph: Graph, nodes: Any, source: str, channels: dict[str, int] | None = None) -> None:
    channels = {} if channels is None else channels  # a conv's output -> its channels
    for node in nodes:
        for block in node.attrs.get("branches", ()) if node.op == "if" else ():
            _check_nodes(graph, block.nodes, source, channels)
        if node.op in _CONVS:
            _check_conv(graph, node, f"{source}: op #{node.origin[0] if node.origin else '?'} {printable(node.op)}",
                        channels)
        elif node.op == "batch_norm":
            _check_batch_norm(graph, node, f"{source}: op #{node.origin[0] if node.origin else '?'} batch_norm",
                              channels)
        elif node.op in _POOLS:
            where = f"{source}: op #{node.origin[0] if node.origin else '?'} {printable(node.op)}"
            _ints(node, "strides", 1, MAX_SIDE, where)
            _ints(node, "paddings", 0, MAX_SIDE, where, (2, 4))


def _parameter(graph: Graph, name: Any, where: str, rank: int) -> tuple[int, ...] | None:
    """The shape of a weight the folding computes with, refused unless a float tensor of `rank`."""
    array = (graph.weights.get(name, graph.constants.get(name))) if isinstance(name, str) else None
    if array is None:
        return None
    if array.dtype.kind != "f":
        raise ConvertError(f"{where}: {printable(name, 80)} is {array.dtype.name}, not a float tensor")
    if array.ndim != rank:
        raise ConvertError(f"{where}: {printable(name, 80)} has shape {list(array.shape)}, not {rank}-D")
    return tuple(array.shape)


def _check_batch_norm(graph: Graph, node: Node, where: str, channels: dict[str, int]) -> None:
    data = _shape(graph, node.inputs[0])
    count = channels.get(node.inputs[0]) if isinstance(node.inputs[0], str) else None
    if count is None and data is not None and len(data) == 4 and data[1] > 0:
        count = data[1]
    for name in node.inputs[1:5]:
        shape = _parameter(graph, name, where, 1)
        if shape is not None and count is not None and shape[0] != count:
            raise ConvertError(f"{where}: {printable(name, 80)} holds {shape[0]} values for {count} channels")
        count = shape[0] if shape is not None else count


def _check_conv(graph: Graph, node: Node, where: str, channels: dict[str, int]) -> None:
    _ints(node, "strides", 1, MAX_SIDE, where)
    dilations = _ints(node, "dilations", 1, MAX_SIDE, where) or [1, 1]
    paddings = _ints(node, "paddings", 0, MAX_SIDE, where, (2, 4)) or [0, 0]
    _ints(node, "output_padding", 0, MAX_SIDE, where, (0, 2))
    groups = node.attrs.get("groups", 1)
    if type(groups) is not int or groups < 1:
        raise ConvertError(f"{where}: groups {printable(groups, 40)} must be a positive integer")
    weight = _parameter(graph, node.inputs[1], where, 4) if len(node.inputs) > 1 else None
    if weight is None:
        return
    transposed = node.op != "conv2d"
    out_channels = weight[1] * groups if transposed else weight[0]
    if out_channels % groups:
        raise ConvertError(f"{where}: groups {groups} does not divide its {out_channels} output channels")
    # a conv2d's third operand is its bias (the reader merges Paddle's conv + add of a bias); a
    # transposed conv's is its output size
    bias = _parameter(graph, node.inputs[2], where, 1) if len(node.inputs) > 2 and not transposed else None
    if bias is not None and bias[0] != out_channels:
        raise ConvertError(f"{where}: bias {printable(node.inputs[2], 80)} holds {bias[0]} values for "
                           f"{out_channels} output channels")
    channels[node.outputs[0]] = out_channels
    data = _shape(graph, node.inputs[0])
    in_channels = weight[0] if transposed else weight[1] * groups
    if data is not None and len(data) == 4 and node.attrs.get("data_format", "NCHW") == "NCHW" \
            and data[1] > 0 and data[1] != in_channels:
        raise ConvertError(f"{where}: its input has {data[1]} channels, its kernel {list(weight)} with groups {groups} "
                           f"reads {in_channels}")
    pads = paddings if len(paddings) == 4 else [paddings[0], paddings[0], paddings[1], paddings[1]]
    for axis, (k, d) in enumerate(zip(weight[2:], dilations)):
        extent = d * (k - 1) + 1
        if extent > MAX_SIDE + pads[2 * axis] + pads[2 * axis + 1]:
            raise ConvertError(f"{where}: a {k}-tap kernel dilated {d} spans {extent} pixels, more than any input "
                               f"of at most {MAX_SIDE} pixels (padded) holds")
