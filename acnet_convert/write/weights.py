"""The deploy weights as they are stored: every writer (the Paddle scope, the legacy program's
parameters, deploy.pdparams, ONNX initializers) stores a weight in the dtype its tensor info
gives it. Constant folding computes in float64; the cast happens once, here."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from acnet_convert.graph.ir import Graph


def stored_weights(graph: Graph) -> Graph:
    """`graph` with each weight in the dtype `graph.tensors` says (the same arrays where they
    already are). A float64 weight without a tensor info is a bug in the pass that made it."""
    cast = {}
    for name, array in graph.weights.items():
        info = graph.tensors.get(name)
        dtype = np.asarray(array).dtype
        if info is None:
            if dtype == np.float64:
                raise RuntimeError(f"deploy weight {name!r} is float64 and has no tensor info saying its dtype")
            continue
        if str(dtype) != info.dtype:
            cast[name] = np.asarray(array).astype(info.dtype)
    if not cast:
        return graph
    return replace(graph, weights={**graph.weights, **cast})
