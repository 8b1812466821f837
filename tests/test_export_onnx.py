"""`fuse --onnx` / `export-onnx` on real checkpoints: ONNX Runtime computes what the Paddle deploy
model and the legacy static train program compute."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from fixtures.make_checkpoint import reference_logits
from tests.conftest import NUM_CLASSES
from tests.test_fuse import run_inference_model


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images})[0]


@pytest.mark.parametrize("depth", [18, 50])
def test_onnx_matches_paddle_deploy_and_train_program(fused, checkpoints, images, depth: int) -> None:
    out = fused(depth, "vars", onnx=True)
    got = run_onnx(out / "model.onnx", images)
    paddle_deploy = run_inference_model(out, images)
    train = reference_logits(checkpoints(depth, "vars"), depth, NUM_CLASSES, images)
    # Two runtimes, two float32 conv libraries (MLAS, oneDNN), two summation orders: measured
    # 1.3e-5 (ResNet-18, logits to 3.4) and 5.0e-5 (ResNet-50, logits to 5.4) apart, i.e. ~1e-5
    # of the logit scale; the bound is 2e-5 of it. Either is within 1e-4 of the train program.
    scale = max(1.0, float(np.abs(paddle_deploy).max()))
    print(f"resnet{depth}: |onnx - paddle| {np.abs(got - paddle_deploy).max():.2e}, "
          f"|onnx - train| {np.abs(got - train).max():.2e}, logit scale {scale:.2f}")
    assert np.abs(got - paddle_deploy).max() < 2e-5 * scale
    assert np.abs(got - train).max() < 1e-4
    assert (got.argmax(1) == train.argmax(1)).all()

    model = onnx.load(out / "model.onnx")
    ops = [node.op_type for node in model.graph.node]
    plan_convs = len(json.loads((out / "manifest.json").read_text())["layers"])
    assert ops.count("Conv") == plan_convs and "BatchNormalization" not in ops
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["arch"] == f"resnet{depth}" and len(metadata["source_sha256"]) == 64


def test_export_onnx_command_dynamic_and_static_batch(fused, images, tmp_path) -> None:
    out = fused(18, "vars")
    dynamic = tmp_path / "dynamic.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(dynamic)])
    assert result.exit_code == 0, result.output
    assert run_onnx(dynamic, images[:1]).shape == (1, NUM_CLASSES)
    assert run_onnx(dynamic, np.concatenate([images, images[:1]])).shape == (5, NUM_CLASSES)

    static = tmp_path / "static.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(static), "--static-batch", "--opset", "13"])
    assert result.exit_code == 0, result.output
    dims = onnx.load(static).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, images.shape[2], images.shape[3]]
    np.testing.assert_allclose(run_onnx(static, images[:1]), run_onnx(dynamic, images[:1]), atol=1e-6)
