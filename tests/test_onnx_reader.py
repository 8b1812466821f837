"""The ONNX reader on small hand-made models: the graph forms it produces for ONNX ops (the
contract with the passes), the one-line refusals of bad input, and DBB's Pad -> ScatterND
chains proven into one per-channel pad (and the look-alikes that are not)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from acnet_convert.common.errors import ConvertError  # noqa: E402
from acnet_convert.read.onnx.source import open_onnx  # noqa: E402
from tests.numpy_conv import conv2d  # noqa: E402

RNG = np.random.default_rng(0)


def tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def save(path: Path, nodes, inits, inputs=(("x", [1, 2, 5, 5]),), outputs=("y",), opset: int = 17, **kw) -> Path:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["n", "c", "h", "w"]) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *kw.pop("more_opsets", [])],
                              ir_version=8, **kw)
    onnx.save(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def weights(*shape) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the graph's vocabulary


def test_ops_the_passes_read_are_in_paddle_form(tmp_path):
    c = 2
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 1], group=1),
        helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("Constant", [], ["k"], value=tensor("k", np.float32(0.5))),
        helper.make_node("Mul", ["bn", "k"], ["scaled"]),
        helper.make_node("Pad", ["scaled", "pads"], ["padded"], mode="constant"),
        helper.make_node("Slice", ["padded", "starts", "ends", "axes"], ["cropped"]),
        helper.make_node("AveragePool", ["cropped"], ["pooled"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1),
        helper.make_node("Sum", ["pooled", "pooled", "pooled"], ["sum"]),
        helper.make_node("Identity", ["sum"], ["same"]),
        helper.make_node("Relu", ["same"], ["y"]),
    ]
    inits = [tensor("w", weights(c, 2, 3, 2)), tensor("b", weights(c)), tensor("gamma", weights(c)),
             tensor("beta", weights(c)), tensor("mean", weights(c)), tensor("var", np.ones(c, np.float32)),
             tensor("pads", np.array([0, 0, 1, 2, 0, 0, 3, 4], np.int64)),
             tensor("starts", np.array([1], np.int64)), tensor("ends", np.array([-1], np.int64)),
             tensor("axes", np.array([3], np.int64))]
    graph = open_onnx(save(tmp_path / "m.onnx", nodes, inits)).graph
    by_output = {n.output: n for n in graph.nodes}
    conv = by_output["conv"]
    assert (conv.op, conv.inputs) == ("conv2d", ("x", "w", "b"))
    assert conv.attrs == {"strides": [2, 1], "paddings": [1, 2, 0, 1], "dilations": [1, 1], "groups": 1,
                          "padding_algorithm": "EXPLICIT", "data_format": "NCHW"}
    bn = by_output["bn"]
    assert (bn.op, bn.inputs) == ("batch_norm", ("conv", "mean", "var", "gamma", "beta"))
    assert bn.attrs["is_test"] is True and bn.attrs["epsilon"] == pytest.approx(1e-3)
    constant = by_output["k"]
    assert (constant.op, constant.attrs["shape"], constant.attrs["values"]) == ("assign_value", [], [0.5])
    assert graph.constants["k"] == np.float32(0.5)
    assert (by_output["scaled"].op, by_output["scaled"].inputs) == ("multiply", ("bn", "k"))
    pad = by_output["padded"]
    assert (pad.op, pad.inputs, pad.attrs["paddings"], pad.attrs["mode"]) == ("pad", ("scaled",), [0, 0, 0, 0, 1, 3, 2, 4], "constant")
    crop = by_output["cropped"]
    assert (crop.op, crop.inputs, crop.attrs["axes"]) == ("slice", ("padded", "starts", "ends"), [3])
    pool = by_output["pooled"]
    assert pool.op == "pool2d" and pool.attrs["pooling_type"] == "avg" and pool.attrs["exclusive"] is False
    assert (pool.attrs["kernel_size"], pool.attrs["paddings"]) == ([3, 3], [1, 1, 1, 1])
    assert (by_output["sum"].op, by_output["sum"].inputs) == ("add_n", (("pooled", "pooled", "pooled"),))
    assert (by_output["same"].op, by_output["same"].inputs) == ("assign", ("sum",))
    assert (by_output["y"].op, by_output["y"].attrs) == ("onnx::Relu", {})
    assert [n.origin for n in graph.nodes] == [(i,) for i in range(len(nodes))]
    assert set(graph.weights) == {"w", "b", "gamma", "beta", "mean", "var"}
    assert {"pads", "starts", "ends", "axes"} <= set(graph.constants)
    assert graph.tensors["conv"].shape == (1, 2, 3, 5)


@pytest.mark.parametrize("pads", [[1, 0, 2, 1], [0, 2, 1, 0]])
def test_conv_paddings_are_top_bottom_left_right(tmp_path, pads):
    """The conv2d node's paddings, applied by an independent numpy convolution, give what ONNX
    Runtime computes; ONNX's own order [top, left, bottom, right] would not."""
    w = weights(3, 2, 3, 3)
    path = save(tmp_path / "c.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], pads=pads)], [tensor("w", w)])
    x = weights(1, 2, 5, 5)
    top, bottom, left, right = open_onnx(path).graph.nodes[0].attrs["paddings"]
    ours = conv2d(np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))), w, 1, (0, 0))
    assert np.abs(ours - run(path, x)).max() < 1e-4
    t, lft, b, r = pads
    if (t, b, lft, r) != (top, bottom, left, right):
        raise AssertionError("paddings are not top, bottom, left, right")
    onnx_order = conv2d(np.pad(x, ((0, 0), (0, 0), (t, lft), (b, r))), w, 1, (0, 0))
    assert onnx_order.shape != ours.shape or np.abs(onnx_order - ours).max() > 1e-2


