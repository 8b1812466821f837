"""The Paddle writer applies a deploy graph to the user's program by difference (graph.ir's
contract), and the program reader reads control flow: checked against the user's own dygraph
models (fixtures/rep_blocks.py: PP-YOLOE+ alpha with its `if`, RepViT, DBB, PP-LCNetV3, dilated
ACBs and an ASPP head, the negatives), exported in both formats, fused, and run by Paddle (and
the legacy and ONNX deploy models by their runtimes)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from acnet_convert.commands.fuse import fuse
from acnet_convert.common.errors import ConvertError
from acnet_convert.graph.ir import Block, Graph, Node, TensorInfo
from acnet_convert.graph.reparam import deploy_graph, fold_graph
from acnet_convert.read.program import load_program, program_files
from acnet_convert.read.program_reader import read_graph
from acnet_convert.write.legacy.writer import build_program_bytes, translate
from acnet_convert.write.pir import apply_deploy_graph, save_program
from fixtures.rep_blocks import MODELS
from tests.predict import paddle_predict

FORMATS = ("pir", "legacy")
ALPHA = "ppyoloe_repvgg_alpha"


def images_for(name: str, n: int = 2, seed: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *MODELS[name].input_shape)).astype(np.float32)


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return got.shape == want.shape and float(np.abs(got - want).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))


def run_paddle(program: Path, params: Path, images: np.ndarray) -> np.ndarray:
    # oneDNN off: Paddle 3.3.1's oneDNN rejects PIR interpolate ops (PaddlePaddle/Paddle#79749)
    return paddle_predict(program, params, images, ir_optim=False, onednn=False)[0][0]


def op_counts(prefix: Path) -> dict[str, int]:
    return read_graph(load_program(*program_files(prefix))).op_counts()


# ----------------------------------------------------------------------------------------------
# every fixture, fused as a user would, equal to the dygraph model in every format written


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_deploy_models_compute_the_users_model(rep_models, rep_reference, tmp_path, name: str, fmt: str) -> None:
    out = tmp_path / "out"
    result = fuse(rep_models(name, fmt), out, onnx=True)  # auto: the legacy model too where it can be
    assert "if" not in result.manifest.ops["deploy"]
    images = images_for(name)
    want = rep_reference(name, images)
    assert close(run_paddle(out / "inference.json", out / "inference.pdiparams", images), want), "PIR"
    assert result.manifest.formats == ("pir", "legacy"), result.warnings
    assert result.manifest.onnx_input == ("N", *MODELS[name].input_shape)  # exported at a fixed size
    assert close(run_paddle(out / "inference.pdmodel", out / "inference.pdiparams", images), want), "legacy"
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert close(session.run(None, {"image": images})[0], want), "ONNX"


@pytest.mark.parametrize("name, dilations", [("dilated_acb", {2, 4}), ("aspp_acb", {2, 4, 6})])
def test_dilated_groups_are_fused_with_their_dilation(rep_models, tmp_path, name: str, dilations: set) -> None:
    """The dilated fixtures really fuse dilated branch sums (so a writer dropping the dilation is
    caught by the test above), and the deploy programs keep every dilation."""
    out = tmp_path / "out"
    fuse(rep_models(name), out)
    manifest = json.loads((out / "manifest.json").read_text())
    fused = {row["dilation"][0] for row in manifest["fused"] if row["kind"] == "sum"}
    assert dilations <= fused
    graph = read_graph(load_program(*program_files(out / "inference")))
    assert dilations <= {n.attrs["dilations"][0] for n in graph.nodes if n.op == "conv2d"}


# ----------------------------------------------------------------------------------------------
# control flow: read, and inlined by hand as constant folding will


def resolve_ifs(graph: Graph) -> Graph:
    """The test's own resolution of the `if`s on a parameter (what constant folding does): the
    taken block's nodes replace the `if`, readers of its results read what the block yields;
    the legacy form's select_input picks its input the same way."""
    values: dict[str, np.ndarray] = {}
    rename: dict[str, str] = {}

    def r(item):
        if isinstance(item, tuple):
            return tuple(r(t) for t in item)
        return rename.get(item, item) if isinstance(item, str) else item

    nodes = []
    for node in graph.nodes:
        inputs = r(node.inputs)
        first = inputs[0] if inputs else None
        known = graph.weights.get(first, values.get(first)) if isinstance(first, str) else None
        if node.op == "cast" and known is not None:
            values[node.output] = np.asarray(known).astype(node.attrs["dtype"])
        elif node.op == "logical_not" and known is not None:
            values[node.output] = np.logical_not(known)
        elif node.op == "if":
            taken = node.attrs["branches"][0 if values[inputs[0]].all() else 1]
            nodes += [replace(inner, inputs=r(inner.inputs)) for inner in taken.nodes]
            rename.update({out: r(y) for out, y in zip(node.outputs, taken.yields)})
        elif node.op == "select_input":
            rename[node.output] = inputs[1 + int(values[inputs[0]].reshape(-1)[0])]
        else:
            nodes.append(replace(node, inputs=inputs))
    return replace(graph, nodes=nodes, outputs=[r(o) for o in graph.outputs]).pruned()


