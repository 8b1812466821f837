"""`fuse` end to end: the deploy Paddle inference model computes what the legacy static train
program (fixtures/, Paddle's own API) computes on the same checkpoint."""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from fixtures.make_checkpoint import reference_logits
from tests.conftest import NUM_CLASSES, TEST_INPUT
from tests.predict import paddle_predict


def run_inference_model(out: Path, images: np.ndarray) -> np.ndarray:
    return paddle_predict(out / "inference.json", out / "inference.pdiparams", images)[0][0]


# both checkpoint forms at 18, the bottleneck plan at 50 (a .pdparams ResNet-50 is read by test_verify)
@pytest.mark.parametrize(
    "depth,fmt,legacy_bias",
    [(18, "vars", False), (18, "pdparams", False), (50, "vars", False), (18, "vars", True)],
)
def test_deploy_model_matches_static_train_program(fused, checkpoints, images, depth, fmt, legacy_bias) -> None:
    out = fused(depth, fmt, legacy_bias)
    expected = reference_logits(checkpoints(depth, fmt, legacy_bias), depth, NUM_CLASSES, images, legacy_bias=legacy_bias)
    got = run_inference_model(out, images)

    assert got.shape == (len(images), NUM_CLASSES)
    assert np.abs(got - expected).max() < 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    # not trivially equal: the logits actually vary across images and classes
    assert np.ptp(expected) > 1e-2


def test_deploy_program_has_no_batch_norm_and_dynamic_batch(fused, images) -> None:
    out = fused(50, "vars")
    program = (out / "inference.json").read_text()
    assert "conv2d" in program
    assert "batch_norm" not in program
    single = run_inference_model(out, images[:1])
    several = run_inference_model(out, images)
    np.testing.assert_allclose(single[0], several[0], atol=1e-5)


def test_outputs_and_manifest(fused, checkpoints) -> None:
    out = fused(18, "vars")
    assert sorted(p.name for p in out.iterdir()) == [
        "deploy.pdparams", "inference.json", "inference.pdiparams", "inference.pdmodel", "inference.yml", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "resnet18" and manifest["num_classes"] == NUM_CLASSES
    assert manifest["input_size"] == [TEST_INPUT, TEST_INPUT]
    assert manifest["source"]["path"] == str(checkpoints(18, "vars").resolve())
    assert len(manifest["source"]["sha256"]) == 64
    assert manifest["ignored_variables"] > 0  # the Momentum velocities and the learning rate
    kinds = [row["kind"] for row in manifest["fused"]]
    assert kinds.count("sum") == 17 and kinds.count("conv_bn") == 4  # every 7x7/3x3 ACB, every 1x1
    stem = manifest["fused"][0]
    assert stem["name"] == "conv1" and stem["kernel"] == [7, 7] and stem["stride"] == [2, 2]
    assert sorted(tuple(b["kernel"]) for b in stem["branches"]) == [(1, 7), (7, 1), (7, 7)]
    assert stem["deploy_tensors"] == ["conv1_acsquare_weights", "conv1_acsquare_bias"]
    assert manifest["ops"]["deploy"].get("batch_norm", 0) == 0
    with open(out / "deploy.pdparams", "rb") as f:
        weights = pickle.load(f)
    assert {"conv1_acsquare_weights", "conv1_acsquare_bias", "res2a_branch1_weights", "res2a_branch1_bias", "fc_0.w_0"} <= set(weights)
    assert not any("acver" in name or "achor" in name or name.startswith("bn") for name in weights)
    assert weights["conv1_acsquare_weights"].dtype == np.float32
    assert not list(out.parent.glob(".*partial*"))
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not 0700


def test_legacy_pre_bn_bias_is_folded(fused, checkpoints, images) -> None:
    """Ignoring the pre-BN square bias (as the reference aggregator did) gives a different model."""
    with_bias = run_inference_model(fused(18, "vars", legacy_bias=True), images)
    ckpt = checkpoints(18, "vars", legacy_bias=True)
    assert (ckpt / "conv1.acsquare.conv2d.output.1.b_0").exists()
    manifest = json.loads((fused(18, "vars", legacy_bias=True) / "manifest.json").read_text())
    sums = [row for row in manifest["fused"] if row["kind"] == "sum"]
    assert sums and all(any(b["conv_bias"] for b in row["branches"]) for row in sums)
    expected = reference_logits(ckpt, 18, NUM_CLASSES, images, legacy_bias=True)
    assert np.abs(with_bias - expected).max() < 1e-4


def _fuse_cli(*args: str):
    return CliRunner().invoke(cli, ["fuse", *args, "--input-size", str(TEST_INPUT)])


def test_existing_out_is_refused_without_force(fused, checkpoints, tmp_path) -> None:
    out = tmp_path / "out"
    shutil.copytree(fused(18, "vars"), out)
    result = _fuse_cli(str(checkpoints(18, "vars")), str(out))
    assert result.exit_code == 3, result.output
    assert "already exists" in result.output and "--force" in result.output
    marker = out / "keep-me"
    marker.write_text("x")
    # --force replaces an earlier fuse output, but never deletes a file fuse did not write
    result = _fuse_cli(str(checkpoints(18, "vars")), str(out), "--force")
    assert result.exit_code == 3, result.output
    assert "keep-me" in result.output and marker.exists()
    marker.unlink()
    result = _fuse_cli(str(checkpoints(18, "vars")), str(out), "--force")
    assert result.exit_code == 0, result.output
    assert (out / "inference.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name != "out"]


def _copy_ckpt(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _assert_refused(result, *needles: str) -> None:
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]
    assert "Traceback" not in result.output


def test_missing_tensor_is_named(checkpoints, tmp_path) -> None:
    ckpt = _copy_ckpt(checkpoints(18, "vars"), tmp_path / "ckpt")
    (ckpt / "res3a_branch2a_acver_weights").unlink()
    out = tmp_path / "out"
    _assert_refused(_fuse_cli(str(ckpt), str(out)), "res3a_branch2a_acver_weights", str(ckpt), "missing")
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_wrong_shape_is_named(checkpoints, tmp_path) -> None:
    src = checkpoints(18, "pdparams")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    with open(next(src.glob("*.pdparams")), "rb") as f:
        tensors = pickle.load(f)
    tensors["bn2a_branch2b_achor_variance"] = np.ones(7, np.float32)
    with open(ckpt / "model.pdparams", "wb") as f:
        pickle.dump(tensors, f)
    out = tmp_path / "out"
    _assert_refused(_fuse_cli(str(ckpt), str(out)), "bn2a_branch2b_achor_variance", "[7]", "[64]")
    assert not out.exists()


class _Touch:
    """Unpickling this would create a file: the malicious payload."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_malicious_pickle_is_refused_without_running(tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    victim = tmp_path / "pwned"
    with open(ckpt / "model.pdparams", "wb") as f:
        pickle.dump({"conv1_acsquare_weights": _Touch(victim)}, f)
    out = tmp_path / "out"
    _assert_refused(_fuse_cli(str(ckpt), str(out)), "refusing to load", "model.pdparams")
    assert not victim.exists()
    assert not out.exists()