def test_an_if_on_a_constant_becomes_an_if_node_with_two_blocks(tmp_path):
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 2, 5, 5])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1, 2, 5, 5])])
    nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)]
    graph = open_onnx(save(tmp_path / "if.onnx", nodes, [tensor("flag", np.array(True))])).graph
    node = graph.nodes[0]
    assert (node.op, node.inputs, node.outputs, node.origin) == ("if", ("flag",), ("y",), (0,))
    then_block, else_block = node.attrs["branches"]
    # sub-graph nodes are numbered after the main graph's, in the order the attributes list them
    assert [(n.op, n.origin) for n in then_block.nodes] == [("onnx::Relu", (2,))]
    assert [(n.op, n.origin) for n in else_block.nodes] == [("onnx::Neg", (1,))]
    assert (then_block.yields, else_block.yields) == (("t",), ("e",))


# ------------------------------------------------------------------------------------------------
# bad input: one line naming the file (and the node)


def _if_on_input(tmp_path: Path) -> Path:
    then = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 2, 5, 5])])
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
             helper.make_node("Cast", ["m"], ["flag"], to=TensorProto.BOOL),
             helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=then)]
    return save(tmp_path / "m.onnx", nodes, [])


def _training_bn(tmp_path: Path) -> Path:
    inits = [tensor(n, np.ones(2, np.float32)) for n in ("g", "b", "m", "v")]
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1,
                            name="bn_train")
    return save(tmp_path / "m.onnx", [node], inits, outputs=("y", "rm", "rv"))


def _foreign_domain(tmp_path: Path) -> Path:
    node = helper.make_node("FusedConv", ["x"], ["y"], domain="com.example", name="custom")
    return save(tmp_path / "m.onnx", [node], [], more_opsets=[helper.make_opsetid("com.example", 1)])


def _loop(tmp_path: Path) -> Path:
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Relu", ["v"], ["v_out"])],
                             "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                      helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                                      helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2, 5, 5])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 2, 5, 5])])
    nodes = [helper.make_node("Loop", ["n", "cond", "x"], ["y"], body=body, name="loop")]
    return save(tmp_path / "m.onnx", nodes, [tensor("n", np.array(2, np.int64)), tensor("cond", np.array(True))])


