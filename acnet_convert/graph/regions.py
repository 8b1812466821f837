"""Affine regions: maximal sets of ops between one input tensor X and one output tensor Y, every
op affine in X (see `affine_ops`), no value inside read by anything outside.

Found by structure alone, in one forward pass repeated to a fixed point:
- each affine op's *base* is the tensor its data operands are affine maps of (the base of their
  producers, or the operand itself where it is a leaf); an op whose data operands have
  different bases is not affine in one tensor: it is demoted, its output is a leaf;
- a tensor *escapes* (ends a region and is a leaf for what reads it) when it is a graph output,
  or something other than an affine op of its own base reads it (a shape read does not count:
  it reads no value), or it lies inside two regions;
- a region's output is an affine op's escaping output; its ops are those between it and its
  base.
A region with one op, or without any conv or pool, stays as written: nothing to fold.
"""
from __future__ import annotations

from dataclasses import dataclass

from acnet_convert.graph.affine_ops import Known, data_operands
from acnet_convert.graph.ir import Graph

# ops that read only the shape of an operand, never its values
SHAPE_READERS = ("shape", "shape64")
# what makes a tensor a function of shapes and constants only (a field a concat may pad with)
_FIELD_OPS = ("shape", "shape64", "slice", "expand", "reshape", "full", "full_like", "full_int_array", "stack",
              "concat", "cast", "scale", "add", "subtract", "multiply", "divide", "assign", "unsqueeze", "squeeze",
              "tile", "assign_value")


@dataclass(frozen=True)
class Region:
    input: str
    output: str
    nodes: tuple[int, ...]  # node indices, in graph order


def fields(graph: Graph) -> set[str]:
    """Tensors computed from constants and the shapes of other tensors only."""
    out: set[str] = set()
    for node in graph.nodes:
        if node.op not in _FIELD_OPS:
            continue
        reads = [t for t in node.tensor_inputs()]
        if node.op in SHAPE_READERS or all(graph.is_parameter(t) or t in graph.constants or t in out for t in reads):
            out.update(node.outputs)
    return out


