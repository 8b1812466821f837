"""Any CNN: users' own train-form models (fixtures/cnn_models.py: MobileNets, VGG, U-Net, SE,
5x5/7x7, cropped branches, foreign ACB classes, RepVGG, MobileOne, PP-LCNetV2, negatives),
exported with paddle.jit.save in both formats, fused by `acnet-convert fuse`, and compared with
the dygraph models themselves (the oracle) with calibrated BN statistics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.commands.fuse import fuse
from acnet_convert.read.program import load_program, program_files
from acnet_convert.read.program_reader import read_graph
from fixtures.cnn_models import MODELS
from tests.cnn_fixtures import cnn_models, cnn_reference  # noqa: F401 - fixtures
from tests.predict import paddle_predict

# what each model must fold: branch sums (ACBs, RepVGG, ...) at least this many
SUMS = {
    "mobilenet_v1_acb": 3, "mobilenet_v2_acb": 3, "vgg_acb": 3, "unet_acb": 5, "se_hardswish_acb": 3,
    "cropped_acb": 3, "foreign_acb": 4, "repvgg": 5, "mobileone_lcnet": 6, "reused_layer": 2,
    "neg_strides": 1, "neg_misaligned": 1, "neg_shared_bn": 1, "neg_unsupported_op": 2,
}
# the negatives hold one sum that must be left as it is, for this reason
# (neg_shared_bn folds whole: its second read of the BN output is an add of the same input, affine too)
DECLINED = {"neg_strides": "different strides", "neg_misaligned": "larger than the largest kernel"}


def run_paddle(program: Path, params: Path, images: np.ndarray) -> np.ndarray:
    # Paddle 3.3.1's oneDNN rejects PIR interpolate ops (PaddlePaddle/Paddle#79749)
    return paddle_predict(program, params, images, onednn=False)[0][0]


@pytest.fixture(scope="module")
def fused_cnn(cnn_models, tmp_path_factory):  # noqa: F811 - the fixture is imported above
    root = tmp_path_factory.mktemp("fused_cnn")
    made: dict[tuple[str, str], tuple[Path, object]] = {}

    def get(name: str, fmt: str = "pir") -> Path:
        if (name, fmt) not in made:
            out = root / f"{name}_{fmt}"
            fuse(cnn_models(name, fmt), out)  # the library: what is tested is the deploy model
            made[(name, fmt)] = out
        return made[(name, fmt)]

    return get


@pytest.mark.parametrize("fmt", ["pir", "legacy"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_deploy_model_computes_the_users_model(fused_cnn, cnn_reference, name: str, fmt: str) -> None:  # noqa: F811
    out = fused_cnn(name, fmt)
    images = np.random.default_rng(1).normal(size=(3, *MODELS[name].input_shape)).astype(np.float32)
    expected = np.asarray(cnn_reference(name, images))
    got = run_paddle(out / "inference.json", out / "inference.pdiparams", images)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    if expected.ndim == 2:
        assert (got.argmax(1) == expected.argmax(1)).all()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "program" and manifest["source"]["format"] == fmt
    sums = [row for row in manifest["fused"] if row["kind"] == "sum"]
    assert len(sums) >= SUMS[name]
    for row in sums:  # named after the largest branch's weight, which the row lists
        assert row["deploy_tensors"][0] in {b["weight"] for b in row["branches"]}
    if name in DECLINED:
        assert len(manifest["declined"]) == 1 and DECLINED[name] in manifest["declined"][0]["reason"]
    else:
        assert manifest["declined"] == [] or name == "mobilenet_v2_acb"  # its residual adds read two tensors


@pytest.mark.parametrize("name", sorted(MODELS))
def test_deploy_program_has_no_bn_after_a_conv_and_nothing_left_of_the_branches(fused_cnn, name: str) -> None:
    out = fused_cnn(name)
    graph = read_graph(load_program(*program_files(out)))
    producers = graph.producers()
    for node in graph.nodes:
        if node.op == "batch_norm":
            assert graph.nodes[producers[node.inputs[0]]].op != "conv2d", node.where()
    manifest = json.loads((out / "manifest.json").read_text())
    ops, train = graph.op_counts(), manifest["ops"]["train"]
    # one conv per fused group and per conv that was not in one
    branch_convs = sum(len([b for b in row["branches"] if b["kind"] == "conv"]) for row in manifest["fused"])
    assert ops["conv2d"] == train["conv2d"] - branch_convs + len(manifest["fused"])
    if name == "cropped_acb":  # the crops and pads of the asymmetric branches went with them
        assert not {"slice", "pad3d", "squeeze", "unsqueeze"} & set(ops)
    if name == "foreign_acb":
        assert "add_n" not in ops


def test_repvgg_identity_and_1x1_land_in_the_3x3(fused_cnn) -> None:
    manifest = json.loads((fused_cnn("repvgg") / "manifest.json").read_text())
    kinds = [sorted(b["kind"] + "x".join(map(str, b["kernel"])) for b in row["branches"]) for row in manifest["fused"]]
    assert ["conv1x1", "conv3x3", "identity1x1"] in kinds
    assert all(row["kernel"] == [3, 3] for row in manifest["fused"] if row["kind"] == "sum")
    assert all(row["residual"] < 1e-12 and row["probes"] for row in manifest["fused"])  # each fold proven


def test_unsupported_op_is_kept_in_paddle_and_named_by_onnx(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    source = cnn_models("neg_unsupported_op")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(source), str(out), "--onnx"])
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error")]
    assert len(errors) == 1 and "cumsum" in lines[errors[0]]  # the op, then what is supported, wrapped
    assert lines[errors[0] + 1].startswith("  supported ops: ") and "conv2d" in " ".join(lines[errors[0] + 1:])
    assert not out.exists()  # nothing half-written
    result = CliRunner().invoke(cli, ["fuse", str(source), str(out)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["export-onnx", str(out)])
    assert result.exit_code == 3 and "cumsum" in result.stderr
    assert not (out / "model.onnx").exists()


def test_folder_with_a_program_and_a_checkpoint_asks_which(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    import shutil

    folder = tmp_path / "both"
    shutil.copytree(cnn_models("repvgg").parent, folder)
    (folder / "model.pdparams").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["fuse", str(folder), str(tmp_path / "out")])
    assert result.exit_code == 3
    assert "inference.json" in result.stderr and "model.pdparams" in result.stderr
    # naming the prefix says which
    result = CliRunner().invoke(cli, ["fuse", str(folder / "inference"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
