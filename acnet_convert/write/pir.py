"""Write the deploy Paddle inference model by editing the train-form program in place.

Each fused group's ops (branch convs and their biases, BNs, crops, pads, the sum) are removed
and one conv with bias (`paddle.nn.functional.conv2d`, so Paddle spells it the way its own
Conv2D does: conv2d + reshape + add) reads the group's input and writes where the group's
output went. Every other op stays exactly as the user wrote it. Saving prunes what no longer
feeds an output (dead constants and parameters).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.read.program import Program, static_mode
from acnet_convert.common.quiet import silenced
from acnet_convert.graph.reparam import Folding
from acnet_convert.common.text import one_line


def _value(source: Program, ops: list[Any], name: str, made: dict[str, Any]) -> Any:
    """The PIR value of tensor `name`: the fused conv that now makes it, or the original op's
    result (ops of earlier groups are gone, so their outputs are looked up in `made`)."""
    if name in made:
        return made[name]
    position, index = source.values[name]
    return ops[position].result(index)


def add_parameter(paddle: Any, source: Program, name: str, array: np.ndarray) -> Any:
    """A new parameter of `source.program` holding `array` (in the scope), as a PIR value."""
    # create_parameter must come before set_insertion_point: it resets the insertion point
    value = paddle.pir.core.create_parameter(
        dtype=str(array.dtype), shape=list(array.shape), name=name,
        initializer=paddle.nn.initializer.Constant(0.0), trainable=False,
    )
    source.scope.var(name).get_tensor().set(np.ascontiguousarray(array), paddle.CPUPlace())
    return value


def apply_fusion(source: Program, folding: Folding) -> None:
    """Edit `source.program` in place: every collapse becomes its fused conv, every partial sum
    its adds (node origins are positions in `source.ops`). Kept nodes whose inputs constant
    folding rewired keep their source operands: the program computes the same."""
    import paddle.nn.functional as F

    graph = folding.graph
    ops = source.ops
    block = source.program.global_block()
    made: dict[str, Any] = {}
    with static_mode() as paddle, paddle.static.scope_guard(source.scope), \
            paddle.static.program_guard(source.program, paddle.static.Program()):
        for f in folding.fused:
            c = f.collapse
            weight = add_parameter(paddle, source, f.weight, f.kernel)
            bias = add_parameter(paddle, source, f.bias, f.bias_value)
            root = ops[graph.nodes[max(c.nodes)].origin[0]]
            paddle.pir.set_insertion_point(root)
            top, bottom, left, right = c.conv.padding
            y = F.conv2d(_value(source, ops, c.input, made), weight, bias, stride=list(c.conv.stride),
                         padding=[top, bottom, left, right], dilation=list(c.conv.dilation), groups=c.conv.groups)
            if c.output in source.values:
                _value(source, ops, c.output, made).replace_all_uses_with(y)
            made[c.output] = y
        for add in folding.adds:
            root = ops[source.values[add.output][0]] if add.output in source.values else None
            if root is not None:
                paddle.pir.set_insertion_point(root)
            y = paddle.add(_value(source, ops, add.terms[0], made), _value(source, ops, add.terms[1], made))
            if add.output in source.values:
                _value(source, ops, add.output, made).replace_all_uses_with(y)
            made[add.output] = y
        for i in sorted(folding.removed):  # another BN may read this one's running statistics (the
            if graph.nodes[i].op == "batch_norm":  # reader took them for its parameters): keep it reading them
                bn = ops[graph.nodes[i].origin[0]]
                for k in (1, 2):
                    bn.result(k).replace_all_uses_with(bn.operand_source(k))
        # what no longer feeds an output goes: the collapsed ops, identities, folded constants
        for op in reversed(list(block.ops)):
            if op.name() in _KEPT_OPS or op.num_regions() > 0:
                continue
            if all(op.result(i).use_empty() for i in range(op.num_results())):
                block.remove_op(op)


_KEPT_OPS = frozenset({"builtin.parameter", "pd_op.data", "pd_op.feed", "pd_op.fetch"})


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
