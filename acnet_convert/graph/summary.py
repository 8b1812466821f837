"""What a graph and its fused groups amount to, for the manifest and `inspect`: learned
parameters and multiply-adds, and the table of what each deploy conv was folded from."""
from __future__ import annotations

import math
import re

import numpy as np
from typing import Any

from acnet_convert.graph.collapse import Declined
from acnet_convert.graph.ir import Graph, Node
from acnet_convert.graph.reparam import FusedConv


def _bn_statistics(graph: Graph) -> set[str]:
    return {t for n in graph.nodes if n.op == "batch_norm" for t in n.inputs[1:3] if isinstance(t, str)}


def graph_totals(graph: Graph) -> dict[str, int | None]:
    """Learned parameters (BN running statistics are not learned) and multiply-adds per image
    of convs and matmuls; None where a shape is not static."""
    statistics = _bn_statistics(graph)
    params = sum(int(w.size) for name, w in graph.weights.items() if name not in statistics)
    macs: int | None = 0
    for node in graph.nodes:
        if node.op == "conv2d" and graph.is_parameter(node.inputs[1]):
            out = graph.tensors.get(node.output)
            w = graph.weights[node.inputs[1]]
            if out is None or len(out.shape) != 4 or min(out.shape[2:]) < 1:
                return {"params": params, "macs": None}
            macs += out.shape[2] * out.shape[3] * int(w.shape[0]) * int(w.shape[1]) * int(w.shape[2]) * int(w.shape[3])  # type: ignore[operator]
        elif node.op == "matmul" and graph.is_parameter(node.inputs[1]):
            x = graph.tensors.get(node.inputs[0])
            w = graph.weights[node.inputs[1]]
            if x is None or any(d < 1 for d in x.shape[1:]) or w.ndim != 2:
                return {"params": params, "macs": None}
            macs += math.prod(x.shape[1:-1]) * int(w.shape[0]) * int(w.shape[1])  # type: ignore[operator]
    return {"params": params, "macs": macs}


def layer_name(weight: str) -> str:
    """The reference name of a ResNet-ACNet layer from its weight (`res2a_branch2b_acsquare_weights`
    -> `res2a_branch2b`); other weights name themselves."""
    return re.sub(r"(_acsquare)?_weights$", "", weight)


def _region_kind(graph: Graph, nodes: tuple[int, ...]) -> str:
    """"sum" (parallel branches), "chain" (convs one after another), or "conv_bn" (one conv and
    the per-channel ops around it)."""
    ops = [graph.nodes[i].op for i in nodes]
    if any(op in ("add", "add_n", "subtract") and _sums_data(graph, graph.nodes[i]) for i, op in zip(nodes, ops)):
        return "sum"
    return "chain" if sum(op in ("conv2d", "pool2d") for op in ops) > 1 else "conv_bn"


def _sums_data(graph: Graph, node: Node) -> bool:
    operands = node.inputs[0] if node.op == "add_n" else node.inputs[:2]
    operands = operands if isinstance(operands, tuple) else (operands,)
    return sum(1 for t in operands if isinstance(t, str) and t not in graph.weights and t not in graph.constants) > 1


def _params(graph: Graph, nodes: tuple[int, ...], statistics: set[str]) -> int:
    """Learned parameters the region held (`statistics`, BN running statistics, are not learned)."""
    names = {t for i in nodes for t in graph.nodes[i].tensor_inputs() if t in graph.weights and t not in statistics}
    return sum(int(graph.weights[t].size) for t in names)


def _conv_branch(graph: Graph, node: Node) -> dict[str, Any]:
    return {"kind": "conv", "kernel": list(graph.weights[node.inputs[1]].shape[2:]), "weight": node.inputs[1],
            "conv_bias": node.inputs[2] if len(node.inputs) > 2 else None}


def _branches(graph: Graph, nodes: tuple[int, ...]) -> list[dict[str, Any]]:
    """What a fused conv was folded from: the terms of its sums (the largest conv of each, a
    pool, or the identity), or its convs one after another."""
    inside = set(nodes)
    producer = {t: i for i in nodes for t in graph.nodes[i].outputs}
    sums = [i for i in nodes if graph.nodes[i].op in ("add", "add_n", "subtract") and _sums_data(graph, graph.nodes[i])]
    if not sums:
        return [_conv_branch(graph, graph.nodes[i]) for i in nodes
                if graph.nodes[i].op == "conv2d" and graph.nodes[i].inputs[1] in graph.weights]
    terms = [t for i in sums for t in graph.nodes[i].tensor_inputs()
             if t not in graph.weights and t not in graph.constants and producer.get(t) not in sums]
    out = []
    for term in terms:
        part, stack = set(), [term]
        while stack:  # the term's own ops, back to the input
            k = producer.get(stack.pop())
            if k is not None and k in inside and k not in part:
                part.add(k)
                stack.extend(graph.nodes[k].tensor_inputs())
        convs = [graph.nodes[k] for k in sorted(part) if graph.nodes[k].op == "conv2d" and graph.nodes[k].inputs[1] in graph.weights]
        if convs:
            out.append(_conv_branch(graph, max(convs, key=lambda n: int(np.prod(graph.weights[n.inputs[1]].shape[2:])))))
        elif any(graph.nodes[k].op == "pool2d" for k in part):
            out.append({"kind": "pool", "kernel": None, "weight": None, "conv_bias": None})
        else:
            out.append({"kind": "identity", "kernel": [1, 1], "weight": None, "conv_bias": None})
    return out


def fused_rows(graph: Graph, fused: list[FusedConv]) -> list[dict[str, Any]]:
    """The manifest's table: what each deploy conv was folded from, and its proof."""
    rows = []
    made = {t for n in graph.nodes for t in n.outputs}
    statistics = _bn_statistics(graph)  # once: per fused conv it made the table quadratic in the graph
    for f in fused:
        c = f.collapse
        conv = c.conv
        rows.append({
            "name": layer_name(f.source_weight),
            "kind": _region_kind(graph, c.nodes),
            "ops": [graph.nodes[i].where() for i in c.nodes],
            "branches": _branches(graph, c.nodes),
            "kernel": list(conv.kernel.shape[2:]),
            "stride": list(conv.stride),
            "padding": list(conv.padding),
            "dilation": list(conv.dilation),
            "groups": conv.groups,
            "in": int(conv.kernel.shape[1]) * conv.groups,
            "out": int(conv.kernel.shape[0]),
            "input": c.input,
            "output": c.output,
            "region": c.region,
            "partial": c.output not in made,  # part of a sum: its output is no tensor of the source
            "params_train": _params(graph, c.nodes, statistics),
            "params_deploy": int(f.kernel.size + f.bias_value.size),
            "residual": c.residual,
            "probes": [list(s) for s in c.probes],
            "deploy_tensors": [f.weight, f.bias],
        })
    return rows


def declined_rows(graph: Graph, declined: list[Declined]) -> list[dict[str, Any]]:
    return [{"op": graph.nodes[d.node].where(), "output": d.output, "reason": d.reason} for d in declined]
