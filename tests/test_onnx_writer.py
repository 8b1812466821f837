"""The ONNX writer against an independent oracle: the deploy network computed directly with
paddle.nn.functional (float64) from the same random deploy weights, run by ONNX Runtime."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from acnet_convert.errors import ConvertError
from acnet_convert.onnx_writer import MAX_OPSET, MIN_OPSET, build_onnx, export_onnx, write_onnx
from acnet_convert.plan import FC_BIAS, FC_WEIGHT, Plan, resnet

SIZE = 64
CLASSES = 10


def random_deploy_weights(plan: Plan, seed: int = 0) -> dict[str, np.ndarray]:
    """He-initialised kernels; the last conv of each residual body is scaled down (as a
    zero-ish last BN would) so activations stay O(1) through 16 residual additions."""
    rng = np.random.default_rng(seed)
    last = {block.body[-1].name for block in plan.blocks}
    out = {}
    for conv in plan.convs():
        shape = conv.deploy_tensors()[conv.deploy_weight]
        fan_in = shape[1] * shape[2] * shape[3]
        gain = 0.2 if conv.name in last else 1.0
        out[conv.deploy_weight] = (rng.standard_normal(shape) * gain * np.sqrt(2 / fan_in)).astype(np.float32)
        out[conv.deploy_bias] = (rng.standard_normal(conv.out_channels) * 0.1).astype(np.float32)
    out[FC_WEIGHT] = (rng.standard_normal((plan.features, plan.num_classes)) / np.sqrt(plan.features)).astype(np.float32)
    out[FC_BIAS] = (rng.standard_normal(plan.num_classes) * 0.1).astype(np.float32)
    return out


def paddle_reference(plan: Plan, weights: dict[str, np.ndarray], images: np.ndarray) -> np.ndarray:
    """The deploy network written out with paddle.nn.functional, in float64."""
    import paddle
    import paddle.nn.functional as F

    def t(a: np.ndarray) -> paddle.Tensor:
        return paddle.to_tensor(np.asarray(a, np.float64))

    def conv(c, x):
        y = F.conv2d(x, t(weights[c.deploy_weight]), t(weights[c.deploy_bias]), stride=c.stride, padding=c.padding)
        return F.relu(y) if c.relu else y

    with paddle.no_grad():
        x = F.max_pool2d(conv(plan.stem, t(images)), kernel_size=3, stride=2, padding=1)
        for block in plan.blocks:
            y = x
            for c in block.body:
                y = conv(c, y)
            x = F.relu(y + (conv(block.shortcut, x) if block.shortcut else x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return (paddle.matmul(x, t(weights[FC_WEIGHT])) + t(weights[FC_BIAS])).numpy()


def run(model: onnx.ModelProto | Path, images: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images})[0]


def images(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module", params=[18, 50], ids=["resnet18", "resnet50"])
def case(request):
    plan = resnet(request.param, CLASSES)
    weights = random_deploy_weights(plan)
    x = images(2)
    return plan, weights, x, paddle_reference(plan, weights, x)


@pytest.fixture(scope="module")
def r18():
    plan = resnet(18, CLASSES)
    weights = random_deploy_weights(plan)
    x = images(2)
    return plan, weights, x, paddle_reference(plan, weights, x)


def assert_close(got: np.ndarray, want: np.ndarray) -> float:
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err < 1e-4 * scale, f"max abs error {err:.3g} at logits scale {scale:.3g}"
    return err


def test_matches_paddle_functional_reference(case, tmp_path):
    plan, weights, x, want = case
    path = tmp_path / "model.onnx"
    write_onnx(build_onnx(plan, weights, SIZE), path)
    got = run(path, x)
    assert got.shape == (2, CLASSES) and got.dtype == np.float32
    assert np.abs(want).max() > 0.1, "the oracle's logits are degenerate"
    err = assert_close(got, want)
    print(f"{plan.arch}: max abs error {err:.3g}, max |logit| {np.abs(want).max():.3g}")


def test_graph_is_the_plan(case):
    plan, weights, _, _ = case
    graph = build_onnx(plan, weights, SIZE).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert [n.name for n in convs] == [c.name for c in plan.convs()]
    assert [list(n.input[1:]) for n in convs] == [[c.deploy_weight, c.deploy_bias] for c in plan.convs()]
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]
    assert {i.name for i in graph.initializer} == set(plan.deploy_tensors())
    assert {i.name: tuple(i.dims) for i in graph.initializer} == plan.deploy_tensors()
    assert len({n.name for n in graph.node}) == len(graph.node)
    assert {n.op_type for n in graph.node} == {"Conv", "Relu", "MaxPool", "Add", "GlobalAveragePool", "Flatten", "Gemm"}
    # the FC initializer is Paddle's [in, out] weight as it is, used by Gemm with transB=0
    fc = np.asarray(onnx.numpy_helper.to_array(next(i for i in graph.initializer if i.name == FC_WEIGHT)))
    np.testing.assert_array_equal(fc, weights[FC_WEIGHT])


def test_dynamic_batch(r18):
    plan, weights, x, want = r18
    model = build_onnx(plan, weights, SIZE)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "N" and not batch.HasField("dim_value")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    five = np.concatenate([x, images(3, seed=2)])
    one = session.run(None, {"image": x[:1]})[0]
    many = session.run(None, {"image": five})[0]
    assert one.shape == (1, CLASSES) and many.shape == (5, CLASSES)
    assert_close(one, want[:1])
    assert_close(many[:2], want)


def dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_static_batch(r18, tmp_path):
    plan, weights, x, want = r18
    model = build_onnx(plan, weights, SIZE, static_batch=True, batch_size=2)
    assert dims(model.graph.input[0]) == [2, 3, SIZE, SIZE]
    assert dims(model.graph.output[0]) == [2, CLASSES]
    write_onnx(model, tmp_path / "m.onnx")
    assert_close(run(tmp_path / "m.onnx", x), want)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run(tmp_path / "m.onnx", x[:1])


@pytest.mark.parametrize("opset", range(MIN_OPSET, MAX_OPSET + 1))
def test_every_opset_checks_and_runs(r18, opset):
    plan, weights, x, want = r18
    model = build_onnx(plan, weights, SIZE, opset=opset)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", opset)]
    onnx.checker.check_model(model, full_check=True)
    assert_close(run(model, x), want)


@pytest.mark.parametrize("opset", [MIN_OPSET - 1, MAX_OPSET + 1])
def test_opset_out_of_range(r18, opset):
    plan, weights, _, _ = r18
    with pytest.raises(ValueError, match=str(opset)):
        build_onnx(plan, weights, SIZE, opset=opset)


def test_missing_weight_is_named(r18):
    plan, weights, _, _ = r18
    broken = {k: v for k, v in weights.items() if k != "res3a_branch2b_acsquare_bias"}
    with pytest.raises(ConvertError, match="res3a_branch2b_acsquare_bias"):
        build_onnx(plan, broken, SIZE)


@pytest.mark.parametrize("name", ["conv1_acsquare_weights", "res2a_branch1_bias", FC_WEIGHT])
def test_wrong_shape_is_named(r18, name):
    plan, weights, _, _ = r18
    broken = dict(weights, **{name: weights[name][..., :1]})
    with pytest.raises(ConvertError, match=f"{name}.*shape"):
        build_onnx(plan, broken, SIZE)


def test_unexpected_weight_is_named(r18):
    plan, weights, _, _ = r18
    with pytest.raises(ConvertError, match="res9a_branch1_weights"):
        build_onnx(plan, dict(weights, res9a_branch1_weights=np.zeros(1, np.float32)), SIZE)


def test_metadata_and_producer(r18):
    plan, weights, _, _ = r18
    model = build_onnx(plan, weights, SIZE, metadata={"arch": "resnet18", "source_sha256": "ab" * 32})
    assert {p.key: p.value for p in model.metadata_props} == {"arch": "resnet18", "source_sha256": "ab" * 32}
    assert model.producer_name == "acnet-convert"
    assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import))


def test_write_is_atomic(r18, tmp_path):
    plan, weights, _, _ = r18
    model = build_onnx(plan, weights, SIZE)
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
    with pytest.raises(ConvertError, match="cannot write .*dir.onnx"):
        write_onnx(model, tmp_path / "dir.onnx")
    assert sorted(os.listdir(tmp_path)) == ["dir.onnx", "model.onnx"]


def fused_dir(tmp_path: Path, plan: Plan, weights: dict[str, np.ndarray]) -> Path:
    out = tmp_path / "OUT"
    out.mkdir()
    manifest = {
        "arch": plan.arch,
        "num_classes": plan.num_classes,
        "input_size": SIZE,
        "source": {"path": "/ckpt/resnet18_acnet", "sha256": "cd" * 32},
        "tool_version": "0.1.0",
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    with open(out / "deploy.pdparams", "wb") as f:
        pickle.dump(weights, f, protocol=2)
    return out


def test_export_onnx(r18, tmp_path):
    plan, weights, x, want = r18
    out = fused_dir(tmp_path, plan, weights)
    path = export_onnx(out)
    assert path == out / "model.onnx"
    assert_close(run(path, x), want)
    props = {p.key: p.value for p in onnx.load(path).metadata_props}
    assert props["arch"] == "resnet18" and props["source_sha256"] == "cd" * 32
    assert props["source_path"] == "/ckpt/resnet18_acnet" and props["tool_version"] == "0.1.0"

    other = export_onnx(out, tmp_path / "static.onnx", opset=13, static_batch=True)
    model = onnx.load(other)
    assert model.opset_import[0].version == 13
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


@pytest.mark.parametrize("missing", ["manifest.json", "deploy.pdparams"])
def test_export_onnx_names_missing_file(r18, tmp_path, missing):
    plan, weights, _, _ = r18
    out = fused_dir(tmp_path, plan, weights)
    (out / missing).unlink()
    with pytest.raises(ConvertError, match=missing):
        export_onnx(out)
    assert not (out / "model.onnx").exists()


def test_export_onnx_names_bad_tensor_and_file(r18, tmp_path):
    plan, weights, _, _ = r18
    out = fused_dir(tmp_path, plan, {k: v for k, v in weights.items() if k != FC_BIAS})
    with pytest.raises(ConvertError, match=r"deploy\.pdparams.*fc_0\.b_0"):
        export_onnx(out)
