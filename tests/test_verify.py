"""`verify` end to end on real fused checkpoints: it passes when the graphs agree, and fails,
naming the culprit, when a deploy artifact or the source checkpoint is tampered with."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.checkpoint import load_pickle
from acnet_convert.cli import cli
from acnet_convert.convert import fuse, write_deploy_weights
from acnet_convert.errors import ConvertError
from acnet_convert.manifest import DEPLOY_WEIGHTS, manifest_plan, read_manifest
from acnet_convert.onnx_writer import export_onnx
from acnet_convert.verify import VerifyReport, verify
from tests.conftest import NUM_CLASSES, TEST_INPUT

FAST = ["--batch-size", "2", "--batches", "1"]
PAIR_KEYS = {"a", "b", "max_abs_error", "max_rel_error", "cosine", "top1_agreement", "pass"}
REPORT_KEYS = {
    "ok", "device", "arch", "num_classes", "input_size", "images", "atol", "rtol", "source", "pairs",
    "per_layer", "deploy_weights_consistent", "mismatched_tensors",
}
PERTURBED_LAYER = "res3a_branch2b"  # an ACB in the middle of ResNet-18
PERTURBED_BIAS = f"{PERTURBED_LAYER}_acsquare_bias"


def _with_onnx(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    export_onnx(dst)
    return dst


@pytest.fixture(scope="module")
def out18(fused, tmp_path_factory) -> Path:
    """ResNet-18 (per-variable checkpoint) fused, with model.onnx: three graphs."""
    return _with_onnx(fused(18, "vars"), tmp_path_factory.mktemp("verify") / "resnet18")


@pytest.fixture
def copy18(out18, tmp_path) -> Path:
    """A private copy of out18 to corrupt."""
    return Path(shutil.copytree(out18, tmp_path / "out"))


def _verify_cli(*args: str):
    return CliRunner().invoke(cli, ["verify", *args])


def _assert_match(report: VerifyReport, pairs: int) -> None:
    assert report.ok, report.format_table()
    assert len(report.pairs) == pairs
    for pair in report.pairs:
        # element-wise |b - a| <= atol + rtol * |a|. The fixtures' logits are large (up to ~1e4:
        # BN statistics after three training steps barely normalise), so max_abs_error is
        # ~1e-2 of float32 rounding while the relative error stays ~1e-6.
        assert pair.passed
        assert pair.max_rel_error < 1e-4
        assert pair.top1_agreement == 1.0
        assert pair.cosine > 0.999999
    assert report.deploy_weights_consistent and report.mismatched_tensors == []
    assert report.source.checked


def test_resnet18_graphs_agree(out18, ort_providers_asked) -> None:
    asked = ort_providers_asked
    notes, tracked = [], []

    def track(items, label):
        tracked.append((len(items), label))
        return items

    report = verify(out18, batch_size=4, batches=2, per_layer=True, note=notes.append, track=track)
    _assert_match(report, pairs=3)
    pairs = [(p.a, p.b) for p in report.pairs]
    assert pairs == [("train", "paddle-deploy"), ("train", "onnx"), ("paddle-deploy", "onnx")]
    assert report.images == 8 and tracked == [(2, "verifying")]
    assert report.device == "cpu" and any("using the CPU" in n for n in notes)
    assert asked == [["CPUExecutionProvider"]]  # the real ORT is never asked for CUDA here
    layers = report.to_json()["per_layer"]
    plan = manifest_plan(read_manifest(out18))
    assert [layer["name"] for layer in layers["layers"]] == [c.name for c in plan.convs()]
    assert layers["first_divergent_layer"] is None and all(layer["pass"] for layer in layers["layers"])


def test_resnet50_pdparams_graphs_agree(fused, tmp_path) -> None:
    out = _with_onnx(fused(50, "pdparams"), tmp_path / "resnet50")
    report = verify(out, batch_size=2, batches=1)
    _assert_match(report, pairs=3)
    assert report.arch == "resnet50" and report.num_classes == NUM_CLASSES


def test_cli_json_report_follows_the_schema(out18, tmp_path) -> None:
    path = tmp_path / "report.json"
    result = _verify_cli(str(out18), *FAST, "--per-layer", "--json", str(path))
    assert result.exit_code == 0, result.output
    assert "MATCH" in result.stdout and "train ~ paddle-deploy" in result.stdout
    report = json.loads(path.read_text())
    assert set(report) == REPORT_KEYS
    assert report["ok"] is True and report["device"] == "cpu" and report["images"] == 2
    assert (report["arch"], report["num_classes"], report["input_size"]) == ("resnet18", NUM_CLASSES, TEST_INPUT)
    assert set(report["source"]) == {"path", "sha256", "checked"} and report["source"]["checked"] is True
    assert report["source"]["sha256"] == read_manifest(out18)["source"]["sha256"]
    assert len(report["pairs"]) == 3 and all(set(p) == PAIR_KEYS for p in report["pairs"])
    assert set(report["per_layer"]) == {"first_divergent_layer", "layers"}
    assert all(set(layer) == {"name", "max_abs_error", "pass"} for layer in report["per_layer"]["layers"])
    assert report["deploy_weights_consistent"] is True and report["mismatched_tensors"] == []
    # --json - prints only the JSON on stdout
    result = _verify_cli(str(out18), *FAST, "--device", "cpu", "--json", "-")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == REPORT_KEYS


def test_perturbed_bias_in_inference_model_is_named_by_per_layer(copy18, tmp_path) -> None:
    from acnet_convert.paddle_writer import save_inference_model

    weights = load_pickle(copy18 / DEPLOY_WEIGHTS)
    weights[PERTURBED_BIAS] = weights[PERTURBED_BIAS].copy()
    weights[PERTURBED_BIAS][0] += 1.0
    save_inference_model(manifest_plan(read_manifest(copy18)), weights, copy18, TEST_INPUT)  # Paddle's jit.save

    path = tmp_path / "report.json"
    result = _verify_cli(str(copy18), *FAST, "--per-layer", "--json", str(path))
    assert result.exit_code == 1, result.output
    report = json.loads(path.read_text())
    assert report["ok"] is False
    assert report["per_layer"]["first_divergent_layer"] == PERTURBED_LAYER
    failing = [layer["name"] for layer in report["per_layer"]["layers"] if not layer["pass"]]
    assert failing == [PERTURBED_LAYER]  # each layer is judged on the train graph's input
    assert report["mismatched_tensors"] == [PERTURBED_BIAS]  # deploy.pdparams still has the old one
    assert f"first divergent layer {PERTURBED_LAYER}" in result.stdout and "MISMATCH" in result.stdout


def test_perturbed_bias_in_deploy_pdparams_is_listed(copy18, tmp_path) -> None:
    weights = load_pickle(copy18 / DEPLOY_WEIGHTS)
    weights["res4a_branch1_bias"][3] += 0.01
    write_deploy_weights(weights, copy18 / DEPLOY_WEIGHTS)
    path = tmp_path / "report.json"
    result = _verify_cli(str(copy18), *FAST, "--json", str(path))
    assert result.exit_code == 1, result.output
    report = json.loads(path.read_text())
    assert report["deploy_weights_consistent"] is False
    assert report["mismatched_tensors"] == ["res4a_branch1_bias"]
    assert all(pair["pass"] for pair in report["pairs"])  # the graphs themselves still agree
    assert "res4a_branch1_bias" in result.stdout and "MISMATCH" in result.stdout


def _add_to_last_float(path: Path, amount: float) -> None:
    """Change the last float32 of a per-variable tensor file (its data ends the file)."""
    data = bytearray(path.read_bytes())
    (value,) = struct.unpack("<f", data[-4:])
    data[-4:] = struct.pack("<f", value + amount)
    path.write_bytes(bytes(data))


def test_checkpoint_changed_after_fuse(checkpoints, tmp_path) -> None:
    ckpt = Path(shutil.copytree(checkpoints(18, "vars"), tmp_path / "ckpt"))
    out = tmp_path / "out"
    fuse(ckpt, out, input_size=TEST_INPUT)
    _add_to_last_float(ckpt / "fc_0.b_0", 1000.0)

    result = _verify_cli(str(out), *FAST)
    assert result.exit_code == 3, result.output
    assert "sha256" in result.output and "changed since it was fused" in result.output
    assert str(ckpt) in result.output and "--ckpt" in result.output

    path = tmp_path / "report.json"
    result = _verify_cli(str(out), *FAST, "--ckpt", str(ckpt), "--json", str(path))
    assert result.exit_code == 1, result.output  # it runs, and the changed bias shows
    assert "is not the checkpoint" in result.output and "comparing against it anyway" in result.output
    report = json.loads(path.read_text())
    assert report["source"]["checked"] is False and report["source"]["path"] == str(ckpt)
    assert not report["pairs"][0]["pass"]


def test_missing_source_checkpoint(checkpoints, tmp_path) -> None:
    ckpt = Path(shutil.copytree(checkpoints(18, "vars"), tmp_path / "ckpt"))
    out = tmp_path / "out"
    fuse(ckpt, out, input_size=TEST_INPUT)
    shutil.rmtree(ckpt)
    result = _verify_cli(str(out), *FAST)
    assert result.exit_code == 3, result.output
    assert str(ckpt) in result.output and "does not exist" in result.output


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda out: (out / "manifest.json").unlink(), "manifest.json"),
        (lambda out: (out / "inference.pdiparams").unlink(), "inference.pdiparams"),
        (lambda out: (out / "inference.json").write_text('{"base_code": '), "inference.json"),
        (lambda out: (out / DEPLOY_WEIGHTS).unlink(), DEPLOY_WEIGHTS),
        (lambda out: (out / "model.onnx").write_bytes(b"\x08\x07garbage" * 100), "model.onnx"),
    ],
    ids=["no-manifest", "no-pdiparams", "corrupt-json", "no-deploy-pdparams", "corrupt-onnx"],
)
def test_bad_out_dir_is_refused_naming_the_file(copy18, damage, needle) -> None:
    damage(copy18)
    result = _verify_cli(str(copy18), *FAST)
    assert result.exit_code == 3, result.output
    assert result.output.startswith("error: ") or "\nerror: " in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and needle in error[0], result.output
    assert "Traceback" not in result.output


def test_truncated_pdiparams_is_refused(copy18) -> None:
    params = copy18 / "inference.pdiparams"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    with pytest.raises(ConvertError, match="inference.pdiparams"):
        verify(copy18, batch_size=1, batches=1)


def test_inputs_file(out18, tmp_path) -> None:
    good = tmp_path / "images.npy"
    np.save(good, np.random.default_rng(1).normal(size=(3, 3, TEST_INPUT, TEST_INPUT)).astype(np.float32))
    report = verify(out18, inputs=good, batch_size=2)
    assert report.ok and report.images == 3

    for name, array in {
        "wrong-shape.npy": np.zeros((2, 3, TEST_INPUT + 1, TEST_INPUT), np.float32),
        "three-dims.npy": np.zeros((3, TEST_INPUT, TEST_INPUT), np.float32),
        "float64.npy": np.zeros((2, 3, TEST_INPUT, TEST_INPUT), np.float64),
    }.items():
        np.save(tmp_path / name, array)
        result = _verify_cli(str(out18), "--inputs", str(tmp_path / name))
        assert result.exit_code == 3, result.output
        assert name in result.output and "Traceback" not in result.output
    (tmp_path / "images.txt").write_text("1 2 3")
    result = _verify_cli(str(out18), "--inputs", str(tmp_path / "images.txt"))
    assert result.exit_code == 3 and ".npy" in result.output


def test_device_gpu_without_gpu_is_refused(out18) -> None:
    from acnet_convert.device import detect_gpu

    if detect_gpu()[0]:
        pytest.skip("this machine has a CUDA GPU")
    result = _verify_cli(str(out18), *FAST, "--device", "gpu")
    assert result.exit_code == 3, result.output
    assert "--device gpu" in result.output and "no CUDA GPU" in result.output


def test_compare_metrics() -> None:
    from acnet_convert.verify import compare

    a = np.array([[2e4, 0.5, -3.0], [1.0, 2.0, 3.0]])
    b = a + np.array([[1e-1, 5e-5, 0.0], [0.0, 0.0, 5e-5]])
    pair = compare(a, b, ("train", "onnx"), atol=1e-4, rtol=1e-5)
    # numpy.allclose's rule: 0.1 on 2e4 is within rtol, 5e-5 within atol
    assert pair.passed and pair.top1_agreement == 1.0
    assert pair.max_abs_error == pytest.approx(1e-1)
    # relative to each image's largest logit
    assert pair.max_rel_error == pytest.approx(max(1e-1 / 2e4, 5e-5 / 3.0))
    assert 0.999999 < pair.cosine <= 1.0

    worse = b.copy()
    worse[0, 1] += 1e-2  # 1e-2 on the logit 0.5: beyond atol + rtol * 0.5, whatever image 0's scale
    assert not compare(a, worse, ("train", "onnx"), 1e-4, 1e-5).passed
    worse = b.copy()
    worse[1, 0] += 1e-3  # 1e-3 > 1e-4 + 1e-5 * 1
    assert not compare(a, worse, ("train", "onnx"), 1e-4, 1e-5).passed
    swapped = a[:, [1, 0, 2]]
    assert compare(a, swapped, ("train", "onnx"), 1e-4, 1e-5).top1_agreement == 0.5

    nan = b.copy()
    nan[0, 1] = np.nan
    result = compare(a, nan, ("train", "onnx"), 1e-4, 1e-5)
    assert not result.passed and result.to_json()["max_abs_error"] is None


def test_static_batch_onnx_is_fed_image_by_image(copy18) -> None:
    export_onnx(copy18, static_batch=True)
    report = verify(copy18, batch_size=3, batches=1, device="cpu")
    assert report.ok and [p.b for p in report.pairs] == ["paddle-deploy", "onnx", "onnx"]
