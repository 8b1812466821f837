"""`verify` end to end on real fuse outputs: every graph OUT holds is compared (train, the PIR and
legacy Paddle models, ONNX), the JSON report follows its documented schema, the train graph is
what the independent fixture program computes, and tampering with a deploy artifact or the
source is found and named."""
from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.verify import verdict
from acnet_convert.verify import report as verify_report
from acnet_convert.out.artifacts import Artifacts
from acnet_convert.cli import cli
from acnet_convert.commands.fuse import fuse
from acnet_convert.verify.device import resolve_device
from acnet_convert.common.errors import ConvertError
from acnet_convert.commands.export_onnx import export_onnx
from acnet_convert.commands.verify import verify
from acnet_convert.verify.report import VerifyReport
from tests.cnn_fixtures import cnn_models  # noqa: F401,F811 - a fixture
from tests.conftest import NUM_CLASSES, TEST_INPUT

FAST = ["--batch-size", "2", "--batches", "1"]
PAIR_KEYS = {"a", "b", "max_abs_error", "max_rel_error", "tolerance_ratio", "cosine", "top1_agreement",
             "top1_differs", "top1_differs_names", "atol", "rtol", "fp16", "elementwise_pass", "informative",
             "atol_capped", "inconclusive", "pass"}
REPORT_KEYS = {
    "ok", "verdict", "device", "onnx_providers", "notes", "arch", "num_classes", "sizes", "images", "inputs", "atol",
    "rtol", "noise_floor", "source", "graphs", "pairs", "per_layer", "deploy_weights_consistent", "mismatched_tensors", "image_set",
}
LAYER_KEYS = {"name", "output", "max_abs_error", "scale", "tolerance_ratio", "pass", "why"}
PERTURBED_LAYER = "res3a_branch2b"  # an ACB in the middle of ResNet-18
PERTURBED_BIAS = f"{PERTURBED_LAYER}_acsquare_bias"
GRAPHS = ["train", "paddle-deploy", "paddle-legacy", "onnx"]


@pytest.fixture(scope="module")
def out18(fused) -> Path:
    """ResNet-18 (per-variable checkpoint) fused into both Paddle formats (auto writes both for
    it), with model.onnx; shared with the session, so read-only here."""
    return fused(18, "vars", onnx=True)


@pytest.fixture
def copy18(fused, tmp_path) -> Path:
    """A private copy of a ResNet-18 output with model.onnx, to corrupt."""
    return Path(shutil.copytree(fused(18, "vars", onnx=True), tmp_path / "out"))


def _verify_cli(*args: str):
    return CliRunner().invoke(cli, ["verify", *args])


def _expected_device():
    """What --device auto picks on this machine (a GPU machine runs the same asserts)."""
    return resolve_device("auto")


def _assert_match(report: VerifyReport, pairs: int) -> None:
    assert report.ok, report.format_table()
    assert len(report.pairs) == pairs
    for pair in report.pairs:
        assert pair.passed and pair.tolerance_ratio < 0.5
        assert pair.top1_agreement == 1.0 and pair.cosine > 0.999999
    assert report.deploy_weights_consistent and report.mismatched_tensors == []
    assert report.source.checked


def test_resnet18_every_graph_agrees(out18, ort_providers_asked) -> None:
    notes, tracked = [], []

    def track(items, label):
        tracked.append((len(items), label))
        return items

    report = verify(out18, batch_size=4, batches=2, per_layer=True, note=notes.append, track=track)
    _assert_match(report, pairs=6)
    assert [(p.a, p.b) for p in report.pairs] == [(a, b) for i, a in enumerate(GRAPHS) for b in GRAPHS[i + 1:]]
    assert [name for name, _ in report.graphs] == GRAPHS
    # 2 batches at 64x64 and one at 55x75: a checkpoint's ResNet takes any size (tests/test_verify_sizes.py)
    assert report.images == 12 and tracked == [(3, f"running {g}") for g in GRAPHS]
    expected = _expected_device()
    assert report.device == expected.name and notes[0] == expected.notes[0]
    assert ort_providers_asked == [list(expected.ort_providers)]  # CUDA only where a GPU really is
    assert report.onnx_providers[: len(expected.ort_providers)] == list(expected.ort_providers)[: len(report.onnx_providers)]
    manifest = Artifacts(out18).read_manifest()
    assert [layer.name for layer in report.layers] == [row["name"] for row in manifest.fused]
    assert report.first_divergent_layer is None and all(layer.passed for layer in report.layers)