def inlined_and_fused(program) -> Graph:
    """The alpha model's deploy graph made by hand: its `if`s resolved (`resolve_ifs`), then
    every conv+BN fused, the new weights float64 as constant folding computes them."""
    inlined = resolve_ifs(read_graph(program))
    assert not {"if", "select_input", "cast", "logical_not"} & set(inlined.op_counts())
    folding = fold_graph(inlined)
    fused = folding.fused
    deploy = deploy_graph(folding)
    as_folded = {f.weight: f.kernel.astype(np.float64) for f in fused} | {f.bias: f.bias_value.astype(np.float64) for f in fused}
    assert deploy.tensors[fused[0].weight].dtype == "float32"
    return replace(deploy, weights={**deploy.weights, **as_folded})


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_alpha_models_ifs_are_read_with_their_blocks(rep_models, fmt: str) -> None:
    program = load_program(*program_files(rep_models(ALPHA, fmt)))
    graph = read_graph(program)
    ifs = [n for n in graph.nodes if n.op == "if"]
    assert len(ifs) == (2 if fmt == "pir" else 4)  # legacy: a conditional_block per branch
    main = len(list(program.program.global_block().ops))
    ops = program.ops
    for node in ifs:
        assert ops[node.origin[0]].name() == "pd_op.if" and node.origin[0] < main
        true, false = node.attrs["branches"]
        assert isinstance(true, Block) and len(true.yields) == len(node.outputs) == len(false.yields)
        for inner in true.nodes + false.nodes:  # sub-block ops come after the main block's
            assert min(inner.origin) >= main and ops[inner.origin[0]].name().split(".")[1].rstrip("_") == inner.op
        # the `if` reads what its blocks read from outside: the conv input, weights, alpha
        reads = set(node.tensor_inputs())
        assert node.inputs[0] in reads and any(graph.is_parameter(t) for t in reads)
        assert not reads & {o for n in true.nodes for o in n.outputs}
    assert sorted(n.op for n in ifs[0].attrs["branches"][0].nodes if n.op in ("conv2d", "batch_norm")) == \
        ["batch_norm"] * 2 + ["conv2d"] * 2
    # pruning keeps what only a block reads (the RepVggBlock's input is read inside the ifs only)
    assert graph.pruned() is graph


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_inlined_if_runs_where_the_if_was(rep_models, rep_reference, tmp_path, fmt: str) -> None:
    """A deploy graph made by hand from the source graph: each `if` replaced by its true
    block's nodes, then every conv+BN of the result fused into new convs whose weights are
    float64 (as constant folding computes them). Written by difference into the user's
    program, it runs in paddle.inference equal to the dygraph model, with no `if` left."""
    program = load_program(*program_files(rep_models(ALPHA, fmt)))
    deploy = inlined_and_fused(program)
    apply_deploy_graph(program, deploy)
    save_program(program, tmp_path / "inference")
    images = images_for(ALPHA)
    want = rep_reference(ALPHA, images)
    assert close(run_paddle(tmp_path / "inference.json", tmp_path / "inference.pdiparams", images), want)
    written = load_program(*program_files(tmp_path / "inference"))
    counts = read_graph(written).op_counts()
    # stem, and per BasicBlock its conv and its RepVggBlock (alpha folded in), the plain RepVggBlock
    assert "if" not in counts and "batch_norm" not in counts and "multiply" not in counts and counts["conv2d"] == 6
    assert {str(op.result(0).dtype) for op in written.ops if op.name() == "builtin.parameter"} == {"paddle.float32"}
    # the legacy writer takes the same deploy graph
    legacy = translate(deploy)
    (tmp_path / "inference.pdmodel").write_bytes(build_program_bytes(legacy, deploy))
    assert close(run_paddle(tmp_path / "inference.pdmodel", tmp_path / "inference.pdiparams", images), want)


