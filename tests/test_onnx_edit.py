"""The ONNX editor applies a deploy graph to its source model by difference (graph/ir.py's
contract): what the passes of issue 18 will hand it, made here by hand on small models. Each
edited model is checked by onnx.checker and run in ONNX Runtime against the source."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

from acnet_convert.common.errors import ConvertError  # noqa: E402
from acnet_convert.graph.ir import Node  # noqa: E402
from acnet_convert.read.onnx.source import open_onnx  # noqa: E402
from acnet_convert.write.onnx.edit import apply_deploy, check_onnx  # noqa: E402
from tests.test_onnx_reader import run, save, tensor, weights  # noqa: E402

X = weights(1, 2, 5, 5)


def edited(path, change):
    """(source output, edited model's output, edited ModelProto) after `change(graph)` -> deploy graph."""
    source = open_onnx(path)
    deploy = change(source.graph)
    proto = apply_deploy(source.model, source.graph, deploy)
    check_onnx(proto, "test")
    out = path.with_name("edited.onnx")
    onnx.save(proto, str(out))
    return run(path, X), run(out, X), proto


def test_a_removed_identity_rewires_the_kept_node_that_read_it(tmp_path):
    path = save(tmp_path / "m.onnx", [helper.make_node("Identity", ["x"], ["xi"]),
                                      helper.make_node("Conv", ["xi", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                                      helper.make_node("Relu", ["c"], ["y"], name="relu")],
                [tensor("w", weights(2, 2, 3, 3))])

    def drop_identity(g):
        conv = g.nodes[1]
        return replace(g, nodes=[replace(conv, inputs=("x",) + conv.inputs[1:]), g.nodes[2]])

    want, got, proto = edited(path, drop_identity)
    assert np.array_equal(want, got)
    source = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu"]
    conv = proto.graph.node[0]
    assert list(conv.input) == ["x", "w"] and conv.attribute == source.graph.node[1].attribute
    assert proto.graph.node[1] == source.graph.node[2]


def test_a_folded_constant_becomes_an_initializer(tmp_path):
    nodes = [helper.make_node("Constant", [], ["one"], value=tensor("one", np.array(1, np.int64))),
             helper.make_node("Unsqueeze", ["one", "axis0"], ["starts"]),
             helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"], name="crop")]
    inits = [tensor("axis0", np.array([0], np.int64)), tensor("ends", np.array([-1], np.int64)),
             tensor("axes", np.array([3], np.int64))]
    path = save(tmp_path / "m.onnx", nodes, inits)

    def fold(g):
        constants = {**g.constants, "starts": np.array([1], np.int64)}
        return replace(g, nodes=[g.nodes[2]], constants=constants)

    want, got, proto = edited(path, fold)
    assert np.array_equal(want, got)
    assert [n.op_type for n in proto.graph.node] == ["Slice"]
    assert sorted(t.name for t in proto.graph.initializer) == ["axes", "ends", "starts"]


def test_an_output_the_passes_moved_keeps_its_name(tmp_path):
    path = save(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])], [])

    def drop_identity(g):
        return replace(g, nodes=[g.nodes[0]], outputs=["r"])

    want, got, proto = edited(path, drop_identity)
    assert np.array_equal(want, got)
    assert [o.name for o in proto.graph.output] == ["y"]
    assert [(n.op_type, list(n.input), list(n.output)) for n in proto.graph.node] == [
        ("Relu", ["x"], ["r"]), ("Identity", ["r"], ["y"])]


def test_the_taken_branch_of_an_inlined_if_runs_where_the_if_was(tmp_path):
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="then_relu")], "then", [],
                             [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [1, 2, 5, 5])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [1, 2, 5, 5])])
    path = save(tmp_path / "m.onnx", [helper.make_node("If", ["flag"], ["f"], then_branch=then, else_branch=other),
                                      helper.make_node("Sigmoid", ["f"], ["y"])], [tensor("flag", np.array(True))])

    def inline(g):
        taken = g.nodes[0].attrs["branches"][0]
        sigmoid = g.nodes[1]
        return replace(g, nodes=[*taken.nodes, replace(sigmoid, inputs=taken.yields)])

    want, got, proto = edited(path, inline)
    assert np.array_equal(want, got)
    assert [n.name or n.op_type for n in proto.graph.node] == ["then_relu", "Sigmoid"]
    assert "flag" not in {t.name for t in proto.graph.initializer}


def test_new_nodes_are_convs_and_adds_only(tmp_path):
    path = save(tmp_path / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])], [])
    source = open_onnx(path)
    doubled = [Node("add", ("x", "x"), ("twice",)), Node("add", ("x", "twice", "x"), ("four",)),
               replace(source.graph.nodes[0], inputs=("four",))]
    proto = apply_deploy(source.model, source.graph, replace(source.graph, nodes=doubled))
    check_onnx(proto, "test")
    assert [n.op_type for n in proto.graph.node] == ["Add", "Sum", "Relu"]
    out = tmp_path / "edited.onnx"
    onnx.save(proto, str(out))
    assert np.allclose(run(out, X), np.maximum(4 * X, 0))
    source = open_onnx(path)
    with pytest.raises(ConvertError, match="cannot create a 'multiply' node"):
        apply_deploy(source.model, source.graph, replace(source.graph, nodes=[Node("multiply", ("x", "x"), ("y",))]))
