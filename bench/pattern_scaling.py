#!/usr/bin/env python3
"""Region finding and folding scale linearly: `regions.find_regions` and `reparam.fold_graph` on
graphs of growing size.

Graphs: the ResNet-50/101/152 ACNet train graphs `fuse` reads (plan -> Paddle program ->
`read_graph`, cached by `_common.resnet_graph`), and synthetic chains of N residual ACB blocks
built directly as `graph.Graph` objects, N = 100 .. 3200.
A block is relu(ACB(x)) -> 1x1 conv + BN -> relu(. + x): 13 nodes, one ACB sum (3x3 + 3x1 +
1x3 conv+BN branches, two adds: one region), one lone conv+BN (a region), and one residual add
that must be looked at and left alone. All sizes are timed interleaved (order rotating each
round; best of 3 calls per round for find_regions); the time per node should be flat, i.e. the
log-log slope of time vs nodes ~1. `fold_graph` includes the collapse of every region and its
proof, so its time per node is dominated by per-region numpy work.
The timing runs twice: with Python's cyclic GC on (what `fuse` gets; its full collections walk
every live object, the graph's too, so they add a mild super-linear term on huge graphs) and
with it off (the algorithm alone). No Paddle in this process.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
from _common import Row, interleaved, median, note, resnet_graph, run_part

from acnet_convert.graph.ir import Graph, Node, TensorInfo
from acnet_convert.graph.constants import fold_constants
from acnet_convert.graph.regions import find_regions
from acnet_convert.graph.reparam import fold_graph

CHAINS = (100, 200, 400, 800, 1600, 3200)
TARGET_SLOPE = 1.2  # log-log slope of time vs node count (1 linear, 2 quadratic)
CHANNELS, SIZE = 4, 8


def acb_chain(blocks: int) -> Graph:
    """`blocks` residual ACB blocks in a row; the parameters of all blocks share a few small
    arrays (their names differ; folding copies a kernel before it scales it)."""
    rng = np.random.default_rng(0)
    c = CHANNELS
    kernels = {k: rng.normal(size=(c, c, *k)).astype(np.float32) for k in ((3, 3), (3, 1), (1, 3), (1, 1))}
    stats = [rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c), rng.normal(0, 0.5, c), rng.uniform(0.5, 2, c)]
    stats = [a.astype(np.float32) for a in stats]
    nodes: list[Node] = []
    weights: dict[str, np.ndarray] = {}
    info = TensorInfo((-1, c, SIZE, SIZE), "float32")
    tensors: dict[str, TensorInfo] = {"x": info}
    count = 0

    def name(base: str) -> str:
        nonlocal count
        count += 1
        return f"{base}_{count}"

    def node(op: str, inputs: tuple, attrs: dict | None = None, extra_outputs: int = 0) -> str:
        out = name(op)
        tensors[out] = info
        nodes.append(Node(op, inputs, (out, *(name("stat") for _ in range(extra_outputs))), attrs or {}))
        return out

    def conv_bn(x: str, kernel: tuple[int, int]) -> str:
        w = name("w")
        weights[w] = kernels[kernel]
        pad = [kernel[0] // 2, kernel[0] // 2, kernel[1] // 2, kernel[1] // 2]
        y = node("conv2d", (x, w), {"strides": [1, 1], "paddings": pad, "padding_algorithm": "EXPLICIT",
                                    "dilations": [1, 1], "groups": 1, "data_format": "NCHW"})
        params = []
        for base, array in zip(("scale", "offset", "mean", "var"), stats):
            params.append(name(base))
            weights[params[-1]] = array
        scale, offset, mean, var = params
        return node("batch_norm", (y, mean, var, scale, offset), {"is_test": True, "epsilon": 1e-5, "data_format": "NCHW"},
                    extra_outputs=5)

    x = "x"
    for _ in range(blocks):
        acb = node("add", (node("add", (conv_bn(x, (3, 3)), conv_bn(x, (3, 1)))), conv_bn(x, (1, 3))))
        y = conv_bn(node("relu", (acb,)), (1, 1))
        x = node("relu", (node("add", (y, x)),))
    return Graph(nodes, ["x"], [x], tensors, weights, {})


def slope(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(time) vs log(size)."""
    lx, ly = np.log(sizes), np.log(seconds)
    return float(np.polyfit(lx, ly, 1)[0])