def _train_logits(ckpt: Path, images: np.ndarray, tmp: Path) -> np.ndarray:
    from acnet_convert.verify.runners import train_files, train_runner
    from acnet_convert.read.source import open_source

    source = open_source(ckpt, input_size=images.shape[-1])
    files = train_files(source, tmp)
    return train_runner(files, resolve_device("cpu"), ckpt)(images)[0]


@pytest.mark.parametrize("depth,fmt", [(18, "vars"), (50, "pdparams")])
def test_train_graph_equals_the_fixture_program(checkpoints, tmp_path, images, depth: int, fmt: str) -> None:
    """verify's train graph is built from the package's plan; the fixture's static program is a
    second, hand-written port of resnet_acnet.py. A wrong plan (a stride on the wrong conv, a
    missing branch) fails here even where train and deploy, both from the plan, still agree."""
    from fixtures.make_checkpoint import reference_logits

    ckpt = checkpoints(depth, fmt)
    expected = reference_logits(ckpt, depth, NUM_CLASSES, images)
    got = _train_logits(ckpt, images, tmp_path)
    scale = np.abs(expected).max(axis=1, keepdims=True)
    assert got.shape == expected.shape
    assert (np.abs(got - expected) <= 1e-4 + 1e-5 * scale).all()


def test_cli_json_report_follows_the_documented_schema(out18, tmp_path) -> None:
    path = tmp_path / "report.json"
    result = _verify_cli(str(out18), *FAST, "--per-layer", "--json", str(path))
    assert result.exit_code == 0, result.output
    assert "MATCH" in result.stdout and "train ~ paddle-deploy" in result.stdout
    report = json.loads(path.read_text())
    assert set(report) == REPORT_KEYS
    documented = verify_report.__doc__
    for key in REPORT_KEYS | PAIR_KEYS | LAYER_KEYS:  # the docstring describes every key
        assert re.search(rf'"{key}"', documented), key
    assert report["ok"] is True and report["images"] == 4 and report["inputs"] == "random"
    assert report["device"] == _expected_device().name
    assert (report["arch"], report["num_classes"]) == ("resnet18", NUM_CLASSES)
    assert report["sizes"] == [{"height": TEST_INPUT, "width": TEST_INPUT, "images": 2},
                               {"height": 55, "width": 75, "images": 2}]
    assert set(report["source"]) == {"path", "kind", "sha256", "checked"} and report["source"]["checked"] is True
    assert report["source"]["sha256"] == Artifacts(out18).read_manifest().source.sha256
    assert [g["name"] for g in report["graphs"]] == GRAPHS
    assert len(report["pairs"]) == 6 and all(set(p) == PAIR_KEYS for p in report["pairs"])
    assert set(report["per_layer"]) == {"first_divergent_layer", "images", "layers"}
    assert all(set(layer) == LAYER_KEYS for layer in report["per_layer"]["layers"])
    assert report["deploy_weights_consistent"] is True and report["mismatched_tensors"] == []
    assert report["image_set"] is None
    # the notes: the device choice and the ONNX Runtime provider that ran
    assert report["notes"][0] == _expected_device().notes[0]
    assert any(n.startswith("ONNX Runtime ran model.onnx with ") for n in report["notes"])
    assert report["onnx_providers"] and report["onnx_providers"][-1] == "CPUExecutionProvider"
    # --json - prints only the JSON on stdout
    result = _verify_cli(str(out18), *FAST, "--device", "cpu", "--json", "-")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)) == REPORT_KEYS


def _rewrite_inference_params(out: Path, changes: dict[str, np.ndarray]) -> None:
    """Change tensors of OUT/inference.pdiparams only (Paddle loads and saves it)."""
    import paddle

    from acnet_convert.write.pir import save_program
    from acnet_convert.read.program import load_program

    artifacts = Artifacts(out)
    program = load_program(artifacts.program("pir"), artifacts.params)
    for name, value in changes.items():
        program.scope.find_var(name).get_tensor().set(np.ascontiguousarray(value), paddle.CPUPlace())
    save_program(program, artifacts.prefix)


