"""What a graph and its fused groups amount to, for the manifest and `inspect`: learned
parameters and multiply-adds, and the table of what each deploy conv was folded from."""
from __future__ import annotations

import math
import re
from typing import Any

from acnet_convert.graph.ir import Graph
from acnet_convert.graph.patterns import Declined
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


def fused_rows(graph: Graph, fused: list[FusedConv]) -> list[dict[str, Any]]:
    """The manifest's table: what each deploy conv was folded from."""
    rows = []
    for f in fused:
        g = f.group
        rows.append({
            "name": layer_name(g.branches[g.named_after].weight or f.weight),
            "kind": g.kind,
            "branches": [
                {"kind": b.kind, "kernel": list(b.kernel), "offset": list(b.offset), "weight": b.weight,
                 "conv_bias": b.conv_bias, "bn": list(b.bn_params), "epsilon": b.epsilon}
                for b in g.branches
            ],
            "kernel": list(g.kernel),
            "stride": list(g.stride),
            "padding": list(g.padding),
            "dilation": list(g.dilation),
            "groups": g.groups,
            "in": g.in_per_group * g.groups,
            "out": g.out_channels,
            "input": g.input,
            "output": g.output,
            "ops": sorted({p for i in g.nodes for p in graph.nodes[i].origin}),
            "deploy_tensors": [f.weight, f.bias],
        })
    return rows


def declined_rows(graph: Graph, declined: list[Declined]) -> list[dict[str, Any]]:
    return [{"op": graph.nodes[d.node].where(), "output": d.output, "reason": d.reason} for d in declined]
