"""Run graph nodes in numpy, float64 (the evaluators: `eval_tensors`, `eval_nn`): what constant folding computes a constant with, and what a
region is evaluated with to prove its fold. One small function per op, keyed by the graph's op
name, with Paddle's semantics (broadcasting, pads, pools, slices, `-1` and `0` in shapes).

`evaluate(graph, nodes, values)` runs `nodes` in order; `values` holds what is already known
(weights, constants, inputs) and receives every output. An op without an evaluator, or an
operand it cannot take, raises `Unevaluable` naming it: the caller then leaves the op alone.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, MutableMapping

from acnet_convert.graph import eval_nn, eval_tensors
from acnet_convert.graph.eval_base import Evaluator, Unevaluable
from acnet_convert.graph.ir import Graph, Input, Node


_OPS: dict[str, Evaluator] = {**eval_tensors.TABLE, **eval_nn.TABLE}


def can_evaluate(op: str) -> bool:
    return op in _OPS


def _operand(values: Mapping[str, Any], name: Input) -> Any:
    if name is None:
        return None
    if isinstance(name, tuple):
        return [values[n] for n in name]
    return values[name]


def evaluate(graph: Graph, nodes: Iterable[Node], values: MutableMapping[str, Any]) -> None:
    """Run `nodes` in order; every output lands in `values` (the first only, for ops whose other
    outputs are bookkeeping, such as a BN's running statistics)."""
    for node in nodes:
        fn = _OPS.get(node.op)
        if fn is None:
            raise Unevaluable(f"op '{node.op}' cannot be evaluated")
        try:
            args = [_operand(values, name) for name in node.inputs]
        except KeyError as missing:
            raise Unevaluable(f"{node.where()} reads {missing}, which is not known") from None
        try:
            result = fn(node, args)
        except Unevaluable:
            raise
        except (ValueError, TypeError, IndexError, ZeroDivisionError, KeyError) as err:
            raise Unevaluable(f"{node.where()}: {err}") from None
        if isinstance(result, tuple):
            for name, value in zip(node.outputs, result):
                values[name] = value
        else:
            values[node.outputs[0]] = result


__all__ = ["Unevaluable", "can_evaluate", "evaluate"]
