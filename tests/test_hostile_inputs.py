"""Broken and hostile inputs to `fuse`: each is one clear line, exit 3, and no output left behind.

The reader-level cases (byte mutations, hypothesis, malicious pickles) are in test_checkpoint.py;
these go through the CLI, the way a pipeline meets them."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.commands.fuse import fuse as run_fuse
from acnet_convert.common.errors import ConvertError
from tests.conftest import TEST_INPUT


def fuse(*args: str):
    return CliRunner().invoke(cli, ["fuse", *map(str, args), "--input-size", str(TEST_INPUT)])


def assert_one_line_error(result, *needles: str, code: int = 3) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    # progress notes may come first; the failure itself is one line, the last
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def assert_nothing_written(parent: Path, *keep: str) -> None:
    assert sorted(p.name for p in parent.iterdir()) == sorted(keep)


@pytest.fixture
def tensors(checkpoints) -> dict[str, np.ndarray]:
    """The ResNet-18 weights of the pdparams fixture, to be spoiled by a test."""
    with open(checkpoints(18, "pdparams") / "model.pdparams", "rb") as f:
        return pickle.load(f)


def write_pdparams(directory: Path, tensors: dict) -> Path:
    directory.mkdir()
    with open(directory / "model.pdparams", "wb") as f:
        pickle.dump(tensors, f, protocol=4)
    return directory


# --- the checkpoint path itself ------------------------------------------------------------


def test_missing_file_and_empty_ckpt(tmp_path: Path) -> None:
    assert_one_line_error(fuse(tmp_path / "nope", tmp_path / "out"), str(tmp_path / "nope"), "does not exist")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(fuse(tmp_path / "file", tmp_path / "out"), str(tmp_path / "file"), "is a file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(fuse(tmp_path / "empty", tmp_path / "out"), str(tmp_path / "empty"), "empty")
    assert_nothing_written(tmp_path, "file", "empty")


# --- per-variable files ----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "bad-header", "unknown-dtype"])
def test_damaged_per_variable_file_is_named(checkpoints, tmp_path: Path, damage: str) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoints(18, "vars"), ckpt)
    victim = ckpt / "res4a_branch2a_acsquare_weights"
    data = bytearray(victim.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "bad-header":
        data[0] = 7  # LoDTensor version
    else:
        data[data.index(b"\x08\x05")+1] = 99  # TensorDesc field 1 (data_type) FP32 -> 99
    victim.write_bytes(bytes(data))
    assert_one_line_error(fuse(ckpt, tmp_path / "out"), str(victim))
    assert_nothing_written(tmp_path, "ckpt")


# --- pickles ---------------------------------------------------------------------------------


def test_truncated_and_non_pickle_pdparams(checkpoints, tmp_path: Path) -> None:
    data = (checkpoints(18, "pdparams") / "model.pdparams").read_bytes()
    for name, payload in (("truncated", data[: len(data) // 3]), ("text", b"not a pickle at all\n")):
        ckpt = tmp_path / name
        ckpt.mkdir()
        (ckpt / "model.pdparams").write_bytes(payload)
        assert_one_line_error(fuse(ckpt, tmp_path / "out"), str(ckpt / "model.pdparams"))
    assert_nothing_written(tmp_path, "truncated", "text")


class _Call:
    def __init__(self, func, *args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "numpy.save"])
def test_pickle_that_would_run_code_is_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "side-effect"
    func, args = {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.eval": (eval, (f"open({str(marker)!r}, 'w')",)),
        "numpy.save": (np.save, (str(marker), np.zeros(1))),
    }[payload]
    ckpt = write_pdparams(tmp_path / "ckpt", {"conv1_acsquare_weights": _Call(func, *args)})
    assert_one_line_error(fuse(ckpt, tmp_path / "out"), "refusing to load", str(ckpt / "model.pdparams"))
    assert not marker.exists() and not Path(str(marker) + ".npy").exists()
    assert_nothing_written(tmp_path, "ckpt")


# --- tensors that do not fit the architecture ---------------------------------------------


def test_missing_extra_misshapen_and_mistyped_tensors(tensors, tmp_path: Path) -> None:
    cases = {
        "missing": ({k: v for k, v in tensors.items() if k != "bn3b_branch2a_acver_mean"}, ("bn3b_branch2a_acver_mean", "[128]")),
        "extra": ({**tensors, "res9z_branch2a_weights": np.zeros((4, 4, 1, 1), np.float32)}, ("res9z_branch2a_weights", "unknown")),
        "shape": ({**tensors, "res4a_branch1_weights": np.zeros((256, 128, 3, 3), np.float32)}, ("res4a_branch1_weights", "[256, 128, 1, 1]")),
        "dtype": ({**tensors, "bn_conv1_acsquare_scale": tensors["bn_conv1_acsquare_scale"].astype(np.int32)}, ("bn_conv1_acsquare_scale", "int32")),
    }
    for name, (spoiled, needles) in cases.items():
        ckpt = write_pdparams(tmp_path / name, spoiled)
        assert_one_line_error(fuse(ckpt, tmp_path / "out"), str(ckpt), *needles)
    assert_nothing_written(tmp_path, *cases)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_weights_are_refused_unless_allowed(tensors, tmp_path: Path, value: float) -> None:
    spoiled = dict(tensors)
    spoiled["res3a_branch2b_achor_weights"] = spoiled["res3a_branch2b_achor_weights"].copy()
    spoiled["res3a_branch2b_achor_weights"][1, 2, 0, 1] = value
    ckpt = write_pdparams(tmp_path / "ckpt", spoiled)
    assert_one_line_error(fuse(ckpt, tmp_path / "out"), "res3a_branch2b_achor_weights", "NaN or Inf", "--allow-nonfinite")
    assert_nothing_written(tmp_path, "ckpt")

    result = fuse(ckpt, tmp_path / "out", "--allow-nonfinite")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "res3a_branch2b_achor_weights" in result.output
    assert (tmp_path / "out" / "inference.json").exists()


def test_negative_running_variance_is_refused(tensors, tmp_path: Path) -> None:
    spoiled = {**tensors, "bn5a_branch2a_acsquare_variance": -tensors["bn5a_branch2a_acsquare_variance"]}
    ckpt = write_pdparams(tmp_path / "ckpt", spoiled)
    assert_one_line_error(fuse(ckpt, tmp_path / "out"), "bn5a_branch2a_acsquare_variance", "negative")


# --- ambiguous checkpoint directories ---------------------------------------------------------


def test_two_formats_or_two_pdparams_ask_which(checkpoints, tmp_path: Path) -> None:
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.pdparams", "b.pdparams"):
        shutil.copy(checkpoints(18, "pdparams") / "model.pdparams", two / name)
    assert_one_line_error(fuse(two, tmp_path / "out"), "a.pdparams", "b.pdparams", "which")

    mixed = tmp_path / "mixed"
    shutil.copytree(checkpoints(18, "vars"), mixed)
    shutil.copy(checkpoints(18, "pdparams") / "model.pdparams", mixed)
    assert_one_line_error(fuse(mixed, tmp_path / "out"), "two checkpoint formats")
    assert_nothing_written(tmp_path, "two", "mixed")


# --- the output folder -------------------------------------------------------------------------


def test_unwritable_parent(checkpoints, tmp_path: Path, monkeypatch) -> None:
    # root ignores permission bits, so the unwritable parent is one the kernel refuses to all
    assert_one_line_error(fuse(checkpoints(18, "vars"), "/proc/acnet-out"), "/proc")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path else real_access(p, mode))
    assert_one_line_error(fuse(checkpoints(18, "vars"), tmp_path / "out"), str(tmp_path), "not writable")
    assert_nothing_written(tmp_path)


def test_disk_full_keeps_existing_out(checkpoints, fused, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    shutil.copytree(fused(18, "vars"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def no_space(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("acnet_convert.out.artifacts.Artifacts.write_deploy_weights", no_space)
    with pytest.raises(ConvertError, match=f"cannot write {out}: No space left"):
        run_fuse(checkpoints(18, "vars"), out, force=True, input_size=TEST_INPUT)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert_nothing_written(tmp_path, "out")


def _start_fuse(ckpt: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "acnet_convert", "fuse", str(ckpt), str(out), "--input-size", str(TEST_INPUT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_staging(proc: subprocess.Popen, parent: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(parent.glob(".out.partial-*")):
        assert proc.poll() is None, "fuse ended before it started writing"
        assert time.monotonic() < deadline, "fuse never started writing"
        time.sleep(0.02)


def test_sigkill_while_writing_leaves_no_out_and_rerun_succeeds(checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _start_fuse(checkpoints(18, "vars"), out)
    _wait_for_staging(proc, tmp_path)
    proc.kill()
    proc.communicate()
    assert not out.exists()
    result = fuse(checkpoints(18, "vars"), out)
    assert result.exit_code == 0, result.output
    assert (out / "inference.pdiparams").exists()
    assert_nothing_written(tmp_path, "out")  # the killed run's staging folder is cleaned up


def test_ctrl_c_exits_130_without_traceback_or_output(checkpoints, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _start_fuse(checkpoints(18, "vars"), out)
    _wait_for_staging(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted" and "Traceback" not in stdout + stderr
    assert_nothing_written(tmp_path)
