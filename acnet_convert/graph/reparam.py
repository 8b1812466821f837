"""Re-parameterise a graph: ask the fusion for each group's kernel and bias, name them, and
derive the deploy graph (the timm pattern: one walker, the arithmetic in `fusion`).

Names: a fused conv is named after its largest branch's weight, its bias after that weight
(`X_weights` -> `X_bias`, `X.w_0` -> `X.b_0`, `X.weight` -> `X.bias`), so the ResNet-ACNet
family gets the reference deploy names (`NAME_acsquare_weights` + `NAME_acsquare_bias`,
`NAME_weights` + `NAME_bias`). A name still read by an op that stays gets a `.fused` suffix.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Iterable

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.fold.fusion import BatchNorm, fold_bn, identity_kernel, sum_branches
from acnet_convert.graph.ir import Graph, Node, TensorInfo
from acnet_convert.graph.patterns import Branch, Group
from acnet_convert.common.text import printable


@dataclass(frozen=True)
class FusedConv:
    group: Group
    weight: str
    bias: str
    kernel: np.ndarray  # cast to the deploy dtype
    bias_value: np.ndarray

    def node(self) -> Node:
        """The deploy graph's conv2d node: reads the group's input, writes its output."""
        g = self.group
        return Node(
            "conv2d",
            (g.input, self.weight, self.bias),
            (g.output,),
            {"strides": list(g.stride), "paddings": list(g.padding), "padding_algorithm": "EXPLICIT",
             "dilations": list(g.dilation), "groups": g.groups, "data_format": "NCHW"},
        )


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


def kept_parameters(graph: Graph, groups: Iterable[Group]) -> set[str]:
    """Parameters still read once the groups' nodes are gone."""
    removed = {i for g in groups for i in g.nodes}
    kept: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if i not in removed:
            kept.update(t for t in node.tensor_inputs() if graph.is_parameter(t))
    return kept


def _bn(graph: Graph, branch: Branch) -> BatchNorm:
    scale, offset, mean, variance = branch.bn_params
    return BatchNorm(
        gamma=None if scale is None else graph.weights[scale],
        beta=None if offset is None else graph.weights[offset],
        mean=graph.weights[mean],
        variance=graph.weights[variance],
        epsilon=branch.epsilon,
    )


def fuse_group(graph: Graph, group: Group) -> tuple[np.ndarray, np.ndarray]:
    """The float64 (kernel, bias) of one group."""
    terms = []
    for branch in group.branches:
        bn = _bn(graph, branch)
        if branch.kind == "identity":
            kernel = identity_kernel(group.out_channels, group.in_per_group)
        else:
            kernel = graph.weights[branch.weight]  # type: ignore[index]
        bias = None if branch.conv_bias is None else graph.weights[branch.conv_bias]
        terms.append((*fold_bn(kernel, bn, bias), branch.offset))
    return sum_branches(terms, group.kernel)


def _check_inputs(graph: Graph, group: Group, allow_nonfinite: bool, warn: Callable[[str], None], kernels: bool) -> None:
    """Dtypes, negative variances and NaN/Inf in the BN vectors; the (large) kernels are scanned
    only when `kernels`: a non-finite kernel always makes the fused kernel non-finite, so they
    are looked at only to name the culprit."""
    for branch in group.branches:
        names = (branch.weight, branch.conv_bias, *branch.bn_params) if kernels else (branch.conv_bias, *branch.bn_params)
        for name in names:
            if name is None:
                continue
            array = graph.weights[name]
            if not np.issubdtype(array.dtype, np.floating):
                raise ConvertError(f"tensor {printable(name)} has dtype {array.dtype}, expected a float type")
            if not np.isfinite(array).all():
                message = f"tensor {printable(name)} holds NaN or Inf"
                if not allow_nonfinite:
                    raise ConvertError(message + " (pass --allow-nonfinite to convert anyway)")
                warn(message)
        variance = graph.weights[branch.bn_params[3]]
        if (np.asarray(variance) < 0).any():
            raise ConvertError(f"tensor {printable(branch.bn_params[3])} holds a negative running variance")


