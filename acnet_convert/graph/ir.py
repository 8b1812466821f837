"""The network as one graph of ops: what fusion, both writers, verify and inspect read.

A `Graph` is a list of `Node`s in execution order. Tensors are named by strings: a parameter by
its parameter name (its array is in `Graph.weights`), a graph input by its feed name, every
other tensor by the op that makes it. A node's `op` is Paddle's op name without the dialect
and without the in-place suffix (`pd_op.batch_norm_` -> `batch_norm`), and its operands keep
Paddle's order; `depthwise_conv2d` is `conv2d` (its groups say which). A conv whose bias add
was recognised reads `(x, weight, bias)`.

Inputs of a node are a tensor name, `None` for an absent optional operand (BN without affine
parameters, dropout's seed), or a tuple of names for a vector operand (concat's inputs,
add_n's terms). Small constants made by ops (`full`, `full_int_array`, `assign_value`) keep
their node and also have their value in `Graph.constants`, so a translator can read a pool's
kernel size or a reshape's shape without following the graph.

`origin` records the positions, in the source's op list (`Program.ops` for a Paddle program:
the main block's ops, then the ops of sub-blocks in the order they are met; node indices for an
ONNX model), of the ops a node stands for: that is how a writer that edits the source finds
what to edit, and how messages say where a node sits.

Control flow: a `pd_op.if` is a node `if` reading its condition, writing its results, with
`attrs["branches"]` = (true `Block`, false `Block`); each block's nodes have their own origins
and its `yields` name what the block returns. Constant folding inlines the taken block when
the condition is a constant; no other pass sees an `if`.

The source graph and the deploy graph. A reader makes the *source graph*: every node has an
origin. The passes (constant folding, identity removal, region collapse) make the *deploy
graph*, which a writer applies to the source by difference:
- a node whose origin is a source node's is that source op, kept: same op and attributes, but
  its inputs may name other tensors (the writer rewires its operands); its outputs keep their
  source names (to make another tensor stand for one, rename its readers, not its writer);
- a node with an empty origin is new (the writer creates it): a `conv2d` reading
  `(x, weight, bias)` with explicit 4-sided `paddings`, or an `add` of two tensors;
- a weight the source graph does not have (or has with another array) is a new parameter (its
  array is in `weights`, stored in the dtype `tensors` gives it: float64 results of constant
  folding are cast by the writers, `write.weights`);
- source ops that no deploy node stands for are removed; the outputs may name other tensors;
- kept nodes keep their relative order; kept nodes of an inlined block run where the `if` was;
  every node reads only what feeds, weights or nodes before it make (the Paddle writer checks
  all of this before it edits anything, and creates a new node just before the next kept one).

Pure Python and numpy: nothing here imports Paddle or ONNX.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Union

import numpy as np

Input = Union[str, tuple[str, ...], None]


@dataclass(frozen=True)
class TensorInfo:
    """Static shape (-1 where unknown) and dtype name ("float32", "int64", ...)."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class Block:
    """A sub-block of control flow: its nodes, and the tensors it yields (one per result)."""

    nodes: tuple["Node", ...]
    yields: tuple[str, ...]

    def reads(self) -> Iterator[str]:
        """The tensors from outside the block that it reads (its nodes' and nested blocks'
        inputs, and what it yields, less what its own nodes write)."""
        made: set[str] = set()
        for node in self.nodes:
            for name in node.tensor_inputs():
                if name not in made:
                    yield name
            made.update(node.outputs)
        for name in self.yields:
            if name not in made:
                yield name


@dataclass(frozen=True)
class Node:
    op: str
    inputs: tuple[Input, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    origin: tuple[int, ...] = ()

    def tensor_inputs(self) -> Iterator[str]:
        """Every tensor name this node reads, vector operands flattened, absent ones skipped;
        an `if` also reads what its blocks read from outside them."""
        for item in self.inputs:
            if item is None:
                continue
            if isinstance(item, tuple):
                yield from item
            else:
                yield item
        if self.op == "if":
            for block in self.attrs.get("branches", ()):
                yield from block.reads()

    @property
    def output(self) -> str:
        return self.outputs[0]

    def where(self) -> str:
        """Where the node sits, for messages: its op and its position in the source program."""
        if not self.origin:
            return self.op
        return f"{self.op} (op #{self.origin[0]} of the program)"


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[str]  # feed tensors, in feed order
    outputs: list[str]  # fetched tensors, in fetch order
    tensors: dict[str, TensorInfo]  # every tensor whose shape is known
    weights: dict[str, np.ndarray]  # parameter name -> array
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # values of constant ops
    output_names: list[str] = field(default_factory=list)  # the program's names for the outputs

    def producers(self) -> dict[str, int]:
        """Tensor name -> index of the node that writes it."""
        return {name: i for i, node in enumerate(self.nodes) for name in node.outputs}

    def consumers(self) -> dict[str, list[int]]:
        """Tensor name -> indices of the nodes that read it (a node reading twice counts twice).
        Graph outputs are not nodes: check `outputs` too before calling a tensor unused."""
        users: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.tensor_inputs():
                users.setdefault(name, []).append(i)
        return users

    def is_parameter(self, name: str | None) -> bool:
        return name is not None and name in self.weights

    def constant(self, name: Input) -> np.ndarray | None:
        """The value of a constant tensor, or None when it is computed at run time."""
        if not isinstance(name, str):
            return None
        return self.constants.get(name)

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def pruned(self) -> "Graph":
        """The graph without nodes whose outputs nothing reads (constants orphaned by a
        rewrite), removed until none is left."""
        nodes = list(self.nodes)
        while True:
            used = set(self.outputs)
            for node in nodes:
                used.update(node.tensor_inputs())
            kept = [n for n in nodes if any(o in used for o in n.outputs)]
            if len(kept) == len(nodes):
                break
            nodes = kept
        if len(nodes) == len(self.nodes):
            return self
        return replace(self, nodes=nodes)


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... whichever is free first; reserved in `taken`."""
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name
