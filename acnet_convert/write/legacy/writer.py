"""The legacy Paddle inference model, `OUT/inference.pdmodel`: the deploy graph translated op by
op into Paddle's pre-PIR operators, for the tools that read only that format (OpenVINO's Paddle
front end, Paddle Lite's `opt`, Paddle 2.x inference, FastDeploy, older paddle2onnx).

`translate` is a straight-line translation, one small handler per graph op (`ops`, the
tf2onnx split): each names the legacy operator and its slots as Paddle's `op_compat.yaml` maps
them, and folds the small constant operands PIR keeps as tensors (kernel sizes, shapes, axes,
scales) back into the attributes the legacy operators have. It is pure Python: an op without a
handler is a `ConvertError` naming it, before anything is written.

`write_legacy_program` builds the translated ops into a legacy `Program` with Paddle's own
`append_op` (which checks every op against its registered proto and fills default attributes)
under `paddle.pir_utils.OldIrGuard`, in this process, and serializes it with
`paddle.static.serialize_program` (which adds the feed and fetch ops and the op version map a
`save_inference_model` under `FLAGS_enable_pir_api=0` writes). No child process, no second
Paddle import: about 0.1 s on ResNet-50.

The parameters are not written again. Both formats store the parameters of a program as
`save_combine` does: every persistable tensor in the order of its sorted name, each a
serialized LoDTensor. The legacy program declares exactly the deploy graph's weights, so it
reads the PIR model's `inference.pdiparams` as it is (checked here by size, and in the tests
byte for byte).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable
from acnet_convert.graph.ir import Graph
from acnet_convert.out.artifacts import Artifacts
from acnet_convert.read.lod_tensor import serialized_size
from acnet_convert.write.legacy.builder import LegacyBuilder, LegacyProgram
from acnet_convert.write.legacy.builder import CONSTANT_OPS
from acnet_convert.write.legacy.ops import HANDLERS, supported_ops
from acnet_convert.write.weights import stored_weights


# ----------------------------------------------------------------------------------------------
# graph -> legacy ops (pure) -> .pdmodel (Paddle)


def translate(graph: Graph) -> LegacyProgram:
    """The legacy operators of `graph`, in order. Constants are made where a run-time operand
    needs them and folded into attributes elsewhere; an op without a handler is refused."""
    missing = sorted({n.op for n in graph.nodes if n.op not in HANDLERS and n.op not in CONSTANT_OPS})
    if missing:
        node = next(n for n in graph.nodes if n.op == missing[0])
        raise ConvertError(f"{printable(node.where())}: op '{printable(node.op)}' has no translation to the legacy "
                           "Paddle format; use --paddle-format pir", listing=("translated ops", supported_ops()))
    b = LegacyBuilder(graph)
    for node in graph.nodes:
        if node.op in CONSTANT_OPS:
            continue  # made on first run-time use (LegacyBuilder.tensor), folded elsewhere
        b.node = node
        HANDLERS[node.op](b, node)
    b.node = None
    fetches = [b.tensor(t) for t in graph.outputs]
    return LegacyProgram(b.ops, b.variables, b.parameters, list(graph.inputs), fetches)


def check_shared_params(program: LegacyProgram, params: Path) -> None:
    """The legacy program reads the PIR model's parameter file as it is: its parameters, in
    sorted order, must be exactly the tensors the file holds. Checked by size (a tensor more,
    less or of another shape changes it)."""
    expected = sum(serialized_size(a) for a in program.parameters.values())
    actual = params.stat().st_size
    if expected != actual:
        raise ConvertError(f"{printable(params)} holds {actual} bytes where the legacy program's "
                           f"{len(program.parameters)} parameters take {expected}: it cannot share them")


def build_program_bytes(program: LegacyProgram, graph: Graph) -> bytes:
    """The serialized legacy ProgramDesc of `program`: Paddle's `append_op` checks each op
    against its registered proto and fills its default attributes; feed and fetch ops are
    added as `save_inference_model` adds them; then what Paddle's own inference export leaves
    out is left out here too (`_strip`)."""
    from acnet_convert.read.program import static_mode
    from acnet_convert.common.quiet import silenced

    with static_mode() as paddle, silenced(), paddle.pir_utils.OldIrGuard():
        main = paddle.static.Program()
        block = main.global_block()
        for name in program.feeds:
            info = graph.tensors[name]
            block.create_var(name=name, shape=list(info.shape), dtype=info.dtype, need_check_feed=True)
        for name, array in sorted(program.parameters.items()):
            block.create_var(name=name, shape=list(array.shape), dtype=str(array.dtype), persistable=True)
        for name, var in program.variables.items():
            if not block.has_var(name):
                kwargs = {"shape": list(var.shape)} if var.shape is not None else {}
                block.create_var(name=name, dtype=var.dtype, **kwargs)
        for op in program.ops:
            try:
                block.append_op(type=op.type, inputs=op.inputs, outputs=op.outputs, attrs=op.attrs)
            except Exception as err:  # noqa: BLE001 - Paddle raises many types for a bad op
                raise ConvertError(f"Paddle refused the legacy op '{printable(op.type)}' writing "
                                   f"{printable(next(iter(op.outputs.values()))[0])}: {one_line(err)}") from None
        # what normalize_program does, less its clone and prune (nothing here is unused)
        paddle.static.io.prepend_feed_ops(main, program.feeds)
        paddle.static.io.append_fetch_ops(main, program.fetches)
        main.desc._set_version()
        return _strip(paddle, main.desc.serialize_to_string())


def _strip(paddle: Any, data: bytes) -> bytes:
    """Drop from every op the attributes Paddle's own legacy export does not write: the Python
    call stack that created it (it would carry this machine's paths) and the "extra"
    attributes of its proto (oneDNN/cuDNN switches), which readers fill in with defaults."""
    from paddle.base import core
    from paddle.base.framework import OpProtoHolder
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    desc.ParseFromString(data)
    holder = OpProtoHolder.instance()
    kept_bookkeeping = {"op_role", "op_role_var", "op_namescope", "op_device"}
    extra: dict[str, set[str]] = {}
    for block in desc.blocks:
        for op in block.ops:
            if op.type not in extra:
                proto_extra = {a.name for a in holder.get_op_proto(op.type).attrs if a.extra}
                extra[op.type] = (proto_extra | set(core.get_op_extra_attrs(op.type)) | {"op_callstack"}) - kept_bookkeeping
            kept = [a for a in op.attrs if a.name not in extra[op.type]]
            del op.attrs[:]
            op.attrs.extend(kept)
    return desc.SerializeToString()


def write_legacy_program(artifacts: Artifacts, graph: Graph) -> Path:
    """Write `artifacts.program("legacy")` (inference.pdmodel), the legacy form of the deploy
    `graph`, which reads the parameters the PIR model's writer already put in
    `artifacts.params`. Nothing is written when an op cannot be translated."""
    graph = stored_weights(graph)
    program = translate(graph)
    check_shared_params(program, artifacts.params)
    data = build_program_bytes(program, graph)
    path = artifacts.program("legacy")
    path.write_bytes(data)
    return path