def fuse_graph(
    graph: Graph,
    groups: list[Group],
    allow_nonfinite: bool = False,
    warn: Callable[[str], None] = lambda _text: None,
    track: Callable[[list[Group], str], Iterable[Group]] | None = None,
    release: Callable[[str], None] | None = None,
) -> list[FusedConv]:
    """Every group's fused conv, named, computed in float64 and cast once to the dtype of the
    weight it is named after. A NaN/Inf input, or a fused tensor that is not finite after the
    cast (finite weights can overflow float32 when a BN variance is tiny), is an error naming
    the tensor, or a warning with `allow_nonfinite`. `release(name)` is called for each train
    weight once the last group reading it is fused and nothing else reads it (the caller may
    drop it: the train and the fused weights then never all sit in memory at once)."""
    kept = kept_parameters(graph, groups)
    consumed = {id(group): _consumed(graph, group) - kept for group in groups}
    taken = kept | (set(graph.weights) - set().union(*consumed.values()))
    readers = Counter(name for names in consumed.values() for name in names)
    fused = []
    for group in track(groups, "fusing") if track else groups:
        _check_inputs(graph, group, allow_nonfinite, warn, kernels=False)
        source = group.branches[group.named_after].weight
        weight = _unique(source, taken)  # type: ignore[arg-type]
        bias = _unique(bias_name(source), taken)  # type: ignore[arg-type]
        kernel64, bias64 = fuse_group(graph, group)
        dtype = graph.weights[source].dtype  # type: ignore[index]
        kernel, bias_value = kernel64.astype(dtype), bias64.astype(dtype)
        del kernel64, bias64
        for name, array in ((weight, kernel), (bias, bias_value)):
            if np.isfinite(array).all():
                continue
            _check_inputs(graph, group, allow_nonfinite, warn, kernels=True)  # names a NaN/Inf input
            message = f"fused tensor {printable(name)} (from {printable(source)}) is not finite in {dtype}"
            if allow_nonfinite and not all(np.isfinite(graph.weights[b.weight]).all() for b in group.branches if b.weight):
                continue  # the input was named above
            if not allow_nonfinite:
                raise ConvertError(f"{message}: a branch's running variance is near zero or its weights are huge "
                                   "(pass --allow-nonfinite to write it anyway)")
            warn(message)
        fused.append(FusedConv(group, weight, bias, kernel, bias_value))
        if release is not None:
            for name in consumed[id(group)]:
                readers[name] -= 1
                if not readers[name]:
                    release(name)
    return fused


def _consumed(graph: Graph, group: Group) -> set[str]:
    return {t for i in group.nodes for t in graph.nodes[i].tensor_inputs() if graph.is_parameter(t)}


def deploy_graph(graph: Graph, fused: list[FusedConv]) -> Graph:
    """`graph` with each group's nodes replaced by its fused conv (placed where the group's
    last node was) and the weights that no remaining node reads dropped."""
    at_root = {f.group.nodes[-1]: f for f in fused}
    removed = {i for f in fused for i in f.group.nodes}
    nodes = []
    for i, node in enumerate(graph.nodes):
        if i in at_root:
            nodes.append(at_root[i].node())
        elif i not in removed:
            nodes.append(node)
    weights = {}
    for node in nodes:
        for name in node.tensor_inputs():
            if name in graph.weights:
                weights[name] = graph.weights[name]
    for f in fused:
        weights[f.weight] = f.kernel
        weights[f.bias] = f.bias_value
    tensors = dict(graph.tensors)
    for f in fused:
        tensors[f.weight] = TensorInfo(f.kernel.shape, str(f.kernel.dtype))
        tensors[f.bias] = TensorInfo(f.bias_value.shape, str(f.bias_value.dtype))
    return replace(graph, nodes=nodes, tensors=tensors, weights=weights).pruned()