def test_a_deploy_graph_that_leaves_a_kept_op_reading_a_removed_one_fails_loudly(rep_models, tmp_path) -> None:
    """The writer's own check: inlining the block's nodes but forgetting one they read is a bug
    in the passes (exit 4), not a segfault or a silently broken program."""
    program = load_program(*program_files(rep_models(ALPHA)))
    inlined = resolve_ifs(read_graph(program))
    first_bn = next(i for i, n in enumerate(inlined.nodes) if n.op == "batch_norm" and min(n.origin) > 60)
    broken = replace(inlined, nodes=inlined.nodes[:first_bn] + inlined.nodes[first_bn + 1:])
    with pytest.raises(RuntimeError, match=r"add \(op #\d+ of the program\) reads 'batch_norm_\d+.0', made by op #\d+ "
                                           r"pd_op.batch_norm_, which the deploy graph removes"):
        apply_deploy_graph(program, broken)


def test_a_kept_node_must_keep_its_output_names(rep_models) -> None:
    program = load_program(*program_files(rep_models("dilated_acb")))
    graph = read_graph(program)
    renamed = replace(graph.nodes[-1], outputs=("elsewhere",))
    deploy = replace(graph, nodes=graph.nodes[:-1] + [renamed], outputs=["elsewhere"])
    with pytest.raises(RuntimeError, match="keeps its output names"):
        apply_deploy_graph(program, deploy)


def test_a_loop_is_refused_in_one_line(tmp_path) -> None:
    import paddle

    paddle.enable_static()
    try:
        main, startup = paddle.static.Program(), paddle.static.Program()
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("image", [-1, 3], "float32")
            w = paddle.static.create_parameter([3], "float32", name="w")
            i = paddle.full([1], 0, "int64")
            _, y = paddle.static.nn.while_loop(lambda i, v: i < 3, lambda i, v: [i + 1, v * w], [i, x])
            exe = paddle.static.Executor(paddle.CPUPlace())
            exe.run(startup)
            paddle.static.save_inference_model(str(tmp_path / "loop"), [x], [y], exe, program=main)
    finally:
        paddle.disable_static()
    program = load_program(*program_files(tmp_path / "loop"))
    with pytest.raises(ConvertError, match=r"op #\d+ pd_op.while is a loop: control flow other than `if`") as caught:
        read_graph(program)
    assert "\n" not in str(caught.value) and "loop.json" in str(caught.value)


def test_if_reads_and_pruning_on_a_tiny_graph() -> None:
    """An `if` reads what its blocks read from outside (not what they make themselves), so the
    producers of those stay when the graph is pruned."""
    true = Block((Node("relu", ("x",), ("t",)), Node("add", ("t", "w"), ("u",))), ("u",))
    false = Block((), ("y",))
    graph = Graph(
        [Node("abs", ("image",), ("x",)), Node("exp", ("image",), ("y",)), Node("exp", ("image",), ("dead",)),
         Node("if", ("c",), ("z",), {"branches": (true, false)})],
        ["image", "c"], ["z"], {"image": TensorInfo((-1, 3), "float32")}, {"w": np.ones(3, np.float32)},
    )
    node = graph.nodes[-1]
    assert list(node.tensor_inputs()) == ["c", "x", "w", "y"]
    assert graph.consumers()["x"] == [3] and "t" not in graph.consumers()
    assert [n.outputs for n in graph.pruned().nodes] == [("x",), ("y",), ("z",)]


# ----------------------------------------------------------------------------------------------
# verify runs a train model paddle.inference cannot load


def test_the_train_runner_falls_back_to_the_executor(rep_models, rep_reference) -> None:
    from acnet_convert.verify.device import resolve_device
    from acnet_convert.verify.runners import paddle_predictor, train_runner

    prefix = rep_models(ALPHA)  # PIR, with its pd_op.if: paddle.inference refuses it
    files = (prefix.with_suffix(".json"), prefix.with_suffix(".pdiparams"))
    cpu = resolve_device("cpu", onnx=False)
    with pytest.raises(ConvertError, match="regions"):
        paddle_predictor("train", *files, cpu, as_written=True)
    runner = train_runner(files, cpu, files[0])
    images = images_for(ALPHA)
    assert close(runner(images)[0], rep_reference(ALPHA, images))
    assert len(runner.notes) == 1 and "static Executor" in runner.notes[0] and "regions" in runner.notes[0]
    runner.close()