@pytest.mark.parametrize("make, needle", [
    (_training_bn, "node #0 'bn_train' (BatchNormalization): a BatchNormalization in training mode"),
    (_foreign_domain, "node #0 'custom' (FusedConv): operator domain 'com.example' is not supported"),
    (_loop, "node #0 'loop' (Loop): Loop is not supported"),
    (_if_on_input, "node #2 (If): an If on a condition computed from the input's values"),
    (lambda p: save(p / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])], [], opset=12), "uses ONNX opset 12"),
])
def test_models_that_cannot_be_folded_are_refused_naming_the_node(tmp_path, make, needle):
    path = make(tmp_path)
    with pytest.raises(ConvertError) as err:
        open_onnx(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)


def _conv_bn(tmp_path: Path, spoil: str | None = None) -> Path:
    """x -> Conv(w, b) -> BatchNormalization -> y, with one of its tensors made wrong by `spoil`."""
    c = 2
    inits = {"w": weights(c, c, 3, 3), "b": weights(c), "gamma": weights(c), "beta": weights(c),
             "mean": weights(c), "var": np.abs(weights(c)) + 0.5}
    if spoil == "bias length":
        inits["b"] = weights(c + 1)
    elif spoil == "bias dtype":
        inits["b"] = np.arange(c, dtype=np.int64)
    elif spoil == "bn length":
        inits["gamma"] = weights(c + 1)
    elif spoil == "bn rank":
        inits["var"] = np.abs(weights(c, 1)) + 0.5
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["conv", "gamma", "beta", "mean", "var"], ["y"])]
    tensors = [tensor(n, a) for n, a in inits.items()]
    if spoil == "input shadowed":  # an initializer named as the input: only its default (IR >= 4)
        tensors.append(tensor("x", weights(1, c, 5, 5)))
    return save(tmp_path / "m.onnx", nodes, tensors)