def test_perturbed_bias_in_inference_model_is_named_by_per_layer(copy18, tmp_path) -> None:
    weights = Artifacts(copy18).load_deploy_weights()
    bias = weights[PERTURBED_BIAS].copy()
    bias[0] += 1.0
    _rewrite_inference_params(copy18, {PERTURBED_BIAS: bias})

    path = tmp_path / "report.json"
    result = _verify_cli(str(copy18), *FAST, "--per-layer", "--json", str(path))
    assert result.exit_code == 1, result.output
    report = json.loads(path.read_text())
    assert report["ok"] is False
    assert report["per_layer"]["first_divergent_layer"] == PERTURBED_LAYER
    failing = [layer["name"] for layer in report["per_layer"]["layers"] if not layer["pass"]]
    assert failing == [PERTURBED_LAYER]  # each group is judged on the train graph's own input
    assert report["mismatched_tensors"] == [PERTURBED_BIAS]  # deploy.pdparams still has the old one
    pairs = {(p["a"], p["b"]): p["pass"] for p in report["pairs"]}
    assert pairs == {("train", "paddle-deploy"): False, ("train", "paddle-legacy"): False, ("train", "onnx"): True,
                     ("paddle-deploy", "paddle-legacy"): True,  # both read the edited inference.pdiparams
                     ("paddle-deploy", "onnx"): False, ("paddle-legacy", "onnx"): False}
    assert f"first divergent group {PERTURBED_LAYER}" in result.stdout and "MISMATCH" in result.stdout


def test_perturbed_bias_in_deploy_pdparams_is_listed(copy18, tmp_path) -> None:
    artifacts = Artifacts(copy18)
    weights = artifacts.load_deploy_weights()
    weights["res4a_branch1_bias"][3] += 0.01
    artifacts.write_deploy_weights(weights)
    path = tmp_path / "report.json"
    result = _verify_cli(str(copy18), *FAST, "--json", str(path))
    assert result.exit_code == 1, result.output
    report = json.loads(path.read_text())
    assert report["deploy_weights_consistent"] is False
    assert report["mismatched_tensors"] == ["res4a_branch1_bias"]
    assert all(pair["pass"] for pair in report["pairs"])  # the graphs themselves still agree
    assert "res4a_branch1_bias" in result.stdout and "MISMATCH" in result.stdout


def test_legacy_model_is_checked_too(out18, tmp_path) -> None:
    """verify checks every Paddle model OUT holds: a broken legacy program fails the run."""
    out = Path(shutil.copytree(out18, tmp_path / "out"))
    (out / "inference.pdmodel").write_bytes(b"\x0a\x03bad" * 10)
    result = _verify_cli(str(out), *FAST)
    assert result.exit_code == 3, result.output
    assert "inference.pdmodel" in result.output
    (out / "inference.pdmodel").unlink()
    result = _verify_cli(str(out), *FAST)
    assert result.exit_code == 3 and "inference.pdmodel is missing" in result.output


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

    for flag in ("--ckpt", "--source"):
        path = tmp_path / f"report{flag}.json"
        result = _verify_cli(str(out), *FAST, flag, str(ckpt), "--json", str(path))
        assert result.exit_code == 1, result.output  # it runs, and the changed bias shows
        assert "is not the checkpoint" in result.output and "comparing against it anyway" in result.output
        report = json.loads(path.read_text())
        assert report["source"]["checked"] is False and report["source"]["path"] == str(ckpt)
        assert not report["pairs"][0]["pass"]
        assert any("comparing against it anyway" in n for n in report["notes"])


