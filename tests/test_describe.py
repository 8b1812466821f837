"""`inspect`: the report of a checkpoint, a program or a fuse output, checked against counts
taken from the weights on disk and against published ResNet-50 figures; checkpoints and OUT
folders are described without importing Paddle."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.read.checkpoint import read_checkpoint
from acnet_convert.cli import cli
from acnet_convert.commands.describe import ROW_KEYS, plan_rows
from acnet_convert.nn.plan import resnet
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.conftest import NUM_CLASSES, TEST_INPUT

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAYER_KEYS = set(ROW_KEYS)
TOTAL_KEYS = {"params_train", "params_deploy", "macs_train", "macs_deploy"}


def run(*args: str):
    return CliRunner().invoke(cli, ["inspect", *map(str, args)])


def inspect_json(path: Path, *options: str) -> dict:
    """The report `inspect --json` prints, from the library (the CLI's own tests use `run`)."""
    from acnet_convert.commands.describe import describe

    input_size = int(options[options.index("--input-size") + 1]) if "--input-size" in options else None
    return json.loads(json.dumps(describe(path, input_size=input_size)))


def test_resnet50_matches_published_figures() -> None:
    plan = resnet(50, 1000)
    # torchvision's ResNet-50 has 25,557,032 learned parameters, counting a BN's scale and
    # offset (2 per channel) over 26,560 BN channels: 64 (stem) + 3*(64+64+256)+256 +
    # 4*(128+128+512)+512 + 6*(256+256+1024)+1024 + 3*(512+512+2048)+2048. The deploy form has
    # one bias per channel instead.
    assert sum(row["params_deploy"] for row in plan_rows(plan)) == 25_557_032 - 26_560
    # ResNet-50 at 224x224 is ~4.09 G multiply-adds (He et al. 2016: 3.8 G FLOPs counting
    # multiply-adds, torchvision: 4.09 GFLOPS); ACNet's extra Kx1 and 1xK branches add K^2+2K
    # over K^2 per 3x3 and 7x7 kernel only in the train graph.
    train, deploy = plan.macs(224, deploy=False), plan.macs(224, deploy=True)
    assert deploy == pytest.approx(4.09e9, rel=0.02)
    assert deploy < train < deploy * 15 / 9


def test_checkpoint_report(checkpoints) -> None:
    ckpt = checkpoints(18, "vars")
    report = inspect_json(ckpt)

    assert {"format", "arch", "num_classes", "input_size", "layers", "totals", "ops", "declined", "ignored", "problems"} <= set(report)
    assert (report["arch"], report["num_classes"], report["input_size"]) == ("resnet18", NUM_CLASSES, [224, 224])
    assert report["problems"] == []
    assert all(set(row) == LAYER_KEYS for row in report["layers"])
    assert set(report["totals"]) == TOTAL_KEYS
    kinds = [row["kind"] for row in report["layers"]]
    # stem + 16 3x3 ACBs; 4 projections: res3a-res5a, and res2a because resnet_acnet.py's basic
    # blocks project in the very first block (is_first) although channels and stride match
    assert len(kinds) == 22 and kinds[-1] == "fc"
    assert kinds.count("sum") == 17 and kinds.count("conv_bn") == 4
    assert report["layers"][0] == {
        "name": "conv1", "kind": "sum", "branches": ["7x7", "7x1", "1x7"], "kernel": [7, 7], "stride": [2, 2],
        "groups": 1, "in": 3, "out": 64,
        "params_train": 64 * 3 * (49 + 7 + 7) + 3 * 2 * 64, "params_deploy": 64 * 3 * 49 + 64,
    }
    # the optimizer's state is listed, not taken for weights
    assert any("_velocity_" in name for name in report["ignored"])
    assert "@LR_DECAY_COUNTER@" in report["ignored"]

    # the train-form count is what the checkpoint holds, minus BN running statistics
    tensors = read_checkpoint(ckpt).tensors
    learned = [n for n in resnet(18, NUM_CLASSES).train_tensors() if not n.endswith(("_mean", "_variance"))]
    assert report["totals"]["params_train"] == sum(np.asarray(tensors[n]).size for n in learned)

    bigger = inspect_json(ckpt, "--input-size", "448")["totals"]
    assert bigger["params_deploy"] == report["totals"]["params_deploy"]
    assert bigger["macs_deploy"] == pytest.approx(4 * report["totals"]["macs_deploy"], rel=0.01)


def test_deploy_params_equal_the_fused_weights_on_disk(checkpoints, fused, tmp_path: Path) -> None:
    out = fused(18, "vars")
    with open(out / "deploy.pdparams", "rb") as f:
        weights = pickle.load(f)  # our own output, written by this session
    on_disk = sum(np.asarray(w).size for w in weights.values())
    assert set(weights) == set(resnet(18, NUM_CLASSES).deploy_tensors())

    from_checkpoint = inspect_json(checkpoints(18, "vars"), "--input-size", str(TEST_INPUT))
    assert from_checkpoint["totals"]["params_deploy"] == on_disk
    report = inspect_json(out)
    assert report["totals"]["params_deploy"] == on_disk
    # the graph's own counts (taken at fuse time) agree with the plan's, in both forms
    assert report["totals"] == from_checkpoint["totals"]
    assert report["ops"]["deploy"].get("batch_norm", 0) == 0 and report["ops"]["train"]["batch_norm"] == 55
    assert [row["name"] for row in report["layers"]] == [row["name"] for row in from_checkpoint["layers"][:-1]]
    assert (report["format"], report["arch"], report["num_classes"]) == ("fuse-output", "resnet18", NUM_CLASSES)
    assert report["input_size"] == [TEST_INPUT, TEST_INPUT]  # from the manifest
    assert report["problems"] == []
    files = {f["name"]: f["bytes"] for f in report["files"]}
    assert files["deploy.pdparams"] == (out / "deploy.pdparams").stat().st_size
    assert {"manifest.json", "inference.pdiparams"} <= set(files)
    bigger = inspect_json(out, "--input-size", str(2 * TEST_INPUT))
    assert bigger["input_size"] == [2 * TEST_INPUT, 2 * TEST_INPUT]
    assert bigger["totals"]["macs_deploy"] == pytest.approx(4 * report["totals"]["macs_deploy"], rel=0.05)

    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(out / "manifest.json", partial)
    result = run(partial)
    assert result.exit_code == 0
    assert "problems: 4" in result.stdout and "missing inference.pdiparams" in result.stdout
    assert "missing inference.pdmodel" in result.stdout  # the manifest says both Paddle formats were written


def test_pdparams_checkpoint_reports_the_same_network(checkpoints) -> None:
    vars_report = inspect_json(checkpoints(18, "vars"))
    report = inspect_json(checkpoints(18, "pdparams"))
    assert report["format"] != vars_report["format"]
    assert report["problems"] == []
    for key in ("arch", "num_classes", "layers", "totals"):
        assert report[key] == vars_report[key]


def test_human_report(checkpoints) -> None:
    result = run(checkpoints(18, "vars"))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "resnet18" in text and "classes: 10" in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    table = lines[start : start + 23]  # header, 21 convs, fc
    assert table[-1].startswith("fc_0")
    assert len({len(line) for line in table}) == 1  # right-aligned numbers end in one column
    assert "deploy/train" in text
    assert any(line.startswith("ignored: ") and "_velocity_" in line for line in lines)
    assert lines[-1] == "problems: none"


def test_invalid_checkpoint_still_inspects(checkpoints, tmp_path: Path) -> None:
    ckpt = shutil.copytree(checkpoints(18, "vars"), tmp_path / "ckpt")
    (ckpt / "res3a_branch2a_achor_weights").unlink()

    report = inspect_json(ckpt)
    assert report["arch"] == "resnet18"
    assert len(report["problems"]) == 1 and "res3a_branch2a_achor_weights" in report["problems"][0]

    result = run(ckpt)
    assert result.exit_code == 0
    assert "problems: 1" in result.stdout and "'res3a_branch2a_achor_weights'" in result.stdout


def test_unreadable_input_is_one_line_exit_3(tmp_path: Path) -> None:
    result = run(tmp_path / "nowhere")
    assert result.exit_code == 3
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "nowhere" in result.stderr

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.pdparams").write_bytes(b"not a pickle")
    result = run(tmp_path / "junk")
    assert result.exit_code == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "junk" in result.stderr


def test_entry_point_and_no_paddle_import(checkpoints, fused) -> None:
    ckpt, out = checkpoints(18, "vars"), fused(18, "vars")
    proc = subprocess.run(
        [str(BIN / "acnet-convert"), "inspect", str(ckpt), "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["arch"] == "resnet18"

    code = (
        "import sys\n"
        "from acnet_convert.commands.describe import describe, format_report\n"
        f"for path in ({str(ckpt)!r}, {str(out)!r}):\n"
        "    format_report(describe(path))\n"
        "assert 'paddle' not in sys.modules, 'paddle was imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_program_report_names_groups_and_declined_sums(cnn_models) -> None:
    """A user's own train-form model: what folds, by kind, and why a sum is left alone."""
    report = inspect_json(cnn_models("repvgg"))
    assert report["format"] == "pir" and report["problems"] == []
    sums = [row for row in report["layers"] if row["kind"] == "sum"]
    assert any(row["branches"] == ["3x3", "1x1", "identity"] or sorted(row["branches"]) == ["1x1", "3x3", "identity"] for row in sums)
    assert report["ops"]["deploy"].get("batch_norm", 0) == 0
    assert report["totals"]["params_deploy"] < report["totals"]["params_train"]
    assert report["totals"]["macs_deploy"] < report["totals"]["macs_train"]

    negative = inspect_json(cnn_models("neg_strides"))
    assert any("different strides" in d["reason"] for d in negative["declined"])
    text = run(cnn_models("neg_strides")).stdout
    assert "sums left as they are: 1" in text and "different strides" in text


def test_inspect_json_follows_the_readme_schema(checkpoints, fused, cnn_models) -> None:  # noqa: F811
    """Every key of a checkpoint's, an OUT's and a program's report is in the README's schema;
    kernels, strides and the input size are [H, W] ints, every count an int."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("`inspect --json` schema", 1)[1].split("```", 2)[1]
    documented = set(re.findall(r'"([a-z0-9_]+)":', block))
    for path in (checkpoints(18, "vars"), fused(18, "vars"), cnn_models("repvgg")):
        report = inspect_json(path)
        keys = set(report) | {k for row in report["layers"] for k in row} | set(report["totals"])
        keys |= {k for d in report["declined"] for k in d} | set(report.get("source") or {})
        keys |= {k for f in report.get("files", []) for k in f}
        assert keys <= documented, keys - documented
        size = report["input_size"]
        assert size is None or (len(size) == 2 and all(type(v) is int for v in size))
        for row in report["layers"]:
            for key in ("kernel", "stride"):
                assert row[key] is None or (len(row[key]) == 2 and all(type(v) is int for v in row[key])), row
            assert all(type(row[k]) is int for k in ("in", "out", "params_train", "params_deploy"))
