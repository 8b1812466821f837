"""`fuse --onnx` / `export-onnx` on real checkpoints: ONNX Runtime computes what the Paddle deploy
model and the legacy static train program compute, at any size (the default: a ResNet takes any
size), at a fixed size (--static-size), and in float16 (--fp16, with its range check)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.commands.export_onnx import export_onnx
from acnet_convert.commands.fuse import fuse
from acnet_convert.common.errors import ConvertError
from acnet_convert.out.artifacts import Artifacts
from acnet_convert.read.lod_tensor import read_lod_tensor, write_lod_tensor
from fixtures.make_checkpoint import reference_logits
from tests.conftest import NUM_CLASSES, TEST_INPUT
from tests.test_legacy_writer import run_predictor


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": images})[0]


def run_paddle(out: Path, images: np.ndarray) -> np.ndarray:
    return run_predictor(out / "inference.json", out / "inference.pdiparams", images)[0]


def _scale(logits: np.ndarray) -> float:
    return max(1.0, float(np.abs(logits).max()))


@pytest.mark.parametrize("depth", [18, 50])
def test_onnx_matches_paddle_deploy_and_train_program(fused, checkpoints, images, depth: int) -> None:
    out = fused(depth, "vars", onnx=True)
    got = run_onnx(out / "model.onnx", images)
    paddle_deploy = run_paddle(out, images)
    train = reference_logits(checkpoints(depth, "vars"), depth, NUM_CLASSES, images)
    # Two runtimes, two float32 conv libraries (MLAS, oneDNN), two summation orders: measured
    # 1.3e-5 (ResNet-18, logits to 3.4) and 5.0e-5 (ResNet-50, logits to 5.4) apart, i.e. ~1e-5
    # of the logit scale; the bound is 2e-5 of it. Either is within 1e-4 of the train program.
    scale = _scale(paddle_deploy)
    assert np.abs(got - paddle_deploy).max() < 2e-5 * scale
    assert np.abs(got - train).max() < 1e-4 * scale
    assert (got.argmax(1) == train.argmax(1)).all()

    model = onnx.load(out / "model.onnx")
    ops = [node.op_type for node in model.graph.node]
    fused_convs = len(json.loads((out / "manifest.json").read_text())["fused"])
    assert ops.count("Conv") == fused_convs and "BatchNormalization" not in ops
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["arch"] == f"resnet{depth}" and len(metadata["source_sha256"]) == 64


def test_export_onnx_command_dynamic_and_static_batch(fused, images, tmp_path) -> None:
    out = fused(18, "vars")
    dynamic = tmp_path / "dynamic.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(dynamic)])
    assert result.exit_code == 0, result.output
    assert "batch dynamic, size dynamic, float32" in result.output
    assert run_onnx(dynamic, images[:1]).shape == (1, NUM_CLASSES)
    assert run_onnx(dynamic, np.concatenate([images, images[:1]])).shape == (5, NUM_CLASSES)

    static = tmp_path / "static.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(static), "--static-batch", "--static-size",
                                      "--opset", "13"])
    assert result.exit_code == 0, result.output
    assert "batch 1, size 64x64, float32" in result.output
    dims = onnx.load(static).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, images.shape[2], images.shape[3]]
    np.testing.assert_allclose(run_onnx(static, images[:1]), run_onnx(dynamic, images[:1]), atol=1e-6)
    with pytest.raises(Exception, match="(?i)dimension"):  # a fixed size is fixed
        run_onnx(static, np.zeros((1, 3, 96, 96), np.float32))
    # -o elsewhere leaves the manifest alone; OUT/model.onnx is recorded in it
    assert json.loads((out / "manifest.json").read_text())["onnx_input"] is None


def test_fuse_onnx_takes_any_size_by_default_matching_paddle_at_224_and_320(checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    fuse(checkpoints(18, "vars"), out, input_size=TEST_INPUT, onnx=True, paddle_format="pir")
    dims = onnx.load(out / "model.onnx").graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    assert json.loads((out / "manifest.json").read_text())["onnx_input"] == ["N", 3, "H", "W"]
    rng = np.random.default_rng(7)
    for size in (224, 320):
        images = rng.normal(size=(2, 3, size, size)).astype(np.float32)
        got, expected = run_onnx(out / "model.onnx", images), run_paddle(out, images)
        assert np.abs(got - expected).max() < 2e-5 * _scale(expected), size
    # export-onnx into OUT with --static-size: the manifest says so
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "--static-size", "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["onnx_input"] == ["N", 3, TEST_INPUT, TEST_INPUT]
    result = CliRunner().invoke(cli, ["verify", str(out), "--batches", "1", "--batch-size", "2"])
    assert result.exit_code == 0, result.output


def test_static_size_goes_with_onnx(checkpoints, tmp_path) -> None:
    result = CliRunner().invoke(cli, ["fuse", str(checkpoints(18, "vars")), str(tmp_path / "out"), "--static-size"])
    assert result.exit_code == 2 and "--static-size" in result.output


def test_export_onnx_dynamic_size_runs_non_square_inputs(fused, tmp_path) -> None:
    out = fused(18, "vars")
    path = tmp_path / "any.onnx"
    export_onnx(Artifacts(out), output=path)
    images = np.random.default_rng(8).normal(size=(1, 3, 96, 160)).astype(np.float32)
    got, expected = run_onnx(path, images), run_paddle(out, images)
    assert np.abs(got - expected).max() < 2e-5 * _scale(expected)


def test_fp16_export_keeps_float32_inputs_and_outputs_and_agrees(fused, images, tmp_path) -> None:
    out = fused(18, "vars")
    path = tmp_path / "fp16.onnx"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(path), "--fp16"])
    assert result.exit_code == 0, result.output
    assert "weight values underflow to zero" in result.output and "float16)" in result.output
    model = onnx.load(path)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    assert {i.data_type for i in model.graph.initializer if i.name in conv_weights} == {onnx.TensorProto.FLOAT16}
    half, full = run_onnx(path, images), run_paddle(out, images)
    # float16 keeps 11 significant bits: ~1e-3 relative per op, a few 1e-3 of the scale at the end
    # (measured on ResNet-18 at 64: 2.6e-3..2.9e-3 on four batches)
    assert np.abs(half - full).max() < 5e-3 * _scale(full)
    assert (half.argmax(1) == full.argmax(1)).all()


def test_fp16_refuses_a_weight_beyond_float16_and_names_it(checkpoints, tmp_path) -> None:
    """A BN scale of 1e8 (a collapsed running variance does the same) makes the fused kernel
    of res3a_branch2a hold values beyond float16's 65504: float32 is fine, float16 would be inf."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints(18, "vars"), ckpt)
    name = "bn3a_branch2a_acsquare_scale"
    write_lod_tensor(ckpt / name, read_lod_tensor((ckpt / name).read_bytes(), name) * np.float32(1e8))
    out = tmp_path / "out"
    fuse(ckpt, out, input_size=TEST_INPUT)
    path = tmp_path / "fp16.onnx"
    with pytest.raises(ConvertError, match="res3a_branch2a_acsquare_weights.*float16"):
        export_onnx(Artifacts(out), output=path, fp16=True)
    assert not path.exists()
    export_onnx(Artifacts(out), output=path)  # float32 is fine


