"""The newcomer's list (issue 21 §5): usage errors exit 2 everywhere, errors come before any
note, messages name what the input is (a folder of images, a FIFO, a README), a listing is
wrapped under its error, verify's verdict is coloured on a terminal (not with NO_COLOR) and
printed under -q when it is not a match, an interruption starts its own line, fuse prints no
zero counts, and an OUT fused with --allow-nonfinite can be verified."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.cli.endings import handled
from acnet_convert.cli.output import Output, use_colour
from acnet_convert.commands.fuse import FuseResult
from acnet_convert.commands.fuse import fuse as fuse_library
from acnet_convert.common import protocol
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.failures import failure
from acnet_convert.supervise.endings import Watched, ending
from acnet_convert.write.legacy import ops as legacy_ops
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.conftest import TEST_INPUT
from tests.lod_bytes import lod_file

FAST = ["--batch-size", "2", "--batches", "1"]


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def out18(fused) -> Path:
    return fused(18, "vars", onnx=True)  # shared with the session: read-only


# ------------------------------------------------------------------------------------------
# exit codes, and errors before notes


def test_usage_errors_exit_2(out18, checkpoints, tmp_path) -> None:
    (tmp_path / "x.npy").write_bytes(b"")
    cases = {
        "--labels goes with --images": ["verify", str(out18), "--labels", str(tmp_path / "l.txt")],
        "two ways to give images": ["verify", str(out18), "--images", str(tmp_path), "--inputs", str(tmp_path / "x.npy")],
        "--ckpt and --source name the same thing": ["verify", str(out18), "--ckpt", "a", "--source", "b"],
        "expected N or HxW": ["verify", str(out18), "--crop", "3x"],
        "each side must be in 32..8192": ["fuse", str(checkpoints(18, "vars")), str(tmp_path / "o"), "--input-size", "20"],
    }
    for needle, args in cases.items():
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_arch_on_a_program_is_a_usage_error(cnn_models, tmp_path) -> None:  # noqa: F811
    result = run("fuse", str(cnn_models("vgg_acb")), str(tmp_path / "o"), "--arch", "resnet18")
    assert result.exit_code == 2 and "describe ResNet-ACNet checkpoints" in result.output


def test_the_error_comes_before_any_note(out18, tmp_path) -> None:
    result = run("verify", str(out18), "--images", str(tmp_path / "nowhere"))
    assert result.exit_code == 3
    assert result.stderr.splitlines() == [f"error: --images {tmp_path / 'nowhere'} is not a folder"]


# ------------------------------------------------------------------------------------------
# messages


def test_what_is_not_a_model_is_named_for_what_it_is(out18, tmp_path) -> None:
    images = tmp_path / "photos"
    images.mkdir()
    for name in ("cat.jpg", "dog.png"):
        (images / name).write_bytes(b"\xff\xd8\xff\xe0 a photo")
    result = run("fuse", str(images), str(tmp_path / "o"))
    assert result.exit_code == 3 and "holds no Paddle tensor file (cat.jpg, dog.png): it is not a model" in result.output
    readme = tmp_path / "README.md"
    readme.write_text("# hello\n")
    result = run("fuse", str(readme), str(tmp_path / "o"))
    assert result.exit_code == 3 and "is a file, expected a train-form inference model (PREFIX.json or PREFIX.pdmodel" \
        in result.output and ".pdparams file or its prefix" in result.output
    fifo = tmp_path / "x.npy"
    os.mkfifo(fifo)
    for args, needle in [(["--inputs", str(fifo)], "--inputs {} is a FIFO, not a file".format(fifo)),
                         (["--inputs", str(images)], "expected a .npy file"),
                         (["--images", str(images), "--labels", str(images)], f"--labels {images} is a folder, not a file"),
                         (["--onnx", str(images)], f"--onnx {images} is a folder, not a file")]:
        result = run("verify", str(out18), *args)
        assert result.exit_code == 3 and needle in result.output, (args, result.output)
    result = run("verify", str(fifo))
    assert result.exit_code == 3 and "is not a folder (OUT is the folder fuse wrote)" in result.output


def test_a_listing_is_wrapped_under_its_error(checkpoints, tmp_path, monkeypatch) -> None:
    """The ops a writer translates (81) used to be one line of 1,000 characters. The work's
    error travels as the worker tells it (`common.failures`), through the protocol, to the
    command's stderr: the library's refusal is sent that way here (a worker would not see this
    test's monkeypatch)."""
    monkeypatch.delitem(legacy_ops.HANDLERS, "pool2d")
    with pytest.raises(ConvertError) as raised:
        fuse_library(checkpoints(18, "vars"), tmp_path / "o", input_size=TEST_INPUT, paddle_format="legacy")
    assert not (tmp_path / "o").exists()
    told = failure(raised.value, verbose=False)
    message = protocol.decode(protocol.encode("error", code=told.code, line=told.line, traceback=None).rstrip(b"\n"))

    @click.command()
    @click.pass_obj
    @handled
    def command(ui: Output) -> None:
        ending(Watched(memory=1 << 30, time_limit=60, error=message, status=3))

    result = CliRunner().invoke(command, [], obj=Output(False, False))
    assert result.exit_code == 3, result.output
    lines = result.stderr.splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert "'pool2d' has no translation to the legacy Paddle format; use --paddle-format pir" in lines[error]
    assert "translated ops" not in lines[error] and lines[error + 1].startswith("  translated ops: ")
    listing = lines[error + 1:]
    assert len(listing) > 3 and all(len(line) <= 80 for line in listing)
    assert "conv2d" in " ".join(listing)


def test_a_name_in_a_listing_cannot_forge_a_line() -> None:
    """The listing's lines are joined by newlines on their way to the command process: a newline
    inside a name stays escaped, on the line of its name."""
    told = failure(ConvertError("x.json: refused", listing=("ops", ["conv2d", "evil\nerror: forged"])), False)
    assert told.code == 3 and told.line.splitlines() == ["error: x.json: refused", "  ops: conv2d, evil\\nerror: forged"]


# ------------------------------------------------------------------------------------------
# the terminal


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch) -> None:
    tty = SimpleNamespace(isatty=lambda: True)
    pipe = SimpleNamespace(isatty=lambda: False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(tty) and not use_colour(pipe)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(tty)


def test_the_verdict_is_coloured_on_a_terminal(monkeypatch, capsys) -> None:
    monkeypatch.setattr("acnet_convert.cli.output.use_colour", lambda _stream: True)
    Output(False, False).verdict("MISMATCH")
    assert capsys.readouterr().out == "\x1b[31m\x1b[1mMISMATCH\x1b[0m\n"
    monkeypatch.setattr("acnet_convert.cli.output.use_colour", lambda _stream: False)
    Output(False, False).verdict("MATCH")
    assert capsys.readouterr().out == "MATCH\n"
    Output(True, False).verdict("MATCH")  # -q: nothing on a match
    Output(True, False).verdict("MISMATCH", always=True)
    assert capsys.readouterr().out == "MISMATCH\n"


def test_quiet_verify_prints_the_verdict_of_a_mismatch(out18, tmp_path) -> None:
    bad = Path(shutil.copytree(out18, tmp_path / "out"))
    with open(bad / "deploy.pdparams", "rb") as f:
        weights = pickle.load(f)
    name = sorted(weights)[0]
    weights[name] = weights[name] + np.float32(1)
    with open(bad / "deploy.pdparams", "wb") as f:
        pickle.dump(weights, f)
    result = run("-q", "verify", str(bad), *FAST)
    assert result.exit_code == 1 and result.stdout == "MISMATCH\n" and result.stderr == ""
    assert run("-q", "verify", str(out18), *FAST).stdout == ""  # a match stays silent


def test_an_interruption_starts_its_own_line() -> None:
    """Ctrl-C while a progress bar is drawn: 'interrupted' goes below the bar, not after it."""

    @click.command()
    @click.pass_obj
    @handled
    def command(ui: Output) -> None:
        ui.bar_open = True  # what Output.progress sets while its bar is on screen
        raise KeyboardInterrupt

    result = CliRunner().invoke(command, [], obj=Output(False, False))
    assert result.exit_code == 130 and result.stderr == "\ninterrupted\n"


def test_fuse_prints_no_zero_counts() -> None:
    def summary(sums: int, conv_bn: int, ignored: int, kind: str = "program") -> str:
        rows = [{"kind": "sum"}] * sums + [{"kind": "conv_bn"}] * conv_bn
        manifest = SimpleNamespace(arch=None, num_classes=None, fused=rows)
        source = SimpleNamespace(path=Path("train/inference.json"), kind=kind, ignored=ignored)
        return FuseResult(Path("out"), source, manifest, [], [], [], []).summary()

    assert summary(2, 0, 0) == "fused train/inference.json: 2 branch sums into 2 convs, each proven"
    assert summary(0, 3, 0) == "fused train/inference.json: 3 conv+BN into 3 convs, each proven"
    assert summary(0, 0, 0) == "fused train/inference.json: nothing folds"
    assert summary(17, 4, 0, "checkpoint").endswith("17 branch sums, 4 conv+BN into 21 convs, each proven")
    assert summary(17, 4, 169, "checkpoint").endswith("; ignored 169 non-weight variables")


# ------------------------------------------------------------------------------------------
# --allow-nonfinite has a way through


def test_an_out_fused_with_allow_nonfinite_can_be_verified(checkpoints, tmp_path) -> None:
    """A NaN in one class's FC bias: fuse --allow-nonfinite warns and says how to verify;
    verify refuses the source without the flag and, with it, compares every other output and
    counts the NaN logits that both graphs agree on."""
    from acnet_convert.read.checkpoint import read_checkpoint

    ckpt = Path(shutil.copytree(checkpoints(18, "vars"), tmp_path / "ckpt"))
    bias = read_checkpoint(ckpt).tensors["fc_0.b_0"].copy()
    bias[3] = np.nan
    (ckpt / "fc_0.b_0").write_bytes(lod_file(bias))
    out = tmp_path / "out"
    fused = run("fuse", str(ckpt), str(out), "--input-size", str(TEST_INPUT), "--allow-nonfinite")
    assert fused.exit_code == 0, fused.output
    assert "verify this OUT with --allow-nonfinite" in fused.stderr
    refused = run("verify", str(out), *FAST)
    assert refused.exit_code == 3 and "holds NaN or Inf (pass --allow-nonfinite" in refused.output
    allowed = run("verify", str(out), *FAST, "--allow-nonfinite")
    assert allowed.exit_code == 0, allowed.output
    assert "4 output values are NaN or Inf in both graphs alike (--allow-nonfinite): compared as equal" in allowed.stderr
