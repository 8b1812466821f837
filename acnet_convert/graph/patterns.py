"""Find what folds, by structure: sums of conv+BN / BN branches over one tensor, and lone
conv+BN pairs. Reads a `Graph`; knows nothing of parameter names or of Paddle.

A *branch* is a BN in inference mode whose input is either a conv (+ optional conv bias) that
feeds only that BN, possibly reading its input through crops (`slice`) and zero pads (`pad`,
`pad3d`) that feed only that conv, or the shared tensor itself (an identity branch). A *sum* is
a tree of `add`/`add_n` nodes whose inner results feed only the tree. A sum becomes one conv
with bias when all its terms are branches of the same tensor with the same stride, dilation
and groups, and every branch reads taps that sit on one dilated grid, so each kernel lands in
the fused kernel at an offset (the arithmetic is in `geometry`). Every other conv whose output only a BN reads
folds alone. What does not qualify stays as written; `Declined` says why, for `inspect`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from acnet_convert.graph.geometry import IDENTITY, Geometry, NotFusable, conv_geometry, fused_grid
from acnet_convert.graph.ir import Graph
_CONVS = ("conv2d",)
_SUMS = ("add", "add_n")
# ops between a branch's shared input and its conv that crop or zero-pad it (F.pad on NCHW is
# unsqueeze -> pad3d -> squeeze around the H/W axes)
_INPUT_STEPS = ("slice", "pad", "pad3d", "squeeze", "unsqueeze")


@dataclass(frozen=True)
class Branch:
    kind: str  # "conv" | "identity"
    bn: int  # node index of the batch norm
    conv: int | None  # node index of the conv
    input_ops: tuple[int, ...]  # slice / pad nodes between the shared tensor and the conv
    weight: str | None  # conv weight parameter
    conv_bias: str | None  # pre-BN conv bias parameter
    bn_params: tuple[str | None, str | None, str, str]  # scale, offset, mean, variance
    epsilon: float
    kernel: tuple[int, int]
    offset: tuple[int, int]  # where the kernel sits in the fused kernel, in taps

    @property
    def label(self) -> str:
        return "identity" if self.kind == "identity" else f"{self.kernel[0]}x{self.kernel[1]}"


@dataclass(frozen=True)
class Group:
    """Nodes that become one conv with bias: `input` -> conv -> `output`."""

    kind: str  # "sum" (of branches) | "conv_bn" (one conv + its BN)
    input: str
    output: str
    branches: tuple[Branch, ...]
    nodes: tuple[int, ...]  # every node the fused conv replaces, in graph order
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # top, bottom, left, right
    groups: int
    out_channels: int
    in_per_group: int
    named_after: int  # index into branches of the largest conv branch (names the fused conv)


@dataclass(frozen=True)
class Declined:
    node: int  # the sum's root node
    output: str
    reason: str


class _Finder:
    def __init__(self, graph: Graph) -> None:
        self.g = graph
        self.producer = graph.producers()
        self.users = graph.consumers()
        self.outputs = set(graph.outputs)

    # -- small structural facts -------------------------------------------------------------

    def only_user(self, tensor: str, node: int) -> bool:
        """`node` is the one reader of `tensor`, and the tensor is not a graph output."""
        return tensor not in self.outputs and self.users.get(tensor, []) == [node]

    def made_by(self, tensor: Any, ops: Sequence[str]) -> int | None:
        if not isinstance(tensor, str) or tensor not in self.producer:
            return None
        i = self.producer[tensor]
        return i if self.g.nodes[i].op in ops else None

    def shape(self, tensor: str) -> tuple[int, ...] | None:
        info = self.g.tensors.get(tensor)
        return info.shape if info else None

    def bn_ready(self, i: int) -> bool:
        node = self.g.nodes[i]
        inference = bool(node.attrs.get("is_test")) or bool(node.attrs.get("use_global_stats"))
        if not inference or node.attrs.get("trainable_statistics"):
            return False
        if str(node.attrs.get("data_format", "NCHW")) not in ("NCHW", "AnyLayout"):
            return False
        x, mean, variance = node.inputs[0], node.inputs[1], node.inputs[2]
        scale, offset = node.inputs[3], node.inputs[4]
        if not all(self.g.is_parameter(p) for p in (mean, variance)):
            return False
        if any(p is not None and not self.g.is_parameter(p) for p in (scale, offset)):
            return False
        # the statistics outputs (mean_out, ...) are unused in an inference program
        return isinstance(x, str) and all(not self.users.get(o) and o not in self.outputs for o in node.outputs[1:])

    def conv_ready(self, i: int) -> bool:
        node = self.g.nodes[i]
        if str(node.attrs.get("data_format", "NCHW")) not in ("NCHW", "AnyLayout"):
            return False
        if not self.g.is_parameter(node.inputs[1]) or self.g.weights[node.inputs[1]].ndim != 4:
            return False
        return len(node.inputs) == 2 or self.g.is_parameter(node.inputs[2])

    # -- branches ------------------------------------------------------------------------------

    def conv_branch(self, bn: int) -> tuple[int, tuple[int, ...], str] | None:
        """(conv node, crop/pad nodes, tensor read) when BN `bn` reads a conv that only it reads."""
        x = self.g.nodes[bn].inputs[0]
        conv = self.made_by(x, _CONVS)
        if conv is None or not self.only_user(x, bn) or not self.conv_ready(conv):
            return None
        path: list[int] = []
        source = self.g.nodes[conv].inputs[0]
        reader = conv
        while True:
            step = self.made_by(source, _INPUT_STEPS)
            if step is None or not self.only_user(source, reader):
                break
            path.append(step)
            reader, source = step, self.g.nodes[step].inputs[0]
        return conv, tuple(reversed(path)), source

    def geometry(self, conv: int, path: tuple[int, ...]) -> Geometry:
        return conv_geometry(self.g, self.g.nodes[conv], [self.g.nodes[i] for i in path])

    def bn_params(self, bn: int) -> tuple[tuple[str | None, str | None, str, str], float]:
        node = self.g.nodes[bn]
        x, mean, variance, scale, offset = node.inputs[:5]
        return (scale, offset, mean, variance), float(node.attrs.get("epsilon", 1e-5))  # type: ignore[return-value]

    # -- sums ----------------------------------------------------------------------------------

    def sum_tree(self, root: int) -> tuple[list[int], list[str]]:
        """The sum nodes of the tree at `root` (an inner sum belongs to it when only its parent
        reads it) and the tree's terms."""
        nodes, terms, stack = [], [], [root]
        while stack:
            i = stack.pop()
            nodes.append(i)
            for tensor in self.sum_inputs(i):
                reader = i
                while (step := self.identity_scale(tensor)) is not None and self.only_user(tensor, reader):
                    nodes.append(step)  # `0 + branch` in dygraph code exports as scale(x, 1, 0)
                    reader, tensor = step, self.g.nodes[step].inputs[0]  # type: ignore[assignment]
                inner = self.made_by(tensor, _SUMS)
                if inner is not None and self.only_user(tensor, reader):
                    stack.append(inner)
                else:
                    terms.append(tensor)
        return sorted(nodes), terms

    def identity_scale(self, tensor: str) -> int | None:
        """The `scale` node making `tensor` when it multiplies by 1 and adds 0."""
        i = self.made_by(tensor, ("scale",))
        if i is None:
            return None
        node = self.g.nodes[i]
        if len(node.inputs) > 1:  # the scale as an operand, which must be a known constant
            value = self.g.constant(node.inputs[1])
            if value is None:
                return None
            factor = float(value.reshape(-1)[0])
        else:
            factor = float(node.attrs.get("scale", 1.0))
        return i if factor == 1.0 and float(node.attrs.get("bias", 0.0)) == 0.0 else None

    def sum_inputs(self, i: int) -> tuple[str, ...]:
        node = self.g.nodes[i]
        if node.op == "add_n":
            vector = node.inputs[0]
            return tuple(vector) if isinstance(vector, tuple) else (vector,)  # type: ignore[arg-type]
        return tuple(t for t in node.inputs if isinstance(t, str))

    def sum_group(self, root: int) -> Group:
        nodes, terms = self.sum_tree(root)
        if len(terms) < 2:
            raise NotFusable("fewer than two terms")
        shapes = {self.shape(t) for t in terms}
        if len(shapes) > 1:
            raise NotFusable("terms of different shapes (broadcasting)")
        bns = []
        for term in terms:
            bn = self.made_by(term, ("batch_norm",))
            if bn is None:
                raise NotFusable(f"term {term} is not a batch norm output")
            readers = self.users.get(term, [])
            if self.g.nodes[bn].outputs[0] != term or term in self.outputs or len(readers) != 1 or readers[0] not in nodes:
                raise NotFusable(f"batch norm output {term} is also used outside the sum")
            if not self.bn_ready(bn):
                raise NotFusable(f"batch norm {term} is not in inference mode (or not NCHW)")
            bns.append(bn)
        readings = [(bn, self.conv_branch(bn)) for bn in bns]
        # the shared input: every branch's conv input (through crops/pads), or the BN's own input
        options = [{r[1][2]} if r[1] else set() for r in readings]
        for (bn, _), option in zip(readings, options):
            option.add(self.g.nodes[bn].inputs[0])  # type: ignore[arg-type]
        shared = set.intersection(*options)
        if not shared:
            raise NotFusable("the terms read different tensors")
        # prefer the tensor that the most branches read through a conv
        x = max(sorted(shared), key=lambda t: sum(1 for _bn, c in readings if c and c[2] == t))
        branches = []
        for bn, conv in readings:
            if conv is not None and conv[2] == x:
                branches.append(("conv", bn, conv[0], conv[1]))
            else:
                branches.append(("identity", bn, None, ()))
        return self.build_group("sum", x, self.g.nodes[root].outputs[0], branches, nodes)

    def build_group(self, kind: str, x: str, output: str, raw: list[tuple[str, int, int | None, tuple[int, ...]]], sum_nodes: list[int]) -> Group:
        geometries: list[Geometry] = []
        groups = set()
        in_per_group = set()
        for branch_kind, _bn, conv, path in raw:
            if branch_kind == "identity":
                geometries.append(IDENTITY)
                continue
            node = self.g.nodes[conv]  # type: ignore[index]
            geometries.append(self.geometry(conv, path))  # type: ignore[arg-type]
            groups.add(int(node.attrs.get("groups", 1)))
            in_per_group.add(int(self.g.weights[node.inputs[1]].shape[1]))  # type: ignore[index]
        channels = {int(self.g.weights[self.g.nodes[bn].inputs[2]].shape[0]) for _k, bn, _c, _p in raw}  # type: ignore[index]
        if len(channels) != 1:
            raise NotFusable("branches with different channel counts")
        out_channels = channels.pop()
        if len(groups) > 1 or len(in_per_group) > 1:
            raise NotFusable("branches with different groups")
        x_shape = self.shape(x)
        in_channels = x_shape[1] if x_shape and len(x_shape) == 4 and x_shape[1] > 0 else None
        if groups:
            group_count, per_group = groups.pop(), in_per_group.pop()
        else:  # identities only: a depthwise 1x1
            group_count, per_group = out_channels, 1
        if any(k == "identity" for k, *_ in raw):
            if in_channels is not None and in_channels != out_channels:
                raise NotFusable("an identity branch whose input and output channels differ")
            if per_group * group_count != out_channels:
                raise NotFusable("an identity branch in a conv whose input and output channels differ")
        grid = fused_grid(geometries)
        kernel = grid.kernel
        branches = []
        for i, ((branch_kind, bn, conv, path), geometry) in enumerate(zip(raw, geometries)):
            params, epsilon = self.bn_params(bn)
            node = self.g.nodes[conv] if conv is not None else None
            branches.append(Branch(
                branch_kind, bn, conv, path,
                node.inputs[1] if node else None,  # type: ignore[arg-type]
                node.inputs[2] if node is not None and len(node.inputs) > 2 else None,  # type: ignore[arg-type]
                params, epsilon, geometry.kernel, grid.offsets[i],
            ))
        conv_branches = [i for i, b in enumerate(branches) if b.kind == "conv"]
        if not conv_branches:
            raise NotFusable("no conv branch to name the fused conv after")
        named_after = max(conv_branches, key=lambda i: (branches[i].kernel[0] * branches[i].kernel[1], -i))
        if branches[named_after].kernel != (kernel[0], kernel[1]):
            # a fused kernel larger than every branch would cost more than the plain conv
            k = branches[named_after].kernel
            raise NotFusable(f"the branches do not all sit inside the largest {k[0]}x{k[1]} kernel (misaligned padding)")
        members = set(sum_nodes)
        for b in branches:
            members.add(b.bn)
            if b.conv is not None:
                members.add(b.conv)
            members.update(b.input_ops)
        return Group(kind, x, output, tuple(branches), tuple(sorted(members)), grid.kernel, geometries[0].stride,
                     grid.dilation, grid.padding, group_count, out_channels, per_group, named_after)