def test_export_onnx_refuses_an_existing_file_without_force(fused, tmp_path) -> None:
    out = fused(18, "vars")
    path = tmp_path / "model.onnx"
    path.write_bytes(b"mine")
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(path)])
    assert result.exit_code == 3, result.output
    assert "already exists" in result.output and "--force" in result.output
    assert path.read_bytes() == b"mine"
    result = CliRunner().invoke(cli, ["export-onnx", str(out), "-o", str(path), "--force"])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(path))


def test_free_axes_follow_the_source(fused) -> None:
    """Which input axes the ONNX model leaves symbolic by default: both for a checkpoint's
    ResNet, the ones a program leaves open (-1) for a program, none for a fixed-size one."""
    from dataclasses import replace

    from acnet_convert.commands.export_onnx import free_axes
    from acnet_convert.out.artifacts import Artifacts, InputRecord

    manifest = Artifacts(fused(18, "vars")).read_manifest()
    assert manifest.source.kind == "checkpoint" and free_axes(manifest) == (2, 3)
    program = replace(manifest, source=replace(manifest.source, kind="program"))
    for shape, free in (((-1, 3, 32, -1), (3,)), ((-1, 3, -1, -1), (2, 3)), ((-1, 3, 32, 32), ())):
        assert free_axes(replace(program, inputs=(InputRecord("image", shape, "float32"),))) == free
