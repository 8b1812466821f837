"""Write the deploy Paddle inference model by editing the train-form program in place: the deploy
graph is applied to the loaded program by difference (the contract in `graph.ir`).

- new weights become new parameters (their values in the scope, in the dtype their tensor info
  says: folded constants are computed in float64);
- new nodes become new ops, created where they run: a conv with bias as
  `paddle.nn.functional.conv2d` spells it (the way Paddle's own Conv2D does: conv2d + reshape
  + add), or `paddle.add`;
- kept nodes keep their op; the operands that now name another tensor are rewired (a vector
  operand through its `builtin.combine`), and the kept ops of an inlined `if` block move to
  where the `if` was;
- the fetches are rewired to the deploy graph's outputs;
- every op no deploy node stands for is removed (an `if` with its blocks); one still read by a
  kept op is a bug in the passes, and fails loudly here rather than as a crash in Paddle.

Every other op stays exactly as the user wrote it. Saving prunes what no longer feeds an output
(dead parameters). PIR values are keyed by (defining op id, result index): Paddle hands out a new
wrapper on every access. The program must stay referenced while its ops are held.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.quiet import silenced
from acnet_convert.common.text import one_line
from acnet_convert.graph.ir import Graph, Input, Node
from acnet_convert.read.program import Program, static_mode
from acnet_convert.write.weights import stored_weights

# source ops that are not nodes of the graph: they stay (saving prunes unused parameters)
_NOT_NODES = frozenset({"builtin.parameter", "pd_op.data", "pd_op.feed", "pd_op.fetch", "cf.yield"})


def add_parameter(paddle: Any, source: Program, name: str, array: np.ndarray) -> Any:
    """A new parameter of `source.program` holding `array` (in the scope), as a PIR value."""
    # create_parameter must come before set_insertion_point: it resets the insertion point
    value = paddle.pir.core.create_parameter(
        dtype=str(array.dtype), shape=list(array.shape), name=name,
        initializer=paddle.nn.initializer.Constant(0.0), trainable=False,
    )
    source.scope.var(name).get_tensor().set(np.asarray(array, order="C"), paddle.CPUPlace())  # 0-d stays 0-d
    return value


def _key(value: Any) -> tuple[int, int] | None:
    if not value.initialized():
        return None
    producer = value.get_defining_op()
    return None if producer is None else (producer.id(), value.index())


def _direct_inputs(node: Node) -> Iterator[str]:
    """The tensors a node itself reads (an `if`'s blocks are walked on their own)."""
    for item in node.inputs:
        if isinstance(item, tuple):
            yield from item
        elif item is not None:
            yield item


def _walk(nodes: Any, kept_ifs: bool = True) -> Iterator[Node]:
    """The nodes and, inside every `if` that stays, the nodes of its blocks."""
    for node in nodes:
        yield node
        if node.op == "if" and kept_ifs:
            for block in node.attrs.get("branches", ()):
                yield from _walk(block.nodes)


class _Edit:
    """One application of a deploy graph to a loaded program (see the module docstring)."""

    def __init__(self, source: Program, deploy: Graph) -> None:
        self.source, self.deploy = source, deploy
        self.ops = source.ops  # positions are the graph's origins; held while editing
        self.position = {op.id(): i for i, op in enumerate(self.ops)}
        self.kept_nodes = [n for n in _walk(deploy.nodes) if n.origin]
        self.kept = {p for n in self.kept_nodes for p in n.origin}
        self.made: dict[str, Any] = {}  # tensor -> the PIR value a new parameter or op gives it

    # -- values ----------------------------------------------------------------------------

    def value(self, name: str) -> Any:
        if name in self.made:
            return self.made[name]
        where = self.source.values.get(name)
        if where is None:
            raise RuntimeError(f"the deploy graph reads tensor {name!r}, which neither the source program nor a "
                               "new node makes")
        return self.ops[where[0]].result(where[1])

    def check_kept(self, node: Node) -> None:
        """A kept node is its source op: same op, and its outputs keep their source names."""
        op = self.ops[node.origin[0]]
        short = op.name().split(".", 1)[-1].rstrip("_")
        if short != node.op and not (node.op == "conv2d" and short == "depthwise_conv2d"):
            raise RuntimeError(f"deploy node {node.op} has origin op #{node.origin[0]}, a {op.name()}")
        for name in node.outputs:
            where = self.source.values.get(name)
            if where is None or where[0] not in node.origin:
                raise RuntimeError(f"kept node {node.where()} writes {name!r}, not a tensor of its source op: "
                                   "a kept node keeps its output names (rename the readers instead)")

    # -- the edit, step by step -------------------------------------------------------------

    def check(self) -> None:
        """Before anything is edited (a half-edited program can crash Paddle when it is freed):
        kept nodes are their source ops, and every tensor a node or output reads is made before
        it by a new node, a new weight or a source op that stays."""
        for node in self.kept_nodes:
            self.check_kept(node)
        defined = set(self.deploy.inputs) | set(self.deploy.weights)
        self.check_order(self.deploy.nodes, defined)
        for name in self.deploy.outputs:
            self.check_read("the deploy graph's outputs", name, defined)

    def check_order(self, nodes: Any, defined: set[str]) -> None:
        """Each node reads only what is made before it (kept nodes keep their order; a new node
        sits between what it reads and what reads it)."""
        for node in nodes:
            for name in _direct_inputs(node):
                self.check_read(node.where(), name, defined)
            if node.op == "if" and node.origin:
                for block in node.attrs.get("branches", ()):
                    self.check_order(block.nodes, set(defined))
            defined.update(node.outputs)

    def check_read(self, where: str, name: str, defined: set[str]) -> None:
        made_by = self.source.values.get(name)
        op = self.ops[made_by[0]] if made_by else None
        if name in defined or (op is not None and op.name() in ("builtin.parameter", "pd_op.data", "pd_op.feed")):
            return
        if op is None:
            raise RuntimeError(f"{where} reads {name!r}, which neither the source program nor a new node makes")
        if made_by[0] not in self.kept:  # type: ignore[index]
            raise RuntimeError(f"{where} reads {name!r}, made by op #{made_by[0]} {op.name()}, which the deploy "  # type: ignore[index]
                               "graph removes")
        raise RuntimeError(f"{where} reads {name!r} before the node that makes it: the deploy graph is out of order")

    def add_parameters(self, paddle: Any) -> None:
        """Weights the source does not hold (or holds with other values) become parameters."""
        held = self.source.arrays or {}
        for name, array in stored_weights(self.deploy).weights.items():
            if held.get(name) is self.deploy.weights[name] and name in self.source.values:
                continue
            self.made[name] = add_parameter(paddle, self.source, name, array)

    def inline(self) -> None:
        """Kept ops inside the blocks of an `if` that goes move to just before it (before the
        outermost such `if`), in the deploy graph's order."""
        for node in self.deploy.nodes:
            if not node.origin:
                continue
            anchor = self.anchor(self.ops[node.origin[0]])
            if anchor is None:
                continue
            for p in sorted(node.origin):
                self.ops[p].move_before(anchor)

    def anchor(self, op: Any) -> Any:
        """The outermost removed `if` around `op`, or None when `op` sits where it will run."""
        anchor = None
        parent = op.get_parent_block().parent_op
        while parent.name() != "builtin.module":
            if self.position[parent.id()] in self.kept:
                break
            anchor = parent
            parent = parent.get_parent_block().parent_op
        return anchor

    def create(self, paddle: Any) -> None:
        """New nodes, each inserted before the first op of the next kept node (or before the
        fetches), so that it runs after what it reads and before what reads it."""
        nodes = self.deploy.nodes
        block = self.source.program.global_block()
        fetches = [op for op in block.ops if op.name() == "pd_op.fetch"]
        following: Any = fetches[0] if fetches else None
        anchors: list[Any] = [None] * len(nodes)
        for i in range(len(nodes) - 1, -1, -1):
            anchors[i] = following
            if nodes[i].origin:
                following = self.ops[min(nodes[i].origin)]
        for i, node in enumerate(nodes):
            if node.origin:
                continue
            if anchors[i] is None:
                paddle.pir.set_insertion_point_to_block_end(block)
            else:
                paddle.pir.set_insertion_point(anchors[i])
            self.made[node.output] = self.new_op(paddle, node)
        for node in _walk(nodes):
            if node.op == "if" and any(not n.origin for b in node.attrs.get("branches", ()) for n in _walk(b.nodes)):
                raise RuntimeError(f"{node.where()}: new nodes inside a kept `if` block are not supported")

    def new_op(self, paddle: Any, node: Node) -> Any:
        import paddle.nn.functional as F

        a = node.attrs
        if node.op == "add" and len(node.inputs) == 2:
            return paddle.add(self.value(node.inputs[0]), self.value(node.inputs[1]))  # type: ignore[arg-type]
        if node.op == "conv2d" and a.get("padding_algorithm", "EXPLICIT") == "EXPLICIT" and len(a["paddings"]) == 4:
            x, weight = self.value(node.inputs[0]), self.value(node.inputs[1])  # type: ignore[arg-type]
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            top, bottom, left, right = (int(p) for p in a["paddings"])
            return F.conv2d(x, weight, None if bias is None else self.value(bias), stride=list(a["strides"]),  # type: ignore[arg-type]
                            padding=[top, bottom, left, right], dilation=list(a["dilations"]),
                            groups=int(a["groups"]), data_format=a.get("data_format", "NCHW"))
        raise RuntimeError(f"the deploy graph asks for a new {node.op} op ({dict(a)}); the Paddle writer creates "
                           "conv2d (x, weight, bias) with 4-sided explicit paddings and add")

    def rewire(self) -> None:
        """Every operand of a kept op that does not hold the value its node names now does."""
        for node in self.kept_nodes:
            op = self.ops[node.origin[0]]
            for i, item in enumerate(node.inputs):
                if i < op.num_operands():
                    self.set_operand(op, i, item)
                elif node.op == "conv2d" and i == 2 and self.bias_reshape(node) is not None:
                    # a conv whose bias add was merged (read_graph): the bias is the reshape's operand
                    self.set_operand(self.bias_reshape(node), 0, item)
                else:
                    raise RuntimeError(f"{node.where()}: input {i} has no operand to rewire")
        fetches = [op for op in self.source.program.global_block().ops if op.name() == "pd_op.fetch"]
        if len(fetches) != len(self.deploy.outputs):
            raise RuntimeError(f"the deploy graph has {len(self.deploy.outputs)} outputs, the program {len(fetches)} fetches")
        for fetch, name in zip(fetches, self.deploy.outputs):
            self.set_operand(fetch, 0, name)

    def bias_reshape(self, node: Node) -> Any:
        return next((self.ops[p] for p in node.origin[2:] if self.ops[p].name() in ("pd_op.reshape", "pd_op.reshape_")), None)

    def set_operand(self, op: Any, index: int, item: Input) -> None:
        current = op.operand_source(index)
        if item is None:
            if current.initialized():
                raise RuntimeError(f"{op.name()}: operand {index} is absent in the deploy graph")
            return
        if isinstance(item, tuple):
            combine = current.get_defining_op() if current.initialized() else None
            if combine is None or combine.name() != "builtin.combine" or combine.num_operands() != len(item):
                raise RuntimeError(f"{op.name()}: vector operand {index} cannot become {len(item)} tensors")
            for j, name in enumerate(item):
                self.set_operand(combine, j, name)
            return
        value = self.value(item)
        if _key(current) != _key(value):
            op.operand(index).set_source(value)

    def remove(self) -> None:
        """Remove, last first, every op no deploy node stands for; an `if` goes with its blocks."""
        block_of_removed_if: set[int] = set()
        for p, op in enumerate(self.ops):
            if op.name() == "pd_op.if" and p not in self.kept:
                for sub in self.inside(op):
                    block_of_removed_if.add(self.position[sub.id()])
        doomed = [p for p, op in enumerate(self.ops)
                  if p not in self.kept and p not in block_of_removed_if and op.name() not in _NOT_NODES]
        for p in sorted(doomed, reverse=True):
            op = self.ops[p]
            inner = {o.id() for o in self.inside(op)} | {op.id()}
            for sub in [op, *self.inside(op)]:
                for r in range(sub.num_results()):
                    readers = [u for u in sub.result(r).all_used_ops() if u.id() not in inner]
                    if readers:
                        raise RuntimeError(f"op #{p} {op.name()} is no deploy node's, but {readers[0].name()} still "
                                           f"reads {'it' if sub is op else 'a value of its blocks'}")
            op.get_parent_block().remove_op(op)

    def inside(self, op: Any) -> list[Any]:
        """The ops (still) in `op`'s blocks, nested ones included."""
        found = []
        for block in op.blocks() if op.num_regions() else ():
            for sub in block.ops:
                found.append(sub)
                found.extend(self.inside(sub))
        return found


def apply_deploy_graph(source: Program, deploy: Graph) -> None:
    """Edit `source.program` in place into the deploy model `deploy` describes (the contract in
    `graph.ir`): `deploy` derives from the graph read from `source`, whose node origins are
    positions in `source.ops`."""
    edit = _Edit(source, deploy)
    edit.check()
    with static_mode() as paddle, paddle.static.scope_guard(source.scope), \
            paddle.static.program_guard(source.program, paddle.static.Program()):
        edit.add_parameters(paddle)  # first: create_parameter resets the insertion point
        edit.inline()
        edit.create(paddle)
        edit.rewire()
        edit.remove()


def save_program(source: Program, prefix: Path) -> Path:
    """Save `source.program` (with its parameters) as PREFIX.json + PREFIX.pdiparams."""
    with static_mode() as paddle, paddle.static.scope_guard(source.scope):
        source.fill_scope()
        block = source.program.global_block()
        feeds = [op.result(0) for op in block.ops if op.name() in ("pd_op.data", "pd_op.feed")]
        fetches = [op.operand_source(0) for op in block.ops if op.name() == "pd_op.fetch"]
        try:
            with silenced():
                paddle.static.save_inference_model(
                    str(prefix), feeds, fetches, paddle.static.Executor(paddle.CPUPlace()), program=source.program
                )
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - Paddle raises many types
            raise ConvertError(f"Paddle could not save the deploy model: {one_line(err)}") from None
    return Path(f"{prefix}.json")