def test_program_source_changed_after_fuse(cnn_models, tmp_path) -> None:  # noqa: F811 - the fixture
    source = Path(shutil.copytree(cnn_models("repvgg").parent, tmp_path / "model")) / "inference"
    out = tmp_path / "out"
    fuse(source, out)
    params = source.with_suffix(".pdiparams")
    data = bytearray(params.read_bytes())
    data[-1] ^= 0x01
    params.write_bytes(bytes(data))
    result = _verify_cli(str(out), *FAST)
    assert result.exit_code == 3, result.output
    assert "model" in result.output and "changed since it was fused" in result.output and "--source" in result.output
    result = _verify_cli(str(out), *FAST, "--source", str(source))
    assert result.exit_code in (0, 1) and "comparing against it anyway" in result.output


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
        (lambda out: (out / "deploy.pdparams").unlink(), "deploy.pdparams"),
        (lambda out: (out / "model.onnx").write_bytes(b"\x08\x07garbage" * 100), "model.onnx"),
    ],
    ids=["no-manifest", "no-pdiparams", "corrupt-json", "no-deploy-pdparams", "corrupt-onnx"],
)
def test_bad_out_dir_is_refused_naming_the_file(copy18, damage, needle) -> None:
    damage(copy18)
    result = _verify_cli(str(copy18), *FAST)
    assert result.exit_code == 3, result.output
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
    assert report.ok and report.images == 3 and report.inputs == "npy"

    for name, array in {
        "wrong-channels.npy": np.zeros((2, 2, TEST_INPUT, TEST_INPUT), np.float32),
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
    from acnet_convert.verify.device import detect_gpu

    if detect_gpu()[0]:
        pytest.skip("this machine has a CUDA GPU")
    result = _verify_cli(str(out18), *FAST, "--device", "gpu")
    assert result.exit_code == 3, result.output
    assert "--device gpu" in result.output and "no CUDA GPU" in result.output


def test_onnx_written_elsewhere_static_batch_dynamic_size_and_fp16(copy18, tmp_path) -> None:
    artifacts = Artifacts(copy18)
    static = tmp_path / "static.onnx"
    export_onnx(artifacts, output=static, static_batch=True)
    report = verify(copy18, onnx=static, batch_size=3, batches=1, device="cpu", second_size=False)
    assert report.ok and dict(report.graphs)["onnx"] == str(static)
    assert any("batch fixed to 1: fed in steps" in n for n in report.notes)

    dynamic = tmp_path / "dynamic.onnx"
    export_onnx(artifacts, output=dynamic)  # a checkpoint's ResNet takes any size: the default
    assert verify(copy18, onnx=dynamic, batch_size=2, batches=1).ok

    half = tmp_path / "half.onnx"
    export_onnx(artifacts, output=half, fp16=True)
    report = verify(copy18, onnx=half, batch_size=4, batches=1, second_size=False)  # float16, not sizes
    fp16 = [p for p in report.pairs if p.fp16]
    assert [(p.a, p.b) for p in fp16] == [("train", "onnx"), ("paddle-deploy", "onnx"), ("paddle-legacy", "onnx")]
    assert all(p.rtol == verdict.FP16_RTOL and p.top1_agreement is not None for p in fp16)
    assert all(p.tolerance_ratio < 0.6 for p in fp16)  # measured 0.31: float16 uses a third of its tolerance
    assert report.ok, report.format_table()
    assert "float16 model: held to atol 0.01" in report.format_table()

    with pytest.raises(ConvertError, match="does not exist"):
        verify(copy18, onnx=tmp_path / "nowhere.onnx")


def test_onnx_with_another_fixed_size_is_refused(copy18, tmp_path) -> None:
    import onnx

    model = onnx.load(str(copy18 / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = TEST_INPUT * 2
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ConvertError, match=rf"takes input \[N, 3, {2 * TEST_INPUT}, {2 * TEST_INPUT}\]"):
        verify(copy18, onnx=tmp_path / "other.onnx", batch_size=1, batches=1)


def test_train_graph_keeps_every_batchnorm(out18, tmp_path) -> None:
    """Paddle 3.3 folds BatchNorm into convs whenever oneDNN is on, even with graph passes
    off: the train graph would be Paddle's own fused model. Its config deletes those passes;
    Paddle's optimised program, saved, still holds every batch_norm."""
    from paddle import inference

    from acnet_convert.verify.runners import predictor_config, train_files
    from acnet_convert.read.source import open_source

    source = open_source(Artifacts(out18).read_manifest().source.path, input_size=TEST_INPUT)
    bns = sum(node.op == "batch_norm" for node in source.graph.nodes)
    program, params = train_files(source, tmp_path)

    def optimised_batch_norms(config, folder: Path) -> int:
        config.enable_save_optim_model(True)
        config.set_optim_cache_dir(str(folder))
        inference.create_predictor(config)
        return len(re.findall(r'"[a-z_]+\.batch_norm_?"', (folder / "_optimized.json").read_text()))

    cpu = resolve_device("cpu")
    ours = predictor_config(program, params, cpu, as_written=True)
    assert bns == 3 * 17 + 4  # 17 ACBs of three BNs each, 4 projection 1x1 convs
    assert optimised_batch_norms(ours, tmp_path / "ours") == bns
    plain = predictor_config(program, params, cpu, as_written=False)
    plain.switch_ir_optim(False)  # what "graph passes off" alone gives
    assert optimised_batch_norms(plain, tmp_path / "plain") == 0


def test_batch_norm_without_scale_and_bias_is_verified_not_a_crash(tmp_path) -> None:
    """`BatchNorm2D(C, weight_attr=False, bias_attr=False)`: Paddle 3.3.1's oneDNN batch_norm kernel
    segfaults on it, in the train graph and in a deploy graph that keeps one (after a relu). verify
    runs such programs with Paddle's plain CPU kernels and says so. (A child process: before this
    was handled, the crash took the interpreter with it.)"""
    import subprocess
    import sys

    import paddle
    from paddle import nn

    class Net(nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2D(3, 4, 3, padding=1, bias_attr=False)
            self.bn1 = nn.BatchNorm2D(4, weight_attr=False, bias_attr=False)
            self.bn2 = nn.BatchNorm2D(4, weight_attr=False, bias_attr=False)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, image):
            return self.fc(paddle.flatten(self.bn2(paddle.nn.functional.relu(self.bn1(self.conv(image)))), 1))

    paddle.seed(0)
    net = Net()
    for bn in (net.bn1, net.bn2):
        bn._mean.set_value(np.full(4, 0.3, np.float32))
        bn._variance.set_value(np.full(4, 1.7, np.float32))
    net.eval()
    prefix = tmp_path / "model" / "inference"
    paddle.jit.save(net, str(prefix), input_spec=[paddle.static.InputSpec([None, 3, 8, 8], "float32", "image")])
    out = tmp_path / "out"
    fuse(prefix, out, paddle_format="both")
    proc = subprocess.run([sys.executable, "-m", "acnet_convert", "verify", str(out), *FAST], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "MATCH" in proc.stdout and "batch_norm without scale or bias" in proc.stdout + proc.stderr


def test_inputs_of_any_size_for_a_model_of_dynamic_size(tmp_path) -> None:
    """A train model exported with a dynamic H x W takes --inputs of any size; a fixed-size one
    (the checkpoint fixture) keeps refusing another size (test_inputs_file)."""
    import paddle

    from acnet_convert.commands.fuse import fuse

    class Net(paddle.nn.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.conv = paddle.nn.Conv2D(3, 4, 3, padding=1, bias_attr=False)
            self.bn = paddle.nn.BatchNorm2D(4)

        def forward(self, image):
            return paddle.nn.functional.adaptive_avg_pool2d(self.bn(self.conv(image)), 1).flatten(1)

    paddle.seed(0)
    net = Net()
    net.bn._variance.set_value(np.full(4, 2.0, np.float32))
    net.eval()
    spec = paddle.static.InputSpec([None, 3, None, None], "float32", "image")
    paddle.jit.save(net, str(tmp_path / "train" / "inference"), input_spec=[spec])
    fuse(tmp_path / "train", tmp_path / "out", onnx=True)  # any size: the ONNX model too, by default
    for size in (17, 40):
        images = tmp_path / f"images{size}.npy"
        np.save(images, np.random.default_rng(size).normal(size=(2, 3, size, size)).astype(np.float32))
        report = verify(tmp_path / "out", inputs=images, batch_size=2)
        assert report.ok and report.sizes == [(size, size, 2)], report.format_table()