def find_groups(graph: Graph) -> tuple[list[Group], list[Declined]]:
    """Every fusable sum and lone conv+BN of `graph`, in graph order, and the sums declined."""
    finder = _Finder(graph)
    taken: set[int] = set()
    groups: list[Group] = []
    declined: dict[int, Declined] = {}
    # outermost sums first: a sum whose tree does not qualify leaves its inner sums a chance
    for i in range(len(graph.nodes) - 1, -1, -1):
        if graph.nodes[i].op not in _SUMS or i in taken:
            continue
        try:
            group = finder.sum_group(i)
        except NotFusable as why:
            if _is_branch_sum(finder, i):
                declined[i] = Declined(i, graph.nodes[i].outputs[0], str(why))
            continue
        if taken.intersection(group.nodes):
            continue
        taken.update(group.nodes)
        groups.append(group)
        for j in group.nodes:
            declined.pop(j, None)
    # a sum around a fused one (a residual add of an ACB's output) is not a near miss
    declined = {i: d for i, d in declined.items() if not taken.intersection(finder.sum_tree(i)[0])}
    for i, node in enumerate(graph.nodes):
        if node.op != "batch_norm" or i in taken or not finder.bn_ready(i):
            continue
        conv = finder.conv_branch(i)
        if conv is None or conv[0] in taken:
            continue
        try:
            group = finder.build_group("conv_bn", graph.nodes[conv[0]].inputs[0], node.outputs[0], [("conv", i, conv[0], ())], [])  # type: ignore[arg-type]
        except NotFusable:
            continue
        taken.update(group.nodes)
        groups.append(group)
    groups.sort(key=lambda g: g.nodes[-1])
    return groups, sorted(declined.values(), key=lambda d: d.node)


def _is_branch_sum(finder: _Finder, i: int) -> bool:
    """Worth reporting as declined: two or more terms of the tree are batch norms of one tensor
    (directly or through their convs), so the sum looks like branches meant to fold; and the
    sum is not itself part of a larger tree (that one is reported instead). A residual add of
    two branches of different tensors is not a near miss."""
    out = finder.g.nodes[i].outputs[0]
    users = finder.users.get(out, [])
    if len(users) == 1 and finder.g.nodes[users[0]].op in _SUMS and out not in finder.outputs:
        return False
    _nodes, terms = finder.sum_tree(i)
    seen: set[str] = set()
    for term in terms:
        bn = finder.made_by(term, ("batch_norm",))
        if bn is None:
            continue
        reads = {finder.g.nodes[bn].inputs[0]}
        conv = finder.made_by(finder.g.nodes[bn].inputs[0], _CONVS)
        if conv is not None:
            source = finder.g.nodes[conv].inputs[0]
            while (step := finder.made_by(source, _INPUT_STEPS)) is not None:
                source = finder.g.nodes[step].inputs[0]
            reads.add(source)
        if seen & reads:  # type: ignore[arg-type]
            return True
        seen |= reads  # type: ignore[arg-type]
    return False
