"""The CLI's contract under signals, bad numbers, closed pipes, hostile names and its own bugs:
one line, the documented exit code, nothing left behind (issue 12, rows 7, 9, 10, 13 and 14)."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from acnet_convert.common.failures import failure
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.conftest import TEST_INPUT

ROOT = Path(__file__).resolve().parents[1]


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error(result, *needles: str, code: int = 3) -> str:
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert "Traceback" not in result.output, result.output
    assert lines[-1].startswith(("error: ", "internal error: ")), result.output
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


def start(*args: object, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "acnet_convert", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for(proc: subprocess.Popen, found, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not found():
        assert proc.poll() is None, f"ended before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"never {what}"
        time.sleep(0.02)


# --- SIGTERM is Ctrl-C: exit 143, nothing left --------------------------------------------------
# old: SIGTERM killed the process where it stood (returncode -15): fuse left its staging folder,
# verify its ~70 MB temporary folder in TMPDIR.


def test_sigterm_during_fuse_exits_143_and_leaves_nothing(checkpoints, tmp_path: Path) -> None:
    proc = start("fuse", checkpoints(18, "vars"), tmp_path / "out", "--input-size", TEST_INPUT)
    wait_for(proc, lambda: list(tmp_path.glob(".out.partial-*")), "started writing")
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated" and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_verify_removes_its_temporary_files(fused, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = start("verify", fused(18, "vars"), "--batches", "200", "--batch-size", "16", env=env)
    wait_for(proc, lambda: list(tmp.glob("acnet-convert-*/acnet-verify-*")), "made its temporary folder")
    time.sleep(1.0)  # inside the run, not at its start
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "terminated"
    assert list(tmp.iterdir()) == []


def test_ctrl_c_during_paddle_import_exits_130(checkpoints, tmp_path: Path) -> None:
    """A Ctrl-C that lands inside a C extension's initialisation surfaces as `ImportError:
    initialization failed` (pybind11 converts it); old: exit 4 "internal error" with that text.
    The stand-in paddle below does exactly that conversion, deterministically."""
    fake = tmp_path / "fake" / "paddle"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import os, signal\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    for _ in range(1000):\n"
        "        pass\n"
        "except KeyboardInterrupt:\n"
        "    raise ImportError('initialization failed')\n"
        "__version__ = '0.0'\n"
        "def disable_signal_handler():\n"
        "    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}
    proc = start("fuse", checkpoints(18, "vars"), tmp_path / "out", "--input-size", TEST_INPUT, env=env)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == "interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake"]


# --- exit codes and --help -------------------------------------------------------------------------


def test_verbose_internal_error_exits_4_with_the_traceback(monkeypatch) -> None:
    # old: with -v the exception escaped: exit 1, the code that means "mismatch"
    monkeypatch.setenv("ACNET_CONVERT_WORKER", "tests.fault_worker")
    monkeypatch.setenv("ACNET_TEST_FAULT", "raise@describing")
    result = run("-v", "inspect", "anything")
    assert result.exit_code == 4, result.output
    assert "Traceback" in result.output and result.output.strip().splitlines()[-1] == "internal error: RuntimeError: a bug"
    quiet = run("inspect", "anything")
    assert quiet.exit_code == 4 and "Traceback" not in quiet.output and "rerun with -v" in quiet.output


def test_help_lists_every_exit_code() -> None:
    # old: exit 4 and SIGTERM's 143 were missing
    text = " ".join(run("--help").output.split())
    for code in ("0 success", "1 verify mismatch", "2 usage", "3 bad input", "4 internal error", "130 interrupted",
                 "141 output pipe closed", "143 terminated"):
        assert code in text, code


@pytest.mark.parametrize("error, line", [
    (OSError(errno.EACCES, "Permission denied", "/some/file"), "error: /some/file: Permission denied"),
    (RecursionError("maximum recursion depth exceeded"), "error: the input is nested too deeply to read"),
    (OverflowError("Python int too large to convert to C long"), "error: a number in the input is out of range "
                                                                  "(Python int too large to convert to C long)"),
    (MemoryError(), "error: out of memory: the input is too large for this machine"),
])
def test_input_errors_from_the_standard_library_are_exit_3(error: BaseException, line: str) -> None:
    # old: "internal error: ..." and exit 4
    told = failure(error, verbose=False)
    assert (told.code, told.line) == (3, line)


def test_the_workers_failure_is_the_commands_one_line(monkeypatch) -> None:
    monkeypatch.setenv("ACNET_CONVERT_WORKER", "tests.fault_worker")
    monkeypatch.setenv("ACNET_TEST_FAULT", "oserror@describing")
    result = run("inspect", "anything")
    one_error(result)
    assert result.output.strip().splitlines() == ["error: /some/file: Permission denied"]


# --- -q, export-onnx --force, --json checked first, closed pipes --------------------------------------


def test_quiet_quiets_inspect(checkpoints) -> None:
    # old: inspect printed its report under -q
    assert run("inspect", checkpoints(18, "vars")).output
    result = run("-q", "inspect", checkpoints(18, "vars"))
    assert result.exit_code == 0 and result.output == ""


def test_export_onnx_does_not_replace_a_file_without_force(fused, tmp_path: Path) -> None:
    # old: `export-onnx -o FILE` replaced FILE silently; with -o pointing at the deploy weights it
    # replaced the file export-onnx reads
    out = fused(18, "vars")
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"the user's model")
    one_error(run("export-onnx", out, "-o", mine), str(mine), "already exists (pass --force")
    assert mine.read_bytes() == b"the user's model"
    weights = (out / "deploy.pdparams").read_bytes()
    for name in ("deploy.pdparams", "manifest.json"):
        one_error(run("export-onnx", out, "-o", out / name, "--force"), "is the input")
    assert (out / "deploy.pdparams").read_bytes() == weights
    one_error(run("export-onnx", out, "-o", tmp_path, "--force"), "is a folder")



def test_export_onnx_never_replaces_the_source_programs_parameters(cnn_models, tmp_path: Path) -> None:  # noqa: F811
    """The source is the program and its .pdiparams: `-o` either, even with --force, is refused
    (the .pdiparams was replaced by the ONNX file)."""
    source = Path(shutil.copytree(cnn_models("repvgg").parent, tmp_path / "model")) / "inference"
    out = tmp_path / "out"
    assert run("fuse", source, out).exit_code == 0
    params = source.with_suffix(".pdiparams")
    before = params.read_bytes()
    for target in (source.with_suffix(".json"), params):
        one_error(run("export-onnx", out, "-o", target, "--force"), "is the input")
    assert params.read_bytes() == before

def test_json_report_path_is_checked_before_the_run(fused, checkpoints, tmp_path: Path, monkeypatch) -> None:
    # old: an unwritable --json was found after the whole run (exit 4); --json could overwrite
    # OUT's manifest or write into the source checkpoint
    monkeypatch.setenv("ACNET_CONVERT_WORKER", "tests.fault_worker")
    monkeypatch.setenv("ACNET_TEST_FAULT", "never")  # the work must not start
    out = fused(18, "vars")
    manifest = (out / "manifest.json").read_bytes()
    one_error(run("verify", out, "--json", "/proc/report.json"), "/proc/report.json")
    one_error(run("verify", out, "--json", tmp_path / "missing" / "r.json"), "does not exist")
    one_error(run("verify", out, "--json", out / "manifest.json"), "is not an earlier verify report")
    source = Path(json.loads(manifest)["source"]["path"])
    one_error(run("verify", out, "--json", source / "report.json"), "is inside")
    assert (out / "manifest.json").read_bytes() == manifest and not (source / "report.json").exists()


def test_closed_stdout_pipe_exits_quietly(checkpoints) -> None:
    # old: "internal error: BrokenPipeError: [Errno 32] Broken pipe", exit 4
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as with `| true`
    proc = subprocess.run([sys.executable, "-m", "acnet_convert", "inspect", str(checkpoints(18, "vars")), "--json"],
                          stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


# --- numeric options have ranges ------------------------------------------------------------------------
# old: --input-size 9223372036854775808 segfaulted inside Paddle (exit 139) and left a staging
# folder; huge --batch-size/--batches/--input-size and --seed -1 ended in exit 4 or out-of-memory.


@pytest.mark.parametrize("args", [
    ["fuse", "SRC", "OUT", "--input-size", "9223372036854775808"],
    ["fuse", "SRC", "OUT", "--input-size", "8193"],
    ["fuse", "SRC", "OUT", "--num-classes", str(1 << 40)],
    ["inspect", "SRC", "--input-size", "100000"],
    ["verify", "OUT", "--batch-size", "1000000000"],
    ["verify", "OUT", "--batches", "1000000000000"],
    ["verify", "OUT", "--seed", "-1"],
    ["verify", "OUT", "--atol", "nan"],
    ["verify", "OUT", "--rtol", "inf"],
    ["export-onnx", "OUT", "--opset", "99"],
])
def test_numeric_options_out_of_range_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    args = [str(tmp_path / a) if a in ("SRC", "OUT") else a for a in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def test_huge_input_size_leaves_nothing(checkpoints, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "acnet_convert", "fuse", str(checkpoints(18, "vars")), str(tmp_path / "out"),
                           "--input-size", "9223372036854775808"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "each side must be in 32..8192" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_ranges_are_documented_in_help() -> None:
    assert "each side 32..8192" in " ".join(run("fuse", "--help").output.split())
    verify_help = run("verify", "--help").output
    for text in ("1<=x<=4096", "1<=x<=100000", "0<=x<=4294967295", "Mpixel"):
        assert text in verify_help, text


def test_images_that_memory_cannot_hold_are_refused_before_the_run(fused, monkeypatch) -> None:
    monkeypatch.setenv("ACNET_CONVERT_WORKER", "tests.fault_worker")
    monkeypatch.setenv("ACNET_TEST_FAULT", "never")
    one_error(run("verify", fused(18, "vars"), "--batches", "100000"), "--batches 100000", "at most", code=2)


# --- untrusted names are escaped ------------------------------------------------------------------------


def test_a_name_cannot_forge_a_line_or_send_escapes(tmp_path: Path) -> None:
    # old: the raw name reached the terminal: two lines, the second "error: all good, exit 0"
    forged = tmp_path / "x\nerror: all good, exit 0"
    result = run("inspect", forged)
    assert result.exit_code == 3 and len(result.output.strip().splitlines()) == 1, result.output
    assert "x\\nerror: all good" in result.output
    escape = tmp_path / "y\x1b[2J"
    result = run("fuse", tmp_path, escape)
    assert "\x1b" not in result.output and "\\x1b[2J" in result.output, result.output
    forged.mkdir()
    (forged / "notes").write_text("a user folder named to forge a line")
    result = run("fuse", escape, forged, "--force")
    assert result.exit_code == 3 and len(result.output.strip().splitlines()) == 1, result.output
    shutil.rmtree(forged)