@pytest.mark.parametrize("spoil, needle", [
    (None, None),
    ("bias length", "op #0 conv2d: bias b holds 3 values for 2 output channels"),
    ("bias dtype", "op #0 conv2d: b is int64, not a float tensor"),
    ("bn length", "op #1 batch_norm: gamma holds 3 values for 2 channels"),
    ("bn rank", "op #1 batch_norm: var has shape [2, 1], not 1-D"),
    ("input shadowed", "no graph input is left to feed (inputs: x)"),
])
def test_tensors_of_the_wrong_shape_or_type_are_refused_naming_them(tmp_path, spoil, needle):
    """Old: an internal error from the BN folding's broadcasting (exit 4), or a fused model with
    its input folded away as a constant (exit 0). The untouched model (the twin) opens."""
    path = _conv_bn(tmp_path, spoil)
    if needle is None:
        assert open_onnx(path) is not None
        return
    with pytest.raises(ConvertError) as err:
        open_onnx(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "\n" not in str(err.value)


def _relu_with_external(tmp_path: Path, location: str, offset: int = 0, length: int = 32) -> Path:
    path = save(tmp_path / "m.onnx", [helper.make_node("Add", ["x", "w"], ["y"])], [tensor("w", np.zeros(8, np.float32))])
    model = onnx.load(str(path))
    w = model.graph.initializer[0]
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("setup, needle", [
    (lambda d: _relu_with_external(d, "../secret.bin"), "only a file beside the model is read"),
    (lambda d: _relu_with_external(d, "/etc/passwd"), "only a file beside the model is read"),
    (lambda d: _relu_with_external(d, "missing.bin"), "cannot read"),
    (lambda d: ((d / "w.bin").write_bytes(b"\0" * 16), _relu_with_external(d, "w.bin"))[1], "lie outside w.bin"),
    (lambda d: (os.symlink("/etc/hostname", d / "w.bin"), _relu_with_external(d, "w.bin"))[1], "outside"),
    (lambda d: ((d / "m.onnx").write_bytes(b"\x08\x07garbage\xff\xff" * 10), d / "m.onnx")[1], "is not an ONNX model"),
    (lambda d: ((d / "m.onnx").write_bytes(b""), d / "m.onnx")[1], "has no graph"),
    (lambda d: (os.mkfifo(d / "m.onnx"), d / "m.onnx")[1], "is a FIFO"),
])
def test_bad_files_and_external_data_are_refused_before_reading(tmp_path, setup, needle):
    path = setup(tmp_path)
    with pytest.raises(ConvertError) as err:
        open_onnx(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_external_data_beside_the_model_is_read(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    source = open_onnx(_relu_with_external(tmp_path, "w.bin"))
    assert source.graph.weights["w"].tolist() == list(range(8))
    assert source.model.external == {"w"} and source.model.data_files == (tmp_path / "w.bin",)


# ------------------------------------------------------------------------------------------------
# a pad whose border holds one value per channel, written as Pad -> ScatterND (DBB's BNAndPad)


def _frame_scatters(value: np.ndarray, shape, pad: int = 1, spoil: str | None = None):
    """Pad x by `pad`, then four ScatterND writing `value[c]` into the top and bottom rows and
    the left and right columns (indices and updates as initializers). `spoil`: 'varying' (the
    top row's values vary along W), 'interior' (the left column reaches into the interior),
    'missing' (no right column)."""
    n, c, h, w = shape
    hp, wp = h + 2 * pad, w + 2 * pad
    strips = {"top": [(i, j) for i in range(pad) for j in range(wp)],
              "bottom": [(hp - 1 - i, j) for i in range(pad) for j in range(wp)],
              "left": [(i, j) for i in range(hp) for j in range(pad + (spoil == "interior"))],
              "right": [(i, wp - 1 - j) for i in range(hp) for j in range(pad)]}
    if spoil == "missing":
        del strips["right"]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p0"], mode="constant")]
    inits = [tensor("pads", np.array([0, 0, pad, pad, 0, 0, pad, pad], np.int64))]
    for k, (side, cells) in enumerate(strips.items()):
        idx = np.array([[b, ch, i, j] for b in range(n) for ch in range(c) for i, j in cells], np.int64)
        upd = np.array([value[ch] for b in range(n) for ch in range(c) for _ in cells], np.float32)
        if spoil == "varying" and side == "top":
            upd = upd + np.arange(len(upd), dtype=np.float32) * 0.01
        inits += [tensor(f"idx_{side}", idx), tensor(f"upd_{side}", upd)]
        out = "y" if k == len(strips) - 1 else f"p{k + 1}"
        nodes.append(helper.make_node("ScatterND", [f"p{k}", f"idx_{side}", f"upd_{side}"], [out]))
    return nodes, inits


def test_a_scattered_frame_of_per_channel_values_is_one_pad(tmp_path):
    value = np.array([0.75, -1.5], np.float32)
    nodes, inits = _frame_scatters(value, (1, 2, 5, 5))
    path = save(tmp_path / "m.onnx", nodes, inits)
    graph = open_onnx(path).graph
    assert [n.op for n in graph.nodes] == ["pad"]
    pad = graph.nodes[0]
    assert pad.inputs == ("x", "y.pad_value") and pad.outputs == ("y",) and pad.origin == (0, 1, 2, 3, 4)
    assert pad.attrs["paddings"] == [0, 0, 0, 0, 1, 1, 1, 1] and pad.attrs["mode"] == "constant"
    assert graph.weights["y.pad_value"].shape == (1, 2, 1, 1)
    x = weights(1, 2, 5, 5)
    v = graph.weights["y.pad_value"].reshape(1, 2, 1, 1)
    expected = np.broadcast_to(v, (1, 2, 7, 7)).copy()
    expected[:, :, 1:-1, 1:-1] = x
    assert np.array_equal(run(path, x), expected)  # what the pad node says is what the model computes


@pytest.mark.parametrize("spoil", ["varying", "interior", "missing"])
def test_scatters_that_are_not_a_per_channel_pad_stay_as_written(tmp_path, spoil):
    nodes, inits = _frame_scatters(np.array([0.75, -1.5], np.float32), (1, 2, 5, 5), spoil=spoil)
    graph = open_onnx(save(tmp_path / "m.onnx", nodes, inits)).graph
    assert [n.op for n in graph.nodes] == ["pad"] + ["onnx::ScatterND"] * (len(nodes) - 1)
    assert len(graph.nodes[0].inputs) == 1  # the Pad itself, with its zero value


def test_scatters_whose_updates_read_the_input_stay_as_written(tmp_path):
    nodes, inits = _frame_scatters(np.array([0.75, -1.5], np.float32), (1, 2, 5, 5))
    nodes.insert(0, helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0))
    nodes.insert(1, helper.make_node("Mul", ["upd_top", "m"], ["upd_x"]))
    nodes[3].input[2] = "upd_x"
    graph = open_onnx(save(tmp_path / "m.onnx", nodes, inits)).graph
    assert "onnx::ScatterND" in graph.op_counts()


def test_a_read_source_can_be_sent_from_a_child_process(tmp_path):
    """What a supervised child returns is pickled: the model, its graph and its digest survive."""
    import pickle

    nodes, inits = _frame_scatters(np.array([0.75, -1.5], np.float32), (1, 2, 5, 5))
    source = open_onnx(save(tmp_path / "m.onnx", nodes, inits))
    again = pickle.loads(pickle.dumps(source))
    assert again.sha256 == source.sha256 and again.model.proto == source.model.proto
    assert [n.op for n in again.graph.nodes] == ["pad"]
    assert np.array_equal(again.graph.weights["y.pad_value"], source.graph.weights["y.pad_value"])


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_auto_pad_convs_compute_what_onnx_runtime_computes(tmp_path, auto_pad):
    """SAME_UPPER is Paddle's SAME; SAME_LOWER (the odd pixel before) becomes explicit paddings."""
    w = weights(3, 2, 2, 4)
    path = save(tmp_path / "c.onnx", [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad=auto_pad, strides=[2, 1])],
                [tensor("w", w)])
    node = open_onnx(path).graph.nodes[0]
    x = weights(1, 2, 5, 5)
    if auto_pad == "SAME_UPPER":
        assert node.attrs["padding_algorithm"] == "SAME"
        return
    assert node.attrs["padding_algorithm"] == ("EXPLICIT" if auto_pad == "SAME_LOWER" else "VALID")
    top, bottom, left, right = node.attrs["paddings"]
    ours = conv2d(np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))), w, 1, (0, 0))[:, :, ::2]
    assert np.abs(ours - run(path, x)).max() < 1e-4


