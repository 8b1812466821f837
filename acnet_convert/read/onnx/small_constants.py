"""The value of a small tensor an exporter computes from constants only, when a translation
needs it as an attribute: torch's legacy exporter writes a Slice's axes and steps, a Pad's
pads, an Unsqueeze's axes as Unsqueeze / Cast / Concat of Constants. onnx's reference evaluator
runs the few nodes that make it; anything that reads the model's input or a shape, or is not
small, stays unknown (the graph's constant folding may still fold it later)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

_MAX_NODES = 32  # nodes that may make one such value
_MAX_VALUES = 4096  # elements of a value read as an attribute


def constant_ancestry(name: str, producer: dict[str, Any], known: Callable[[str], bool]) -> list[Any] | None:
    """The nodes computing `name` from known constants only, in order, or None."""
    order: list[Any] = []
    seen: set[int] = set()

    def visit(tensor: str) -> bool:
        if known(tensor):
            return True
        node = producer.get(tensor)
        if node is None or id(node) in seen:
            return node is not None
        if node.domain not in ("", "ai.onnx") or node.op_type in ("Shape", "Size", "If", "Loop", "Scan") or \
                any(a.type in (5, 10) for a in node.attribute) or len(order) >= _MAX_NODES:
            return False
        seen.add(id(node))
        if not all(visit(t) for t in node.input if t):
            return False
        order.append(node)
        return True

    return order if visit(name) and order else None


def evaluate_small(name: str, nodes: list[Any], constants: Callable[[str], np.ndarray | None], opsets: Any,
                   ir_version: int) -> np.ndarray | None:
    """`name`'s value from `nodes` (see `constant_ancestry`), or None when it cannot be run or
    is not small."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    produced = {o for n in nodes for o in n.output}
    reads = sorted({t for n in nodes for t in n.input if t and t not in produced})
    inits = []
    for t in reads:
        value = constants(t)
        if value is None or np.size(value) > _MAX_VALUES:
            return None
        inits.append(numpy_helper.from_array(np.asarray(value), t))
    graph = helper.make_graph(nodes, "small", [], [helper.make_empty_tensor_value_info(name)], inits)
    try:
        (value,) = ReferenceEvaluator(helper.make_model(graph, opset_imports=list(opsets), ir_version=ir_version)).run(None, {})
    except Exception:  # noqa: BLE001 - the reference evaluator raises anything on nodes it cannot run
        return None
    value = np.asarray(value)
    return value if value.size <= _MAX_VALUES else None