class _Analysis:
    def __init__(self, graph: Graph, known: Known | None, producer: dict[str, int] | None,
                 readers: dict[str, list[int]] | None) -> None:
        self.g = graph
        self.known = known or Known(graph, fields(graph))
        self.producer = graph.producers() if producer is None else producer
        self.readers = graph.consumers() if readers is None else readers
        self.outputs = set(graph.outputs)
        self.roles = {i: data_operands(n, self.known) for i, n in enumerate(graph.nodes)}
        # every pass below asks for these, node by node: computed once
        self.inputs = {i: self._data_inputs(i) for i, roles in self.roles.items() if roles is not None}
        self.forced_leaves: set[str] = set()

    def data_inputs(self, i: int) -> list[str]:
        return self.inputs.get(i, [])

    def _data_inputs(self, i: int) -> list[str]:
        node = self.g.nodes[i]
        names: list[str] = []
        for k in self.roles[i] or ():
            item = node.inputs[k]
            for t in item if isinstance(item, tuple) else (item,):
                if isinstance(t, str) and not self.known.is_constant(t) and t not in self.known.fields:
                    names.append(t)
        return names

    def run(self) -> list[Region]:
        while True:
            self._bases()
            regions, shared = self._regions()
            if not shared:
                return regions
            self.forced_leaves |= shared

    def _bases(self) -> None:
        """Forward: bases, demotions, escapes, until nothing changes."""
        while True:
            self.base: dict[str, str] = {}
            self.affine: set[int] = set()
            for i, node in enumerate(self.g.nodes):
                if self.roles[i] is None:
                    continue
                bases = {self._base_of(t) for t in self.data_inputs(i)}
                if len(bases) != 1:
                    continue
                self.affine.add(i)
                base = bases.pop()
                self.base[node.outputs[0]] = base
            escaping = {t for t in self.base if self._escapes(t)} - self.forced_leaves
            new = escaping - getattr(self, "leaves", set())
            self.leaves = escaping | self.forced_leaves
            if not new:
                return

    def _base_of(self, tensor: str) -> str:
        if tensor in getattr(self, "leaves", set()) or tensor in self.forced_leaves or tensor not in self.base:
            return tensor
        return self.base[tensor]

    def _escapes(self, tensor: str) -> bool:
        if tensor in self.outputs:
            return True
        readers = self.readers.get(tensor, [])
        if not readers:
            return True
        for r in readers:
            if self.g.nodes[r].op in SHAPE_READERS:
                continue
            if r not in self.affine or tensor not in self.data_inputs(r):
                return True
        return False

    def near_misses(self) -> list[NearMiss]:
        found = []
        for i, node in enumerate(self.g.nodes):
            if node.op not in ("add", "subtract", "add_n") or i in self.affine:
                continue
            operands = node.inputs[0] if node.op == "add_n" else node.inputs[:2]
            seen: dict[str, str] = {}
            for t in operands if isinstance(operands, tuple) else (operands,):
                base, factor = self._scaled_base(t)
                if base is None:
                    continue
                if base in seen and (factor or seen[base]):
                    scaled = factor or seen[base]
                    found.append(NearMiss(i, f"two terms are maps of {base}, but one is multiplied by {scaled}, "
                                             "which is computed from the input, not a constant"))
                    break
                seen[base] = factor
        return found

    def _scaled_base(self, t: object) -> tuple[str | None, str]:
        """(base, "") for an affine map; (base, the factor) for an affine map times a tensor
        that is not constant; (None, "") otherwise."""
        if not isinstance(t, str):
            return None, ""
        if t in self.base or t in self.leaves:
            return self._base_of(t) if t not in self.leaves else self.base.get(t), ""
        k = self.producer.get(t)
        node = self.g.nodes[k] if k is not None else None
        if node is None or node.op not in ("multiply", "divide") or len(node.inputs) != 2:
            return None, ""
        for a, b in ((node.inputs[0], node.inputs[1]), (node.inputs[1], node.inputs[0])):
            if isinstance(a, str) and (a in self.base or a in self.leaves) and not self.known.is_constant(b):
                return (self.base.get(a) if a in self.leaves else self._base_of(a)), str(b)
        return None, ""

    def _regions(self) -> tuple[list[Region], set[str]]:
        owner: dict[int, str] = {}
        shared: set[str] = set()
        regions = []
        for i in sorted(self.affine):
            y = self.g.nodes[i].outputs[0]
            if y not in self.leaves:
                continue
            x = self.base[y]
            members, stack = {i}, [i]
            while stack:
                j = stack.pop()
                for t in self.data_inputs(j):
                    if t == x or t in self.leaves or t not in self.base:
                        continue
                    k = self.producer[t]
                    if k in owner and owner[k] != y:
                        shared.add(t)
                    if k not in members:
                        members.add(k)
                        stack.append(k)
            for k in members:
                owner.setdefault(k, y)
            regions.append(Region(x, y, tuple(sorted(members))))
        return regions, shared


@dataclass(frozen=True)
class NearMiss:
    """A sum that is not affine in one tensor although two of its terms are maps of one."""

    node: int
    reason: str


def find_regions(graph: Graph, known: Known | None = None, producer: dict[str, int] | None = None,
                 readers: dict[str, list[int]] | None = None) -> tuple[list[Region], list[NearMiss]]:
    """Every affine region of `graph` in graph order (regions of one op included), and the sums
    that almost were: two terms are affine maps of one tensor, but another factor is not a
    constant (`y = a(x) + s * b(x)` with `s` computed from the input). `known`, `producer` and
    `readers` (`graph.producers()`, `graph.consumers()`) may be given by a caller that has them."""
    analysis = _Analysis(graph, known, producer, readers)
    regions = analysis.run()
    return regions, analysis.near_misses()