def _dynamo_style_frame(value: np.ndarray, baked: bool) -> tuple[list, list]:
    """The frame as torch's dynamo exporter writes it for any input size: Transpose the padded
    tensor so rows come first, ScatterND rows 0 and -1 with updates expanded to the shape of
    what they write (read from Shape), Transpose for the columns, back again. `baked`: the
    updates' shape is a constant of one size instead (a model valid at that size only)."""
    c = len(value)
    inits = [tensor("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)), tensor("v", value),
             tensor("v_shape", np.array([1, c, 1, 1], np.int64)), tensor("first", np.array([[0]], np.int64)),
             tensor("last", np.array([[-1]], np.int64)), tensor("one", np.array([1], np.int64)),
             tensor("from1", np.array([1], np.int64)), tensor("to4", np.array([4], np.int64)),
             tensor("baked", np.array([1, c, 1, 7], np.int64))]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p0"]),
             helper.make_node("Reshape", ["v", "v_shape"], ["vals"])]
    data = "p0"
    for k, perm, back in ((0, [2, 1, 0, 3], [2, 1, 0, 3]), (1, [3, 1, 0, 2], [2, 1, 3, 0])):
        nodes += [helper.make_node("Transpose", [data], [f"t{k}"], perm=perm),
                  helper.make_node("Shape", [f"t{k}"], [f"shape{k}"]),
                  helper.make_node("Slice", [f"shape{k}", "from1", "to4"], [f"tail{k}"]),
                  helper.make_node("Concat", ["one", f"tail{k}"], [f"upd_shape{k}"], axis=0),
                  helper.make_node("Expand", ["vals", "baked" if baked else f"upd_shape{k}"], [f"upd{k}"]),
                  helper.make_node("ScatterND", [f"t{k}", "first", f"upd{k}"], [f"s{k}a"]),
                  helper.make_node("ScatterND", [f"s{k}a", "last", f"upd{k}"], [f"s{k}b"]),
                  helper.make_node("Transpose", [f"s{k}b"], ["y" if k else "back0"], perm=back)]
        data = "back0"
    return nodes, inits


