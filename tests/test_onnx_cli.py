"""fuse, verify and inspect of an ONNX source through the command line (issue 22): the fused
model and its manifest, verify's verdict on it (and on a broken one: exit 1, the group named),
sums declined and left correct, usage errors, a changed source."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from acnet_convert.cli import cli  # noqa: E402
from fixtures import export_onnx as E  # noqa: E402
from tests.test_onnx_reader import run, save, tensor, weights  # noqa: E402
from tests.torch_onnx import onnx_export  # noqa: E402,F401 - a session fixture


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def repvgg(onnx_export, tmp_path_factory):
    """A RepVGG train-form export and its fuse output (OUT)."""
    source = onnx_export("repvgg", "legacy_unfolded")
    out = tmp_path_factory.mktemp("cli") / "out"
    code, text = invoke("fuse", source, out)
    assert code == 0, text
    return source, out, text


def test_fuse_writes_the_fused_model_and_its_manifest_without_paddle(repvgg, tmp_path):
    source, out, text = repvgg
    assert text.splitlines()[-2:] == [f"fused {source}: 5 branch sums into 5 convs, each proven",
                                      f"fused model: {out / 'model.onnx'} (wrote manifest.json, model.onnx)"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["format"] == "onnx" and manifest["formats"] == []
    assert [r["kind"] for r in manifest["fused"]] == ["sum"] * 5 and manifest["input_size"] == [32, 32]
    code = ("import sys; from acnet_convert.commands.fuse_onnx import fuse_onnx; "
            f"fuse_onnx({str(source)!r}, {str(tmp_path / 'o')!r}); print('paddle' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "False", done.stderr


def test_verify_passes_the_fused_model_per_layer_too(repvgg, tmp_path):
    _source, out, _ = repvgg
    code, text = invoke("verify", out, "--batches", "1", "--per-layer", "--json", tmp_path / "r.json")
    assert code == 0 and text.splitlines()[-1] == "MATCH", text
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(p["a"], p["b"], p["pass"]) for p in report["pairs"]] == [("train", "onnx", True)]
    layers = report["per_layer"]["layers"]
    assert len(layers) == 5 and all(layer["pass"] for layer in layers)
    assert "deploy weights" not in text


def test_verify_fails_a_broken_fused_model_and_names_the_group(repvgg, tmp_path):
    _source, out, _ = repvgg
    broken = tmp_path / "broken.onnx"
    model = onnx.load(str(out / "model.onnx"))
    rows = json.loads((out / "manifest.json").read_text())["fused"]
    bias = next(t for t in model.graph.initializer if t.name == rows[2]["deploy_tensors"][1])
    array = numpy_helper.to_array(bias).copy()
    array[0] += 0.05
    bias.CopyFrom(numpy_helper.from_array(array, bias.name))
    onnx.save(model, str(broken))
    code, text = invoke("verify", out, "--onnx", broken, "--batches", "1", "--per-layer")
    assert code == 1 and text.splitlines()[-1] == "MISMATCH", text
    assert f"first divergent group {rows[2]['name']}" in text


def test_verify_reads_image_files(repvgg, tmp_path):
    from PIL import Image

    _source, out, _ = repvgg
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (40, 48, 3), np.uint8)).save(images / f"{i}.png")
    code, text = invoke("verify", out, "--images", images, "--batch-size", "2")
    assert code == 0 and text.splitlines()[-1] == "MATCH", text
    assert "3 images of 32x32" in text


def test_inspect_lists_groups_of_the_model_and_of_its_output(repvgg):
    source, out, _ = repvgg
    code, text = invoke("inspect", source)
    assert code == 0 and "format: onnx" in text and "5 branch sums and 0 conv+BN fold into one conv each" in text
    assert "batch_norm 13->0" in text and "conv2d 10->5" in text
    code, text = invoke("inspect", out)
    assert code == 0 and "format: fuse-output" in text and "3x3+1x1+identity" in text


def test_a_changed_source_is_named_and_another_can_be_given(repvgg, tmp_path):
    source, out, _ = repvgg
    moved = tmp_path / "copy.onnx"
    model = onnx.load(str(source))
    model.doc_string = "changed"
    onnx.save(model, str(moved))
    manifest = json.loads((out / "manifest.json").read_text())
    other = tmp_path / "out"
    other.mkdir()
    (other / "model.onnx").write_bytes((out / "model.onnx").read_bytes())
    manifest["source"]["path"] = str(moved)
    (other / "manifest.json").write_text(json.dumps(manifest))
    code, text = invoke("verify", other, "--batches", "1")
    assert code == 3 and "changed since it was fused" in text
    code, text = invoke("verify", other, "--batches", "1", "--source", source)
    assert code == 0 and text.splitlines()[-1] == "MATCH", text


@pytest.mark.parametrize("flag", [["--arch", "resnet18"], ["--reference-layout"], ["--paddle-format", "pir"],
                                  ["--static-size"]])
def test_paddle_only_options_are_usage_errors(repvgg, tmp_path, flag):
    source, _out, _ = repvgg
    code, text = invoke("fuse", source, tmp_path / "o", *flag)
    assert code == 2 and "does not apply to an ONNX source" in text


def test_export_onnx_of_an_onnx_output_is_a_usage_error(repvgg):
    _source, out, _ = repvgg
    code, text = invoke("export-onnx", out, "--force")
    assert code == 2 and "fused from an ONNX model" in text


def test_a_file_that_is_not_onnx_exits_3_naming_it(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf \xff\xff\xff")
    code, text = invoke("fuse", bad, tmp_path / "o")
    assert code == 3 and str(bad) in text and len(text.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# sums that must be declined, and stay correct


def _conv_bn(prefix: str, x: str, pads, kernel=(3, 3)) -> tuple[list, list]:
    c = 2
    nodes = [helper.make_node("Conv", [x, f"{prefix}.w"], [f"{prefix}.c"], pads=pads),
             helper.make_node("BatchNormalization", [f"{prefix}.c", f"{prefix}.g", f"{prefix}.b", f"{prefix}.m",
                                                     f"{prefix}.v"], [f"{prefix}.bn"])]
    inits = [tensor(f"{prefix}.w", weights(c, 2, *kernel)), tensor(f"{prefix}.g", weights(c)),
             tensor(f"{prefix}.b", weights(c)), tensor(f"{prefix}.m", weights(c)),
             tensor(f"{prefix}.v", np.abs(weights(c)) + 0.5)]
    return nodes, inits


def test_declined_sums_are_named_with_the_reason_and_stay_correct(tmp_path):
    """Three ACB-like sums: aligned (folds), misaligned padding (one branch's taps sit a row
    below: declined, the reason named), and a branch BN that another op multiplies by (its
    branches fold alone, the sum stays an Add)."""
    nodes, inits = [], []
    for p, pads in (("a", [1, 1, 1, 1]), ("a2", [1, 1, 1, 1])):
        n, i = _conv_bn(p, "x", pads)
        nodes, inits = nodes + n, inits + i
    nodes += [helper.make_node("Add", ["a.bn", "a2.bn"], ["a.sum"], name="good_sum"),
              helper.make_node("Relu", ["a.sum"], ["a.relu"])]
    for p, pads in (("m", [1, 1, 1, 1]), ("m2", [0, 1, 2, 1])):
        n, i = _conv_bn(p, "a.relu", pads)
        nodes, inits = nodes + n, inits + i
    nodes += [helper.make_node("Add", ["m.bn", "m2.bn"], ["m.sum"], name="misaligned_sum"),
              helper.make_node("Relu", ["m.sum"], ["m.relu"])]
    for p in ("s", "s2"):
        n, i = _conv_bn(p, "m.relu", [1, 1, 1, 1])
        nodes, inits = nodes + n, inits + i
    nodes += [helper.make_node("Add", ["s.bn", "s2.bn"], ["s.sum"], name="shared_sum"),
              helper.make_node("Mul", ["s.sum", "s2.bn"], ["y"])]
    source = save(tmp_path / "neg.onnx", nodes, inits, inputs=(("x", ["n", 2, 5, 5]),))
    out = tmp_path / "out"
    code, text = invoke("fuse", source, out)
    assert code == 0, text
    x = weights(2, 2, 5, 5)
    want, got = run(source, x), run(out / "model.onnx", x)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(r["kind"], r["output"]) for r in manifest["fused"] if r["kind"] == "sum"] == [("sum", "a.sum")]
    declined = {d["op"]: d["reason"] for d in manifest["declined"]}
    assert "larger than the largest kernel" in declined["node #10 'misaligned_sum' (Add)"]
    assert {r["output"] for r in manifest["fused"] if r["kind"] == "conv_bn"} >= {"s.bn", "s2.bn"}
    code, text = invoke("verify", out, "--batches", "1", "--per-layer")
    assert code == 0 and text.splitlines()[-1] == "MATCH", text
    assert "1 fused conv(s) are part of a sum left as adds" in text  # the misaligned sum's foldable branch
    assert E.op_histogram(out / "model.onnx")["Add"] == 2


def test_a_model_that_runs_at_one_size_only_is_verified_there(onnx_export, tmp_path):
    """torch's legacy export of DBB declares any H/W but bakes its size into an Expand: verify at
    the default size is one line naming the model (exit 3); at its size (--inputs) it passes."""
    source = onnx_export("dbb", "legacy_folded", dynamic="batch_hw")
    out = tmp_path / "out"
    assert invoke("fuse", source, out)[0] == 0
    code, text = invoke("verify", out, "--batches", "1")
    assert code == 3 and f"ONNX Runtime cannot run {source}" in text and "Traceback" not in text
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32))
    code, text = invoke("verify", out, "--inputs", tmp_path / "x.npy")
    assert code == 0 and text.splitlines()[-1] == "MATCH", text
