"""Collapse affine regions into convs, each collapse proven; decompose what does not collapse.

For a region X -> Y: compose its ops into one `Affine` (exact in the interior), refuse it when
the fused conv would cost more multiply-adds than the ops it replaces (a KxK after a KxK makes
a larger kernel), read the conv off it, and prove it: the region as written and the conv,
evaluated in float64 on probes that touch every border and stride phase, must agree to
`proof.TOLERANCE` of scale. A region that fails is decomposed, so that what can fold still
does: along a chain, at the tensors every path passes through (the split that leaves the fewest
ops); at a sum, into the terms that fold together and the terms that do not (each of those
solved alone). What stays says why (`Declined`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from acnet_convert.fold import proof as P
from acnet_convert.fold.affine import Affine, Conv, NotAConv, as_conv, identity
from acnet_convert.graph.affine_ops import Known, apply, cost, is_sum
from acnet_convert.graph.ir import Graph
from acnet_convert.graph.prove import Prover
from acnet_convert.graph.regions import SHAPE_READERS, Region

_FOLDING = ("conv2d", "pool2d")  # ops whose presence makes a region worth collapsing


@dataclass(frozen=True)
class Collapse:
    """One fused conv: it reads `input`, writes `output`, and replaces `nodes`."""

    input: str
    output: str
    nodes: tuple[int, ...]
    conv: Conv
    residual: float
    probes: tuple[tuple[int, int], ...]
    region: str  # the output of the region it came from (the manifest's row groups by it)


@dataclass(frozen=True)
class Add:
    """A new `add` node: what remains of a sum whose terms did not all fold."""

    terms: tuple[str, str]
    output: str


@dataclass(frozen=True)
class Declined:
    node: int  # the node making the output that stays as written
    output: str
    reason: str


@dataclass
class Solution:
    collapses: list[Collapse] = field(default_factory=list)
    adds: list[Add] = field(default_factory=list)
    removed: set[int] = field(default_factory=set)  # nodes replaced (collapsed or rebuilt sums)
    declined: list[Declined] = field(default_factory=list)
    ops_left: int = 0  # ops of the region after the rewrite (what the decomposition minimises)


class _Solver:
    def __init__(self, graph: Graph, known: Known, region: Region, prover: Prover) -> None:
        self.g = graph
        self.prover = prover
        self.known = known
        self.region = region
        self.producer = prover.producer  # computed once per graph, not per region
        self.readers = prover.readers
        self.members = set(region.nodes)

    # -- the sub-regions ----------------------------------------------------------------------

    def between(self, x: str, y: str) -> tuple[int, ...]:
        """The region's nodes on paths from `x` to `y`."""
        up: set[int] = set()
        stack = [self.producer[y]]
        while stack:
            j = stack.pop()
            if j in up or j not in self.members:
                continue
            up.add(j)
            for t in self.g.nodes[j].tensor_inputs():
                if t != x and t in self.producer and self.producer[t] in self.members:
                    stack.append(self.producer[t])
        if x == self.region.input:
            return tuple(sorted(up))
        down = self._descendants(x)
        return tuple(sorted(up & down))

    def _descendants(self, x: str) -> set[int]:
        out: set[int] = set()
        stack = [x]
        while stack:
            t = stack.pop()
            for r in self.readers.get(t, []):
                if r in self.members and r not in out:
                    out.add(r)
                    stack.extend(self.g.nodes[r].outputs)
        return out

    def channels(self, x: str, nodes: tuple[int, ...]) -> int:
        c = self.known.channels(x)
        if c is not None:
            return c
        if x in self.producer:  # a tensor inside the region: the conv or BN making it says
            node = self.g.nodes[self.producer[x]]
            if node.op == "conv2d":
                return int(np.shape(self.known.constant(node.inputs[1]))[0])
        for j in nodes:
            node = self.g.nodes[j]
            if node.op == "conv2d" and node.inputs[0] == x:
                w = np.shape(self.known.constant(node.inputs[1]))
                return int(w[1]) * int(node.attrs.get("groups", 1))
            if node.op == "batch_norm" and node.inputs[0] == x:
                return int(np.size(self.known.constant(node.inputs[1])))
        raise NotAConv(f"the channel count of {x} is not known")

    # -- one collapse --------------------------------------------------------------------------

    def compose(self, x: str, nodes: tuple[int, ...]) -> tuple[Affine, float]:
        """The composite of `nodes` and what they cost (multiply-adds per input pixel)."""
        maps: dict[str, Affine] = {x: identity(self.channels(x, nodes))}
        reads: dict[str, int] = {}
        for j in nodes:
            for t in self.g.nodes[j].tensor_inputs():
                reads[t] = reads.get(t, 0) + 1
        owned = frozenset(t for t, n in reads.items() if n == 1 and t != x)  # maps only one op reads
        spent = 0.0
        for j in nodes:
            node = self.g.nodes[j]
            try:
                a = apply(node, maps, self.known, owned)
            except KeyError as missing:
                raise NotAConv(f"{node.where()} reads {missing} from outside the region") from None
            maps[node.outputs[0]] = a
            spent += cost(node, self.known) / (a.h.stride * a.w.stride)
        return maps[self.g.nodes[nodes[-1]].outputs[0]], spent

    def attempt(self, x: str, y: str, nodes: tuple[int, ...]) -> Collapse:
        """The proven collapse of `nodes` (x -> y), or NotAConv saying why not."""
        a, spent = self.compose(x, nodes)
        self._no_larger(a, spent, nodes)
        conv = as_conv(a)
        self._check_outside_readers(x, y, nodes)
        worst, sizes = self.prover.region(x, y, conv)
        if worst > P.TOLERANCE:
            raise NotAConv(self.prover.border_reason(nodes, worst))
        return Collapse(x, y, nodes, conv, worst, tuple(sizes), self.region.output)

    def _no_larger(self, a: Affine, spent: float, nodes: tuple[int, ...]) -> None:
        """One conv must not be larger than the region's largest kernel, nor cost more
        multiply-adds than the ops it replaces (KxK after KxK makes a (2K-1)x(2K-1) kernel)."""
        kh, kw = a.size
        largest = [self._window(j) for j in nodes if self.g.nodes[j].op in _FOLDING]
        big_h, big_w = max((s[0] for s in largest), default=1), max((s[1] for s in largest), default=1)
        if kh > big_h or kw > big_w:
            raise NotAConv(f"the fused kernel would be {kh}x{kw}, larger than the largest kernel of the region "
                           f"({big_h}x{big_w})")
        fused = float(a.kernel.size) / (a.h.stride * a.w.stride)
        if fused > spent * (1 + 1e-9):
            raise NotAConv(f"one {kh}x{kw} conv would cost more than the ops it replaces "
                           f"({fused:.0f} vs {spent:.0f} multiply-adds per input pixel)")

    def _window(self, j: int) -> tuple[int, int]:
        node = self.g.nodes[j]
        if node.op == "conv2d":
            return tuple(int(d) for d in np.shape(self.known.constant(node.inputs[1]))[2:])  # type: ignore[return-value]
        size = self.known.constant(node.inputs[1]) if len(node.inputs) > 1 else node.attrs.get("kernel_size")
        s = [int(v) for v in np.asarray(size).reshape(-1)]
        return (s[0], s[-1])

    def _check_outside_readers(self, x: str, y: str | None, nodes: tuple[int, ...], allowed: set[int] = set()) -> None:
        """What reads a value inside only for its shape must go with the region, unused."""
        inside = {t for j in nodes for t in self.g.nodes[j].outputs} - {y}
        for t in inside:
            for r in self.readers.get(t, []):
                if r in nodes or r in allowed:
                    continue
                if self.g.nodes[r].op not in SHAPE_READERS or not self._dies_with(r, set(nodes)):
                    raise NotAConv(f"{t} inside the region is also read by {self.g.nodes[r].where()}")

    def _dies_with(self, r: int, nodes: set[int]) -> bool:
        """Whether everything computed from node `r` feeds only `nodes` (so it goes with them)."""
        stack, seen = [r], set()
        while stack:
            j = stack.pop()
            if j in seen:
                continue
            seen.add(j)
            for t in self.g.nodes[j].outputs:
                if t in self.g.outputs:
                    return False
                for k in self.readers.get(t, []):
                    if k not in nodes:
                        stack.append(k)
        return True

    # -- solving --------------------------------------------------------------------------------

    def worth(self, nodes: tuple[int, ...]) -> bool:
        """A region folds when it holds a conv and something to fold into it (a pool with a
        BN, and no conv, stays a pool)."""
        return len(nodes) > 1 and any(self.g.nodes[j].op == "conv2d" for j in nodes)

    def solve(self, x: str, y: str, nodes: tuple[int, ...]) -> Solution:
        if not self.worth(nodes):
            return Solution(ops_left=len(nodes))
        try:
            c = self.attempt(x, y, nodes)
            return Solution([c], [], set(nodes), [], 1)
        except NotAConv as why:
            reason = str(why)
        points = self.dominators(x, y, nodes)
        if points:
            best = self.chain(x, y, nodes, points)
        else:
            best = self.split_sum(x, y, nodes) if is_sum(self.g.nodes[self.producer[y]]) else Solution(ops_left=len(nodes))
        if self._near_miss(nodes, best):
            best.declined.insert(0, Declined(self.producer[y], y, reason))
        return best

    def _near_miss(self, nodes: tuple[int, ...], best: Solution) -> bool:
        """Worth telling the user: the region did not become one conv and something besides
        convs stays (a BN, a sum, a pad, ...), or a sum was split, or KxK convs follow each
        other. A conv, a BN and a 1x1 conv splitting into two convs is no news."""
        left = [j for j in nodes if j not in best.removed]
        if any(self.g.nodes[j].op not in _FOLDING for j in left) or best.adds:
            return True
        spatial = [j for j in nodes if self.g.nodes[j].op in _FOLDING and max(self._window(j)) > 1]
        return len(spatial) > 1 and not any(is_sum(self.g.nodes[j]) for j in nodes)

    def dominators(self, x: str, y: str, nodes: tuple[int, ...]) -> list[str]:
        """Tensors inside that every path from `x` to `y` passes through, in graph order."""
        inside = [self.g.nodes[j].outputs[0] for j in nodes if self.g.nodes[j].outputs[0] != y]
        found = []
        for t in inside:
            # t dominates when y cannot be reached from x without t
            blocked = self.producer[t]
            reach, stack = set(), [x]
            while stack:
                s = stack.pop()
                for r in self.readers.get(s, []):
                    if r in nodes and r != blocked and r not in reach:
                        reach.add(r)
                        stack.extend(self.g.nodes[r].outputs)
            if self.producer[y] not in reach:
                found.append(t)
        return found

    def chain(self, x: str, y: str, nodes: tuple[int, ...], points: list[str]) -> Solution:
        """The split of x -> d1 -> ... -> y that leaves the fewest ops."""
        stops = [x, *points, y]
        best: list[Solution | None] = [Solution()] + [None] * (len(stops) - 1)
        for b in range(1, len(stops)):
            for a in range(b):
                if best[a] is None:
                    continue
                part = self.between(stops[a], stops[b])
                if b == a + 1:
                    piece = self.solve(stops[a], stops[b], part)
                else:
                    try:
                        c = self.attempt(stops[a], stops[b], part) if self.worth(part) else None
                    except NotAConv:
                        c = None
                    if c is None:
                        continue
                    piece = Solution([c], [], set(part), [], 1)
                total = _joined(best[a], piece)  # type: ignore[arg-type]
                if best[b] is None or total.ops_left < best[b].ops_left:  # type: ignore[union-attr]
                    best[b] = total
        return best[-1]  # type: ignore[return-value]

    def split_sum(self, x: str, y: str, nodes: tuple[int, ...]) -> Solution:
        """The terms of the sum at y that fold together, as one conv, plus the others as they
        are (each solved alone), added back."""
        tree, terms = self._sum_tree(y, set(nodes))
        if any(sign != 1.0 for _t, sign in terms) or len(terms) < 2:
            return Solution(ops_left=len(nodes))
        parts = {t: (self.between(x, t) if t != x else ()) for t, _ in terms}
        used = [j for part in parts.values() for j in part]
        if len(used) != len(set(used)):  # terms sharing ops cannot be taken apart
            return Solution(ops_left=len(nodes))
        foldable, rest = [], []
        for t, _ in sorted(terms, key=lambda ts: -self._taps(parts[ts[0]])):
            try:
                self.attempt_terms(x, foldable + [t], tree, parts)
                foldable.append(t)
            except NotAConv:
                rest.append(t)
        if not any(parts[t] for t in foldable):  # nothing folds together: each term alone
            out = Solution(ops_left=len(tree))
            for t, _ in terms:
                out = _joined(out, self.solve(x, t, parts[t]) if parts[t] else Solution())
            return out
        c = self.attempt_terms(x, foldable, tree, parts, y if not rest else f"{y}.fused")
        out = Solution([c], [], set(c.nodes) | set(tree), [], 1)
        for t in rest:
            out = _joined(out, self.solve(x, t, parts[t]) if parts[t] else Solution())
        # the sum, rebuilt over what is left: fused + rest[0] + rest[1] + ...
        left = c.output
        for i, t in enumerate(rest):
            name = y if i == len(rest) - 1 else f"{y}.partial{i}"
            out.adds.append(Add((left, t), name))
            left = name
            out.ops_left += 1
        return out

    def attempt_terms(self, x: str, terms: list[str], tree: list[int], parts: dict[str, tuple[int, ...]],
                      name: str | None = None) -> Collapse:
        """The proven collapse of the sum of `terms` (and the sum's constants)."""
        from acnet_convert.fold.affine import add, scale_shift  # noqa: PLC0415 - local: only sums need it

        maps, spent, nodes = [], 0.0, []
        for t in terms:
            if parts[t]:
                a, s = self.compose(x, parts[t])
                maps.append(a)
                spent += s
                nodes.extend(parts[t])
            else:
                maps.append(identity(self.channels(x, tuple(j for p in parts.values() for j in p))))
        total = maps[0] if len(maps) == 1 else add(maps)
        constant = self._sum_constants(tree)
        if constant is not None:
            total = scale_shift(total, 1.0, constant)
        self._no_larger(total, spent, tuple(nodes))
        conv = as_conv(total)
        out = name or "__trial__"
        self._check_outside_readers(x, None, tuple(nodes), allowed=set(tree))
        worst, sizes = self.prover.terms(x, terms, parts, self._sum_constants(tree), conv)
        if worst > P.TOLERANCE:
            raise NotAConv(self.prover.border_reason(tuple(nodes), worst))
        return Collapse(x, out, tuple(sorted(nodes)), conv, worst, tuple(sizes), self.region.output)

    def _sum_tree(self, y: str, nodes: set[int]) -> tuple[list[int], list[tuple[str, float]]]:
        """The sum nodes at y (inner sums only this tree reads) and its data terms, signed."""
        tree, terms, stack = [], [], [(self.producer[y], 1.0)]
        while stack:
            j, sign = stack.pop()
            tree.append(j)
            node = self.g.nodes[j]
            operands = node.inputs[0] if node.op == "add_n" else node.inputs[:2]
            signs = [1.0] * len(operands) if node.op != "subtract" else [1.0, -1.0]
            for t, s in zip(operands if isinstance(operands, tuple) else (operands,), signs):
                if self.known.is_constant(t):
                    continue
                k = self.producer.get(t)  # type: ignore[arg-type]
                if k is not None and k in nodes and is_sum(self.g.nodes[k]) and len(self.readers.get(t, [])) == 1:
                    stack.append((k, sign * s))
                else:
                    terms.append((t, sign * s))  # type: ignore[arg-type]
        return sorted(tree), terms

    def _sum_constants(self, tree: list[int]) -> np.ndarray | float | None:
        from acnet_convert.graph.affine_ops import per_channel  # noqa: PLC0415

        total: Any = None
        for j in tree:
            node = self.g.nodes[j]
            operands = node.inputs[0] if node.op == "add_n" else node.inputs[:2]
            for k, t in enumerate(operands if isinstance(operands, tuple) else (operands,)):
                if self.known.is_constant(t):
                    c = np.asarray(per_channel(self.known.constant(t), None), np.float64)
                    c = -c if node.op == "subtract" and k == 1 else c
                    total = c if total is None else total + c
        return total

    def _taps(self, part: tuple[int, ...]) -> int:
        return max((int(np.prod(np.shape(self.known.constant(self.g.nodes[j].inputs[1]))[2:]))
                    for j in part if self.g.nodes[j].op == "conv2d"), default=0)


def _joined(a: Solution, b: Solution) -> Solution:
    return Solution(a.collapses + b.collapses, a.adds + b.adds, a.removed | b.removed, a.declined + b.declined,
                    a.ops_left + b.ops_left)


def solve(graph: Graph, known: Known, region: Region, prover: Prover | None = None) -> Solution:
    """How `region` folds: its collapses (each proven), the adds left of partial sums, the
    nodes they replace, and why what stays stays."""
    solver = _Solver(graph, known, region, prover or Prover(graph))
    return solver.solve(region.input, region.output, region.nodes)