def test_a_frame_written_for_any_size_is_one_pad_at_every_size(tmp_path):
    value = np.array([0.25, -2.0, 1.5], np.float32)
    nodes, inits = _dynamo_style_frame(value, baked=False)
    path = save(tmp_path / "m.onnx", nodes, inits, inputs=(("x", ["n", 3, "h", "w"]),))
    graph = open_onnx(path).graph
    assert [n.op for n in graph.nodes] == ["pad"] and len(graph.nodes[0].origin) == len(nodes)
    assert graph.weights["y.pad_value"].reshape(-1).tolist() == value.tolist()
    x = weights(3, 3, 6, 9)  # neither probe size
    expected = np.broadcast_to(value.reshape(1, 3, 1, 1), (3, 3, 8, 11)).copy()
    expected[:, :, 1:-1, 1:-1] = x
    assert np.array_equal(run(path, x), expected)


def test_a_frame_written_for_one_size_stays_as_written(tmp_path):
    nodes, inits = _dynamo_style_frame(np.array([0.25, -2.0, 1.5], np.float32), baked=True)
    path = save(tmp_path / "m.onnx", nodes, inits, inputs=(("x", ["n", 3, "h", "w"]),))
    assert "onnx::ScatterND" in open_onnx(path).graph.op_counts()


@pytest.mark.parametrize("computed_from", ["constants", "the input's shape"])
def test_slice_axes_computed_from_constants_are_read_as_attributes(tmp_path, computed_from):
    """torch's legacy exporter writes a crop's axes and steps as Unsqueeze of Constants: read as
    the slice's attributes. Axes that depend on the input (here its shape) are not constants."""
    scalar3 = helper.make_node("Constant", [], ["three"], value=tensor("three", np.array(3, np.int64)))
    if computed_from == "constants":
        make_axis = [scalar3]
    else:
        make_axis = [helper.make_node("Shape", ["x"], ["shape"]),
                     helper.make_node("Gather", ["shape", "idx0"], ["three"], axis=0)]
    nodes = make_axis + [
        helper.make_node("Constant", [], ["one"], value=tensor("one", np.array(1, np.int64))),
        helper.make_node("Unsqueeze", ["three", "axis0"], ["axes"]),
        helper.make_node("Unsqueeze", ["one", "axis0"], ["steps"]),
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])]
    inits = [tensor("axis0", np.array([0], np.int64)), tensor("starts", np.array([1], np.int64)),
             tensor("ends", np.array([-1], np.int64)), tensor("idx0", np.array(1, np.int64))]
    path = save(tmp_path / "m.onnx", nodes, inits, inputs=(("x", [1, 3, 5, 5]),))
    crop = open_onnx(path).graph.nodes[-1]
    if computed_from == "constants":
        assert (crop.op, crop.inputs, crop.attrs["axes"]) == ("slice", ("x", "starts", "ends"), [3])
    else:
        assert crop.op == "onnx::Slice"
    x = weights(1, 3, 5, 5)
    assert np.array_equal(run(path, x), x[:, :, :, 1:-1])
