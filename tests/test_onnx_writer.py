"""The ONNX writer on real fuse outputs (ResNet-18 from a checkpoint made by the fixtures' port
of the reference static train program). Oracles with their own facts: the reference train
program's logits, and the strides of ResNet written down here, not read from the package's
plan. The op handlers themselves are tested against Paddle in test_onnx_ops.py."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from acnet_convert.common.errors import ConvertError
from acnet_convert.write.onnx.writer import MAX_OPSET, MIN_OPSET, build_onnx, write_onnx
from acnet_convert.read.program import load_program, program_files
from acnet_convert.read.program_reader import read_graph
from fixtures.make_checkpoint import reference_logits
from tests.conftest import NUM_CLASSES, TEST_INPUT

# ResNet-18 (He et al. 2016, as resnet_acnet.py builds it): the convs that downsample
STRIDE_2 = {
    "conv1_acsquare_weights",
    "res3a_branch2a_acsquare_weights", "res3a_branch1_weights",
    "res4a_branch2a_acsquare_weights", "res4a_branch1_weights",
    "res5a_branch2a_acsquare_weights", "res5a_branch1_weights",
}


@pytest.fixture(scope="module")
def r18(fused, checkpoints):
    """(deploy graph, images, the reference train program's logits for them)."""
    out = fused(18, "vars")
    graph = read_graph(load_program(*program_files(out)))
    x = np.random.default_rng(1).standard_normal((2, 3, TEST_INPUT, TEST_INPUT)).astype(np.float32)
    return graph, x, reference_logits(checkpoints(18, "vars"), 18, NUM_CLASSES, x)


def run(model: onnx.ModelProto | Path, images: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images})[0]


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err < 1e-4 * scale, f"max abs error {err:.3g} at logits scale {scale:.3g}"


def test_matches_the_reference_train_program(r18, tmp_path):
    graph, x, want = r18
    path = tmp_path / "model.onnx"
    write_onnx(build_onnx(graph), path)
    got = run(path, x)
    assert got.shape == (2, NUM_CLASSES) and got.dtype == np.float32
    assert np.ptp(want) > 0.1, "the oracle's logits are degenerate"
    assert_close(got, want)


def test_one_conv_per_layer_with_resnets_strides(r18):
    graph, _, _ = r18
    model = build_onnx(graph).graph
    convs = [n for n in model.node if n.op_type == "Conv"]
    assert len(convs) == 21 and not [n for n in model.node if n.op_type == "BatchNormalization"]
    for node in convs:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1]
        expected = 2 if weight in STRIDE_2 else 1
        assert list(attrs["strides"]) == [expected, expected], weight
        k = 7 if weight.startswith("conv1_") else (3 if "_ac" in weight else 1)
        assert list(attrs.get("kernel_shape", [k, k])) == [k, k]
        assert list(attrs["pads"]) == [k // 2] * 4, weight
        assert attrs.get("group", 1) == 1
        assert len(node.input) == 3  # with its bias
    initializers = {i.name for i in model.initializer}
    assert {"conv1_acsquare_weights", "conv1_acsquare_bias", "res2a_branch1_weights", "res2a_branch1_bias", "fc_0.w_0"} <= initializers
    # the FC initializer is Paddle's [in, out] weight as it is
    fc = onnx.numpy_helper.to_array(next(i for i in model.initializer if i.name == "fc_0.w_0"))
    np.testing.assert_array_equal(fc, graph.weights["fc_0.w_0"])


def test_dynamic_batch(r18):
    graph, x, want = r18
    model = build_onnx(graph)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    five = np.concatenate([x, x[::-1], x[:1]])
    one = session.run(None, {"image": x[:1]})[0]
    many = session.run(None, {"image": five})[0]
    assert one.shape == (1, NUM_CLASSES) and many.shape == (5, NUM_CLASSES)
    assert_close(one, want[:1])
    assert_close(many[:2], want)


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_static_batch(r18, tmp_path):
    graph, x, want = r18
    model = build_onnx(graph, static_batch=True, batch_size=2)
    assert dims(model.graph.input[0]) == [2, 3, TEST_INPUT, TEST_INPUT]
    assert dims(model.graph.output[0]) == [2, NUM_CLASSES]
    write_onnx(model, tmp_path / "m.onnx")
    assert_close(run(tmp_path / "m.onnx", x), want)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(tmp_path / "m.onnx", x[:1])


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1))
def test_every_opset_checks_and_runs(r18, opset):
    graph, x, want = r18
    model = build_onnx(graph, opset=opset)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    # the IR version onnxruntime 1.31 reads for each opset (onnx 1.23 would stamp IR 14)
    assert model.ir_version == {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}[opset]
    onnx.checker.check_model(model, full_check=True)
    assert_close(run(model, x), want)


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_opset_out_of_range(r18, opset):
    graph, _, _ = r18
    with pytest.raises((ValueError, ConvertError), match=str(opset)):
        build_onnx(graph, opset=opset)


def test_metadata_and_producer(r18):
    graph, _, _ = r18
    model = build_onnx(graph, metadata={"arch": "resnet18", "source_sha256": "ab" * 32})
    assert {p.key: p.value for p in model.metadata_props} == {"arch": "resnet18", "source_sha256": "ab" * 32}
    assert model.producer_name == "acnet-convert"


def test_write_is_atomic(r18, tmp_path):
    graph, _, _ = r18
    model = build_onnx(graph)
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[0].input[1] = "no_such_tensor"
    with pytest.raises(onnx.checker.ValidationError):
        write_onnx(bad, path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]
    write_onnx(model, path)
    assert os.listdir(tmp_path) == ["model.onnx"]
    assert onnx.load(path).graph.output[0].name == "logits"
    with pytest.raises(ConvertError, match="missing"):
        write_onnx(model, tmp_path / "missing" / "model.onnx")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ConvertError, match=r"dir\.onnx"):  # a folder in the way is named, left as it is
        write_onnx(model, tmp_path / "dir.onnx")
    assert sorted(os.listdir(tmp_path)) == ["dir.onnx", "model.onnx"]