def _check(key: str, graph: Graph) -> tuple[int, int, int]:
    """(regions, fused convs, declined) of `graph`, checked on the chains: each block's ACB sum
    and its 1x1 conv+BN fold, nothing is declined."""
    regions, _ = find_regions(fold_constants(graph))
    folding = fold_graph(graph)
    found = (len(regions), len(folding.fused), len(folding.declined))
    if key.startswith("chain"):
        n = int(key.split()[1])
        assert found[1:] == (2 * n, 0), f"{key}: fused {found[1]} convs (expected {2 * n}), declined {found[2]}"
    return found


def _rows(graphs: dict[str, Graph], what: str, times: dict[str, list[float]], times_off: dict[str, list[float]],
          rounds: int) -> list[Row]:
    t = {k: median(v) for k, v in times.items()}
    per_node = {k: t[k] / len(graphs[k].nodes) for k in graphs}
    chains = [k for k in graphs if k.startswith("chain")]
    nodes = [len(graphs[k].nodes) for k in chains]
    b = slope(nodes, [t[k] for k in chains])
    b_off = slope(nodes, [median(times_off[k]) for k in chains])
    flat = per_node[chains[-1]] / per_node[chains[0]]
    part = "p regions"
    return [
        Row(part, f"{what} on synthetic residual ACB chains, {nodes[0]}..{nodes[-1]} nodes ({rounds} interleaved rounds, "
            "best of 3): time per node " + ", ".join(f"{len(graphs[k].nodes)} {per_node[k] * 1e6:.1f}" for k in chains) + " us",
            f"{t[chains[-1]] * 1000:.0f} ms for {nodes[-1]} nodes",
            f"slope {b:.2f} (GC off: {b_off:.2f}); per node {flat:.2f}x largest/smallest",
            f"log-log slope <= {TARGET_SLOPE}", b <= TARGET_SLOPE),
        Row(part, f"{what} on the ResNet ACNet train graphs: " + ", ".join(
            f"{k[7:]}: {len(graphs[k].nodes)} nodes {t[k] * 1000:.1f} ms ({per_node[k] * 1e6:.1f} us/node)"
            for k in graphs if k.startswith("ResNet")),
            f"{t['ResNet-152'] * 1000:.1f} ms for ResNet-152",
            f"per node {per_node['ResNet-152'] / per_node['ResNet-50']:.2f}x ResNet-152/50", "info", None),
    ]


def run(quick: bool) -> tuple[list[Row], str]:
    rounds = 2 if quick else 5
    graphs: dict[str, Graph] = {}
    for depth in (50, 101, 152):
        graphs[f"ResNet-{depth}"] = resnet_graph(depth)
    started = time.perf_counter()
    for n in CHAINS:
        graphs[f"chain {n}"] = acb_chain(n)
    note(f"[regions] built {len(CHAINS)} synthetic chains in {time.perf_counter() - started:.1f} s; "
         f"{rounds} interleaved rounds of find_regions and fold_graph over {len(graphs)} graphs")
    expected = {key: _check(key, graph) for key, graph in graphs.items()}  # checked once, and warmed up
    rows, details = [], []
    passes = {"`find_regions` (after `fold_constants`)": lambda g: find_regions(fold_constants(g)),
              "`fold_graph` (constants, regions, collapse, proofs)": fold_graph}
    for what, fn in passes.items():
        calls = {k: (lambda g=g, fn=fn: fn(g)) for k, g in graphs.items()}
        times = interleaved(calls, rounds, best_of=1 if "fold_graph" in what else 3)
        gc.disable()
        try:
            times_off = interleaved({k: calls[k] for k in graphs if k.startswith("chain")}, max(2, rounds // 2))
        finally:
            gc.enable()
        rows += _rows(graphs, what, times, times_off, rounds)
        details.append(f"{what}: " + "; ".join(f"{k} " + ", ".join(f"{v * 1000:.1f}" for v in times[k]) + " ms"
                                             for k in graphs)
                       + "\n  GC off: " + "; ".join(f"{k} " + ", ".join(f"{v * 1000:.1f}" for v in times_off[k]) + " ms"
                                                    for k in times_off))
    details.insert(0, "graphs: " + "; ".join(f"{k} ({len(graphs[k].nodes)} nodes; {expected[k][0]} regions, "
                                            f"{expected[k][1]} fused convs, {expected[k][2]} declined)" for k in graphs))
    return rows, "\n".join(details)


def main() -> None:
    run_part(run, __doc__)


if __name__ == "__main__":
    main()
