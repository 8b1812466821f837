"""Today's Paddle users train in dygraph: a `paddle.save(model.state_dict())` checkpoint of
`acnet_convert.models.resnet18_acnet` is a first-class input of `fuse` and `verify`."""
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
    assert report["ok"] and len(report["pairs"]) == 3
    # 20 steps leave BN's running statistics far from the activations, so eval-mode logits are
    # large (~1e4) and float32 rounding is ~1e-2 absolute: judge relative to the logits
    assert all(pair["max_rel_error"] < 1e-5 and pair["top1_agreement"] == 1.0 for pair in report["pairs"]), report["pairs"]


def test_state_dict_keys_map_to_legacy_names(dygraph_ckpt: Path) -> None:
    """paddle.save stores Paddle's own structured-name -> parameter-name table; the models
    name their parameters like resnet_acnet.py, so the table is the mapping rule."""
    import pickle

    from acnet_convert.checkpoint import read_checkpoint
    from acnet_convert.plan import resnet

    with open(dygraph_ckpt / "model.pdparams", "rb") as f:
        raw = pickle.load(f)
    assert "convs.conv1.square.weight" in raw
    assert raw["StructuredToParameterName@@"]["convs.conv1.square.weight"] == "conv1_acsquare_weights"
    tensors = read_checkpoint(dygraph_ckpt).tensors
    assert set(tensors) == set(resnet(18, len(CLASSES)).train_tensors())
