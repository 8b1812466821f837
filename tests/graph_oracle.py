"""An independent float64 interpreter of hand-built graphs, for tests of the graph passes: it runs
a graph's nodes with tests/numpy_conv.py (a direct convolution), numpy pads and loops, never
the package's evaluator, affine algebra or numeric kernels."""
from __future__ import annotations

from typing import Any

import numpy as np

from acnet_convert.graph.ir import Graph, Node
from tests.numpy_conv import conv2d as direct_conv


def _dilated(w: np.ndarray, d: tuple[int, int]) -> np.ndarray:
    if d == (1, 1):
        return w
    big = np.zeros(w.shape[:2] + ((w.shape[2] - 1) * d[0] + 1, (w.shape[3] - 1) * d[1] + 1))
    big[:, :, ::d[0], ::d[1]] = w
    return big


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple[int, int], padding: list[int],
         dilation: tuple[int, int], groups: int) -> np.ndarray:
    top, bottom, left, right = padding if len(padding) == 4 else (padding[0], padding[0], padding[1], padding[1])
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    wd = _dilated(np.asarray(w, np.float64), dilation)
    if stride[0] == stride[1]:
        y = direct_conv(xp, wd, stride[0], (0, 0), groups)
    else:  # a stride per axis: the full-resolution result, sampled
        y = direct_conv(xp, wd, 1, (0, 0), groups)[:, :, ::stride[0], ::stride[1]]
    return y if b is None else y + np.asarray(b, np.float64).reshape(1, -1, 1, 1)


def avg_pool(x: np.ndarray, k: int, s: int, p: int, exclusive: bool) -> np.ndarray:
    n, c, h, w = x.shape
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s - p, j * s - p
            hs, ws = slice(max(h0, 0), min(h0 + k, h)), slice(max(w0, 0), min(w0 + k, w))
            area = (hs.stop - hs.start) * (ws.stop - ws.start) if exclusive else k * k
            out[:, :, i, j] = x[:, :, hs, ws].sum(axis=(2, 3)) / area
    return out


def run(graph: Graph, x: np.ndarray) -> list[np.ndarray]:
    """The graph's outputs on input `x` (graph.inputs[0])."""
    v: dict[str, Any] = {graph.inputs[0]: np.asarray(x, np.float64)}
    v.update({k: np.asarray(a, np.float64) for k, a in graph.weights.items()})
    v.update(graph.constants)
    for node in graph.nodes:
        v[node.outputs[0]] = _op(node, v)
    return [v[t] for t in graph.outputs]


def _op(node: Node, v: dict[str, Any]) -> np.ndarray:
    a = node.attrs
    get = lambda i: v[node.inputs[i]]  # noqa: E731
    if node.op == "conv2d":
        b = get(2) if len(node.inputs) > 2 else None
        pad = [int(p) for p in a.get("paddings", [0, 0])]
        return conv(get(0), get(1), b, tuple(a.get("strides", [1, 1])), pad, tuple(a.get("dilations", [1, 1])),
                    int(a.get("groups", 1)))
    if node.op == "batch_norm":
        x, mean, var, gamma, beta = (get(i) for i in range(5))
        s = (1, -1, 1, 1)
        return (x - mean.reshape(s)) / np.sqrt(var.reshape(s) + a["epsilon"]) * gamma.reshape(s) + beta.reshape(s)
    if node.op in ("add", "subtract", "multiply", "divide"):
        f = {"add": np.add, "subtract": np.subtract, "multiply": np.multiply, "divide": np.divide}[node.op]
        return f(get(0), get(1))
    if node.op == "add_n":
        return sum(v[t] for t in node.inputs[0])
    if node.op == "scale":
        return get(0) * float(a.get("scale", 1.0)) + float(a.get("bias", 0.0))
    if node.op == "slice":
        x = get(0)
        index = [slice(None)] * 4
        for axis, start, end in zip(a["axes"], get(1), get(2)):
            index[axis] = slice(int(start), int(end) if end < 1 << 30 else None)
        out = x[tuple(index[:x.ndim])]
        return np.squeeze(out, axis=tuple(a["decrease_axis"])) if a.get("decrease_axis") else out
    if node.op == "pad":
        p = a["paddings"]
        return np.pad(get(0), ((p[0], p[1]), (p[2], p[3]), (p[4], p[5]), (p[6], p[7])), constant_values=a.get("pad_value", 0.0))
    if node.op == "concat":
        return np.concatenate([v[t] for t in node.inputs[0]], axis=int(a["axis"]))
    if node.op == "full_int_array":
        return np.asarray(a["value"], np.int64)
    if node.op == "expand":
        shape = [int(d) for d in get(1)]
        x = get(0)
        return np.broadcast_to(x, [x.shape[i] if d == -1 else d for i, d in enumerate(shape)]).copy()
    if node.op == "shape64":
        return np.asarray(get(0).shape, np.int64)
    if node.op == "full":
        return np.full(a["shape"], a["value"])
    if node.op == "stack":
        return np.stack([v[t] for t in node.inputs[0]], axis=int(a["axis"]))
    if node.op == "pool2d":
        return avg_pool(get(0), int(a["ksize"]), int(a["strides"][0]), int(a["paddings"][0]), bool(a["exclusive"]))
    if node.op == "relu":
        return np.maximum(get(0), 0)
    if node.op == "mean":
        return get(0).mean(keepdims=True)
    raise AssertionError(f"the oracle does not run {node.op}")