@pytest.mark.parametrize("broken", [False, True])
def test_verify_runs_the_alpha_train_model(rep_models, tmp_path, broken: bool) -> None:
    """verify on an OUT whose deploy model is the hand-inlined one: the train model (with its
    `if`) runs under the Executor, says so, and matches; a wrong fused bias does not."""
    from acnet_convert.commands.verify import verify
    from acnet_convert.out.artifacts import Artifacts
    from acnet_convert.write.weights import stored_weights

    source, out = rep_models(ALPHA), tmp_path / "out"
    fuse(source, out, paddle_format="pir")
    program = load_program(*program_files(source))
    deploy = inlined_and_fused(program)
    if broken:
        bias = next(name for name in deploy.weights if name.endswith(".b_0") and name not in program.arrays)
        deploy = replace(deploy, weights={**deploy.weights, bias: deploy.weights[bias] + 0.5})
    apply_deploy_graph(program, deploy)
    save_program(program, out / "inference")
    Artifacts(out).write_deploy_weights(stored_weights(deploy).weights)
    report = verify(out, batch_size=2, batches=1, device="cpu")
    assert any("static Executor" in note for note in report.notes)
    assert report.ok is not broken, report.format_table()


def test_vector_operands_fetches_and_new_adds_are_rewired(tmp_path) -> None:
    """A deploy graph that feeds a concat other tensors (through its builtin.combine), adds a
    new `add` node and fetches other tensors, in another order: the program computes what the
    deploy graph says (numpy). A kept op reading a name no one makes, or made after it, is
    refused up front."""
    import paddle

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.w = self.create_parameter([2, 1, 1], default_initializer=paddle.nn.initializer.Constant(-1.5))

        def forward(self, image):
            x = image * self.w
            return paddle.concat([paddle.nn.functional.relu(x), x], axis=1), paddle.abs(x)

    paddle.jit.save(Net(), str(tmp_path / "src" / "inference"),
                    input_spec=[paddle.static.InputSpec([None, 2, 3, 3], "float32", "image")])
    program = load_program(*program_files(tmp_path / "src" / "inference"))
    graph = read_graph(program)
    relu, abs_, scaled = (next(n.output for n in graph.nodes if n.op == op) for op in ("relu", "abs", "multiply"))
    concat = next(n for n in graph.nodes if n.op == "concat")
    rewired = replace(concat, inputs=((scaled, relu), *concat.inputs[1:]))
    total = Node("add", (relu, abs_), ("total",), {})
    nodes = [rewired if n is concat else n for n in graph.nodes] + [total]
    deploy = replace(graph, nodes=nodes, outputs=["total", concat.output])
    apply_deploy_graph(program, deploy)
    save_program(program, tmp_path / "inference")
    x = np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32)
    got = paddle_predict(tmp_path / "inference.json", tmp_path / "inference.pdiparams", x, ir_optim=False)[0]
    relu_x, abs_x = np.maximum(-1.5 * x, 0), np.abs(-1.5 * x)
    np.testing.assert_array_equal(got[0], relu_x + abs_x)
    np.testing.assert_array_equal(got[1], np.concatenate([-1.5 * x, relu_x], axis=1))

    program = load_program(*program_files(tmp_path / "src" / "inference"))
    graph = read_graph(program)
    concat = next(n for n in graph.nodes if n.op == "concat")
    for read, error in (("nowhere", "reads 'nowhere', which neither"), (abs_, "before the node that makes it")):
        ghost = replace(concat, inputs=((relu, read), *concat.inputs[1:]))
        with pytest.raises(RuntimeError, match=error):
            apply_deploy_graph(program, replace(graph, nodes=[ghost if n is concat else n for n in graph.nodes]))


@pytest.mark.parametrize("writer", ["onnx", "legacy"])
def test_a_select_input_picking_the_wrong_input_is_caught(rep_models, rep_reference, tmp_path, monkeypatch,
                                                           writer: str) -> None:
    """The legacy alpha model's `if`s leave select_input (mask = cast(alpha)) in the deploy graph:
    translated picking by the mask, both formats equal the model (above); picking the other
    input (the false branch's zeros) is caught."""
    from acnet_convert.write.legacy import ops as legacy_ops
    from acnet_convert.write.onnx import ops as onnx_ops

    if writer == "onnx":
        monkeypatch.setitem(onnx_ops.HANDLERS, "select_input",
                            lambda ctx, node: ctx.alias(node.output, ctx.tensor(node.inputs[1])))
    else:
        monkeypatch.setitem(legacy_ops.HANDLERS, "select_input", lambda b, node: b.op(
            "select_input", {"X": [b.tensor(t) for t in reversed(node.inputs[1:])], "Mask": [b.input(0)]},
            {"Out": [b.output()]}))
    out = tmp_path / "out"
    fuse(rep_models(ALPHA, "legacy"), out, onnx=writer == "onnx", paddle_format="pir" if writer == "onnx" else "both")
    images = images_for(ALPHA)
    if writer == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"image": images})[0]
    else:
        got = run_paddle(out / "inference.pdmodel", out / "inference.pdiparams", images)
    assert not close(got, rep_reference(ALPHA, images))
