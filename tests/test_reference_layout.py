"""`fuse --reference-layout`: OUT/persistables/ is what the reference resnet_acnet.py deploy
program (deploy=True, ported in fixtures/make_checkpoint.py) loads with load_vars, and that
program then computes what our deploy model computes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.read.lod_tensor import read_lod_tensor
from fixtures.make_checkpoint import deploy_reference_logits, reference_logits
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.conftest import NUM_CLASSES, TEST_INPUT
from tests.test_legacy_writer import run_predictor


def _fuse(source: Path, out: Path, *extra: str):
    return CliRunner().invoke(cli, ["fuse", str(source), str(out), "--input-size", str(TEST_INPUT), "--reference-layout",
                                    "--paddle-format", "pir", *extra])


@pytest.mark.parametrize(("depth", "legacy_bias"), [(18, False), (50, False), (18, True)])
def test_reference_deploy_program_loads_persistables_and_matches(checkpoints, images, tmp_path, depth, legacy_bias) -> None:
    ckpt = checkpoints(depth, "vars", legacy_bias)
    out = tmp_path / "out"
    result = _fuse(ckpt, out)
    assert result.exit_code == 0, result.output
    reference = deploy_reference_logits(out / "persistables", depth, NUM_CLASSES, images)
    ours, _ = run_predictor(out / "inference.json", out / "inference.pdiparams", images)
    scale = max(1.0, float(np.abs(ours).max()))
    assert np.abs(reference - ours).max() <= 1e-4 * scale
    assert (reference.argmax(1) == ours.argmax(1)).all()
    if legacy_bias:  # the pre-BN bias is folded in: the reference train program agrees too
        train = reference_logits(ckpt, depth, NUM_CLASSES, images, legacy_bias=True)
        assert np.abs(reference - train).max() <= 1e-4 * scale


def test_persistables_hold_fused_acbs_and_unchanged_1x1_convs_and_bns(checkpoints, tmp_path) -> None:
    ckpt = checkpoints(18, "vars")
    out = tmp_path / "out"
    assert _fuse(ckpt, out).exit_code == 0
    files = {p.name for p in (out / "persistables").iterdir()}
    # ResNet-18 (resnet_acnet.py): 17 ACBs (stem + 16 3x3), 4 projection 1x1 convs (res2a,
    # res3a, res4a, res5a: is_first, or channels / stride change), the FC
    acbs = ["conv1"] + [f"res{s}{b}_branch2{c}" for s in (2, 3, 4, 5) for b in "ab" for c in "ab"]
    projections = ["res2a_branch1", "res3a_branch1", "res4a_branch1", "res5a_branch1"]
    expected = {f"{n}_acsquare_{t}" for n in acbs for t in ("weights", "bias")}
    expected |= {f"{n}_weights" for n in projections}
    expected |= {f"bn{n[3:]}_{f}" for n in projections for f in ("scale", "offset", "mean", "variance")}
    expected |= {"fc_0.w_0", "fc_0.b_0"}
    assert files == expected
    for name in ("res3a_branch1_weights", "bn3a_branch1_variance", "bn5a_branch1_scale", "fc_0.w_0"):
        assert (out / "persistables" / name).read_bytes() == (ckpt / name).read_bytes(), name
    square = read_lod_tensor((out / "persistables" / "res3a_branch2a_acsquare_weights").read_bytes(), "w")
    assert square.shape == (128, 64, 3, 3) and square.dtype == np.float32


def test_reference_layout_is_a_usage_error_for_other_sources(cnn_models, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["fuse", str(cnn_models("vgg_acb", "pir")), str(out), "--reference-layout"])
    assert result.exit_code == 2, result.output
    assert "--reference-layout" in result.output and "not a ResNet-ACNet checkpoint" in result.output
    assert not out.exists()
