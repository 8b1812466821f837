"""Re-parameterise a graph: constant folding, then every affine region collapsed into proven
convs (`collapse`), each fused conv named, cast once, checked, and the deploy graph derived
(the timm pattern: one walker; the arithmetic lives in `fold`).

Names: a fused conv is named after its largest conv's weight, its bias after that weight
(`X_weights` -> `X_bias`, `X.w_0` -> `X.b_0`, `X.weight` -> `X.bias`), so the ResNet-ACNet
family gets the reference deploy names (`NAME_acsquare_weights` + `NAME_acsquare_bias`,
`NAME_weights` + `NAME_bias`). A name still read by an op that stays gets a `.fused` suffix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.affine_ops import Known
from acnet_convert.graph.collapse import Add, Collapse, Declined, Solution, solve
from acnet_convert.graph.constants import fold_constants
from acnet_convert.graph.ir import Graph, Node, TensorInfo
from acnet_convert.graph.prove import Prover
from acnet_convert.graph.regions import Region, fields, find_regions


@dataclass(frozen=True)
class FusedConv:
    collapse: Collapse  # its conv holds the cast arrays (`kernel`, `bias_value`), not the float64 ones
    weight: str
    bias: str
    kernel: np.ndarray  # cast to the deploy dtype
    bias_value: np.ndarray
    source_weight: str  # the largest conv's weight, which names it

    def node(self) -> Node:
        """The deploy graph's conv2d node: reads the collapse's input, writes its output."""
        c = self.collapse.conv
        return Node("conv2d", (self.collapse.input, self.weight, self.bias), (self.collapse.output,),
                    {"strides": list(c.stride), "paddings": list(c.padding), "padding_algorithm": "EXPLICIT",
                     "dilations": list(c.dilation), "groups": c.groups, "data_format": "NCHW"})


@dataclass
class Folding:
    """What `fold_graph` made: the graph it folded (constants folded), the fused convs, the
    adds left of partial sums, and what was declined."""

    graph: Graph
    fused: list[FusedConv] = field(default_factory=list)
    adds: list[Add] = field(default_factory=list)
    removed: set[int] = field(default_factory=set)
    declined: list[Declined] = field(default_factory=list)


_BIAS_SUFFIXES = ((r"_weights$", "_bias"), (r"_weight$", "_bias"), (r"\.w_(\d+)$", r".b_\1"), (r"\.weight$", ".bias"))


def bias_name(weight: str) -> str:
    for pattern, replacement in _BIAS_SUFFIXES:
        if re.search(pattern, weight):
            return re.sub(pattern, replacement, weight)
    return f"{weight}_bias"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 0
    while candidate in taken:
        n += 1
        candidate = f"{name}.fused" if n == 1 else f"{name}.fused{n}"
    taken.add(candidate)
    return candidate


def _largest_weight(graph: Graph, collapse: Collapse) -> str:
    """The weight of the largest conv (the first of equals); a fold of pools alone is named
    after what it writes."""
    convs = [(int(np.prod(graph.weights[n.inputs[1]].shape[2:])), -i, n.inputs[1])
             for i in collapse.nodes for n in [graph.nodes[i]] if n.op == "conv2d" and n.inputs[1] in graph.weights]
    return max(convs)[2] if convs else f"{collapse.output}.w_0"  # type: ignore[return-value]


def _check_inputs(graph: Graph, nodes: Iterable[int], allow_nonfinite: bool, warn: Callable[[str], None],
                  kernels: bool) -> None:
    """Dtypes, negative variances and NaN/Inf in what a collapse reads; conv kernels (large)
    only when `kernels`: a non-finite kernel makes the fused one non-finite, so they are looked
    at only to name the culprit."""
    for i in nodes:
        node = graph.nodes[i]
        names = [t for k, t in enumerate(node.inputs) if isinstance(t, str) and t in graph.weights
                 and (kernels or not (node.op == "conv2d" and k == 1))]
        for name in names:
            array = graph.weights[name]
            if not np.issubdtype(array.dtype, np.floating):
                raise ConvertError(f"tensor {printable(name)} has dtype {array.dtype}, expected a float type")
            if not np.isfinite(array).all():
                message = f"tensor {printable(name)} holds NaN or Inf"
                if not allow_nonfinite:
                    raise ConvertError(message + " (pass --allow-nonfinite to convert anyway)")
                warn(message)
        if node.op == "batch_norm" and isinstance(node.inputs[2], str) and (np.asarray(graph.weights[node.inputs[2]]) < 0).any():
            raise ConvertError(f"tensor {printable(node.inputs[2])} holds a negative running variance")


def _deploy_dtype(graph: Graph, name: str) -> np.dtype:
    info = graph.tensors.get(name)
    dtype = np.dtype(info.dtype) if info is not None and info.dtype in ("float32", "float16", "float64") else graph.weights[name].dtype
    return np.dtype(np.float32) if dtype == np.float64 and info is None else dtype


def fold_graph(
    graph: Graph,
    allow_nonfinite: bool = False,
    warn: Callable[[str], None] = lambda _text: None,
    track: Callable[[list[Region], str], Iterable[Region]] | None = None,
    release: Callable[[str], None] | None = None,
) -> Folding:
    """Fold `graph` (see module doc). Every fused tensor is computed in float64 and cast once
    to the dtype of the weight it is named after; a NaN/Inf input, or a fused tensor that is
    not finite after the cast, is an error naming the tensor (a warning with
    `allow_nonfinite`). `release(name)` is called for each train weight as soon as the
    collapses have replaced every op reading it (the caller may drop it: train and fused weights
    are then never all in memory); the folded graph then holds a stand-in of no size in its place
    (`_released`: its shape and dtype, for the manifest, and NaN for values nothing reads)."""
    graph = fold_constants(graph)
    known = Known(graph, fields(graph))
    result = Folding(graph)
    producer, readers = graph.producers(), graph.consumers()  # once for the graph, not per pass
    regions, near_misses = find_regions(graph, known, producer, readers)
    prover = Prover(graph, producer, readers)
    result.declined += [Declined(m.node, graph.nodes[m.node].outputs[0], m.reason) for m in near_misses]
    pending, consumed = (_weight_readers(graph, readers) if release is not None else {}), set()
    for region in track(regions, "folding") if track else regions:
        solution = solve(graph, known, region, prover)
        result.declined += solution.declined
        if not solution.collapses:
            continue
        result.adds += solution.adds
        result.removed |= solution.removed
        for collapse in solution.collapses:
            _check_inputs(graph, collapse.nodes, allow_nonfinite, warn, kernels=False)
            result.fused.append(_fused(graph, collapse, allow_nonfinite, warn))
        if release is not None:
            _release(graph, pending, consumed, solution, release)
    _name(graph, result)
    return result


def _weight_readers(graph: Graph, readers: dict[str, list[int]]) -> dict[str, set[int]]:
    """Weight -> the nodes that read it."""
    return {t: set(nodes) for t, nodes in readers.items() if t in graph.weights}


def _release(graph: Graph, readers: dict[str, set[int]], consumed: set[str], solution: Solution,
             release: Callable[[str], None]) -> None:
    """Release the weights collapses read (`consumed`, so far) that no op left reads
    (`readers`, kept up to date: removed nodes no longer count)."""
    consumed.update(t for c in solution.collapses for i in c.nodes for t in graph.nodes[i].tensor_inputs())
    touched = set()
    for i in solution.removed:
        for t in graph.nodes[i].tensor_inputs():
            if t in readers:
                readers[t].discard(i)
                touched.add(t)
    for name in touched:
        if not readers[name] and name in consumed:
            del readers[name]
            release(name)
            graph.weights[name] = _released(graph.weights[name])


def _released(array: np.ndarray) -> np.ndarray:
    """What stands for a released weight: its shape and dtype in no memory, read-only, NaN (or
    0) where a value would be read by mistake, so a slip shows. Weights of one shape share one."""
    key = (array.shape, array.dtype)
    stand_in = _STAND_INS.get(key)
    if stand_in is None:
        fill = np.nan if np.issubdtype(array.dtype, np.floating) else 0
        stand_in = _STAND_INS[key] = np.broadcast_to(np.array(fill, array.dtype), array.shape)
    return stand_in


_STAND_INS: dict[tuple[tuple[int, ...], np.dtype], np.ndarray] = {}  # a network has a few dozen shapes


def _fused(graph: Graph, collapse: Collapse, allow_nonfinite: bool, warn: Callable[[str], None]) -> FusedConv:
    source = _largest_weight(graph, collapse)
    dtype = _deploy_dtype(graph, source) if source in graph.weights else np.dtype(np.float32)
    kernel, bias_value = collapse.conv.kernel.astype(dtype), collapse.conv.bias.astype(dtype)
    for what, array in (("kernel", kernel), ("bias", bias_value)):
        if np.isfinite(array).all():
            continue
        _check_inputs(graph, collapse.nodes, allow_nonfinite, warn, kernels=True)  # names a NaN/Inf input
        message = f"the fused {what} of {printable(source)} is not finite in {dtype}"
        if not allow_nonfinite:
            raise ConvertError(f"{message}: a running variance is near zero or weights are huge "
                               "(pass --allow-nonfinite to write it anyway)")
        warn(message)
    # the float64 arrays are done with: keeping them to the end would hold every fused kernel
    # twice more than the deploy model does (ResNet-50: +200 MB); the conv keeps their shapes
    collapse = replace(collapse, conv=replace(collapse.conv, kernel=kernel, bias=bias_value))
    return FusedConv(collapse, "", "", kernel, bias_value, source)


def _name(graph: Graph, result: Folding) -> None:
    """Weight and bias names for every fused conv (the largest conv's weight names it)."""
    removed = result.removed
    kept = {t for i, n in enumerate(graph.nodes) if i not in removed for t in n.tensor_inputs()}
    taken = kept | (set(graph.weights) - {t for f in result.fused for i in f.collapse.nodes
                                          for t in graph.nodes[i].tensor_inputs()})
    for k, f in enumerate(result.fused):
        weight = _unique(f.source_weight, taken)
        bias = _unique(bias_name(f.source_weight), taken)
        result.fused[k] = replace(f, weight=weight, bias=bias)


def deploy_graph(folding: Folding) -> Graph:
    """The folded graph with each collapse's nodes replaced by its conv (where its last node
    was) and the adds of partial sums (where the sum was); weights nothing reads dropped, the
    float64 weights of constant folding cast to their declared dtype."""
    graph = folding.graph
    at: dict[int, list[Node]] = {}
    for f in folding.fused:
        at.setdefault(max(f.collapse.nodes), []).append(f.node())
    producers = graph.producers()
    for add in folding.adds:
        # an add goes where its sum was: after every node whose output it reads
        position = max(producers.get(t, -1) for t in (*add.terms, add.output) if t in producers)
        at.setdefault(position, []).append(Node("add", add.terms, (add.output,)))
    nodes: list[Node] = []
    for i, node in enumerate(graph.nodes):
        if i not in folding.removed:
            nodes.append(node)
        nodes.extend(at.get(i, []))
    weights = {}
    for node in nodes:
        for name in node.tensor_inputs():
            if name in graph.weights:
                array = graph.weights[name]
                weights[name] = array.astype(_deploy_dtype(graph, name)) if array.dtype == np.float64 else array
    tensors = dict(graph.tensors)
    for f in folding.fused:
        weights[f.weight] = f.kernel
        weights[f.bias] = f.bias_value
        tensors[f.weight] = TensorInfo(f.kernel.shape, str(f.kernel.dtype))
        tensors[f.bias] = TensorInfo(f.bias_value.shape, str(f.bias_value.dtype))
        region_out = graph.tensors.get(f.collapse.region)
        if f.collapse.output not in tensors and region_out is not None:
            tensors[f.collapse.output] = region_out
    for add in folding.adds:
        if add.output not in tensors and add.terms[1] in tensors:
            tensors[add.output] = tensors[add.terms[1]]
    return replace(graph, nodes=nodes, tensors=tensors, weights=weights).pruned()
