"""Today's Paddle users train in dygraph: a `paddle.save(model.state_dict())` checkpoint of
`acnet_convert.nn.models.resnet18_acnet` is a first-class input of `fuse` and `verify`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from examples.train_acnet import CLASSES, SIZE, train


@pytest.fixture(scope="module")
def dygraph_ckpt(tmp_path_factory) -> Path:
    ckpt = tmp_path_factory.mktemp("dygraph") / "ckpt"
    train(steps=20, ckpt_dir=ckpt, batch_size=8, log=lambda _line: None)
    return ckpt


def test_trained_dygraph_checkpoint_fuses_and_verifies(dygraph_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    fused = CliRunner().invoke(cli, ["fuse", str(dygraph_ckpt), str(out), "--input-size", str(SIZE), "--onnx"])
    assert fused.exit_code == 0, fused.output
    assert f"fused resnet18 ({len(CLASSES)} classes)" in fused.output
    verified = CliRunner().invoke(cli, ["verify", str(out), "--batches", "2", "--json", str(tmp_path / "r.json")])
    assert verified.exit_code == 0, verified.output
    report = json.loads((tmp_path / "r.json").read_text())
    # train graph, the PIR and the legacy deploy models (both formats by default), ONNX: 6 pairs
    assert report["ok"] and len(report["pairs"]) == 6
    assert {p["a"] for p in report["pairs"]} | {p["b"] for p in report["pairs"]} == {
        "train", "paddle-deploy", "paddle-legacy", "onnx"}
    # 20 steps leave BN's running statistics far from the activations, so eval-mode logits are
    # large (~1e4) and float32 rounding is ~1e-2 absolute: judge relative to the logits
    assert all(pair["max_rel_error"] < 1e-5 and pair["top1_agreement"] == 1.0 for pair in report["pairs"]), report["pairs"]


def test_state_dict_keys_map_to_legacy_names(dygraph_ckpt: Path) -> None:
    """paddle.save stores Paddle's own structured-name -> parameter-name table; the models
    name their parameters like resnet_acnet.py, so the table is the mapping rule."""
    import pickle

    from acnet_convert.read.checkpoint import read_checkpoint
    from acnet_convert.nn.plan import resnet

    with open(dygraph_ckpt / "model.pdparams", "rb") as f:
        raw = pickle.load(f)
    assert "convs.conv1.square.weight" in raw
    assert raw["StructuredToParameterName@@"]["convs.conv1.square.weight"] == "conv1_acsquare_weights"
    tensors = read_checkpoint(dygraph_ckpt).tensors
    assert set(tensors) == set(resnet(18, len(CLASSES)).train_tensors())


def test_deploy_weights_load_into_the_dygraph_deploy_model(dygraph_ckpt: Path, tmp_path: Path) -> None:
    """The README's five lines: `resnet18_acnet(classes, deploy=True)` takes fuse's
    deploy.pdparams with a plain `set_state_dict(paddle.load(...))`, and computes what the
    trained dygraph model (loaded from its own structured-name checkpoint) computes."""
    import numpy as np
    import paddle

    from acnet_convert.nn.models import resnet18_acnet

    out = tmp_path / "out"
    assert CliRunner().invoke(cli, ["fuse", str(dygraph_ckpt), str(out), "--input-size", str(SIZE),
                                    "--paddle-format", "pir"]).exit_code == 0
    deploy = resnet18_acnet(len(CLASSES), deploy=True)
    deploy.set_state_dict(paddle.load(str(out / "deploy.pdparams")))
    deploy.eval()
    train = resnet18_acnet(len(CLASSES))
    train.set_state_dict(paddle.load(str(dygraph_ckpt / "model.pdparams")))
    train.eval()
    x = paddle.to_tensor(np.random.default_rng(0).normal(size=(4, 3, SIZE, SIZE)).astype("float32"))
    expected, got = train(x).numpy(), deploy(x).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert not any(isinstance(m, paddle.nn.BatchNorm) for m in deploy.sublayers())
    with pytest.raises(KeyError, match="deploy=True"):  # not silently ignored, as Paddle would
        resnet18_acnet(len(CLASSES)).set_state_dict(paddle.load(str(out / "deploy.pdparams")))
