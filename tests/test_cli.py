"""The command line as users meet it: help, versions, exit codes, clean output, and the
README's command reference."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from tests.conftest import NUM_CLASSES, TEST_INPUT

ROOT = Path(__file__).resolve().parents[1]
# what Paddle, glog, Python warnings and ONNX Runtime print when they are not silenced
NOISE = re.compile(r"^[IWEF]\d{4} |warn|ccache|\[PIR\]|onnxruntime|--- Running|Traceback|I\d{4}", re.I | re.M)


def cli_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "acnet_convert", *map(str, args)], capture_output=True, text=True, timeout=600)


def test_version_names_every_component() -> None:
    result = cli_run("--version")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["acnet-convert", "paddlepaddle", "onnx", "onnxruntime"]
    assert "not installed" not in result.stdout


@pytest.mark.parametrize("command", ["fuse", "verify", "export-onnx", "inspect"])
def test_help(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_usage_error_exits_2() -> None:
    assert CliRunner().invoke(cli, ["fuse", "--no-such-flag"]).exit_code == 2
    assert CliRunner().invoke(cli, ["verify", "x", "--device", "tpu"]).exit_code == 2


def test_real_processes_are_quiet(checkpoints, tmp_path: Path) -> None:
    """fuse, export-onnx, verify and inspect as subprocesses: our lines only, no log noise."""
    out = tmp_path / "out"
    fuse = cli_run("fuse", checkpoints(18, "vars"), out, "--input-size", TEST_INPUT)
    assert fuse.returncode == 0, fuse.stderr
    assert fuse.stdout.startswith(f"fused resnet18 ({NUM_CLASSES} classes): 17 branch sums, 4 conv+BN into 21 convs, each proven")
    export = cli_run("export-onnx", out)
    assert export.returncode == 0, export.stderr
    assert export.stdout.strip() == f"wrote {out / 'model.onnx'} (opset 17, batch dynamic, size dynamic, float32)"
    verify = cli_run("verify", out, "--batches", "1", "--per-layer", "--json", tmp_path / "report.json")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.strip().splitlines()[-1] == "MATCH"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True
    assert _keys(report) == _readme_report_keys()
    inspect = cli_run("inspect", out)
    assert inspect.returncode == 0 and "resnet18" in inspect.stdout
    for result in (fuse, export, verify, inspect):
        assert not NOISE.search(result.stdout + result.stderr), result.stdout + result.stderr
        # piped, so no progress bar either
        assert "fusing" not in result.stderr and "verifying" not in result.stderr


def test_quiet_prints_nothing_but_errors(checkpoints, tmp_path: Path) -> None:
    result = cli_run("-q", "fuse", checkpoints(18, "vars"), tmp_path / "out", "--input-size", TEST_INPUT)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    failed = cli_run("-q", "fuse", checkpoints(18, "vars"), tmp_path / "out")
    assert failed.returncode == 3 and failed.stderr.startswith("error: ")


def test_verbose_lets_paddle_speak(checkpoints, tmp_path: Path) -> None:
    """The quiet output above is our doing: with -v, Paddle's own lines come through."""
    result = cli_run("-v", "fuse", checkpoints(18, "vars"), tmp_path / "out", "--input-size", TEST_INPUT)
    assert result.returncode == 0
    assert NOISE.search(result.stderr)


def _keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value).union(*(_keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_keys(v) for v in value))
    return set()


def _readme_report_keys() -> set[str]:
    """Every key the README's JSON report schema names."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("JSON report schema:", 1)[1].split("```", 2)[1]
    return set(re.findall(r'"([a-z0-9_]+)":', block))


def _documented_commands() -> dict[str, set[str]]:
    """`acnet-convert CMD ... --flag` lines of the README's command reference."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```", 2)[1]
    commands: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        match = re.match(r"acnet-convert ([a-z-]+)", line.strip())
        if match and not match.group(1).startswith("-"):
            current = match.group(1)
            commands[current] = set()
        elif not line.startswith(" "):
            current = None
        if current:
            commands[current] |= set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", line.split("#")[0]))
    return commands


def test_readme_commands_exist_with_their_flags() -> None:
    documented = _documented_commands()
    assert set(documented) == {"fuse", "verify", "export-onnx", "inspect"}
    for command, flags in documented.items():
        help_text = CliRunner().invoke(cli, [command, "--help"]).output
        for flag in flags:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}\b", help_text), f"README documents {command} {flag}"


def test_python_dash_m_is_the_same_cli() -> None:
    result = cli_run("--help")
    assert result.returncode == 0
    for command in ("fuse", "verify", "export-onnx", "inspect"):
        assert command in result.stdout


def test_progress_bar_on_a_terminal(checkpoints, tmp_path: Path) -> None:
    """stderr on a terminal gets a progress bar for the fusion; piped (above) it gets none."""
    import os
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "acnet_convert", "fuse", str(checkpoints(18, "vars")), str(tmp_path / "out"),
         "--input-size", str(TEST_INPUT)],
        stdout=subprocess.PIPE, stderr=follower, text=True,
    )
    os.close(follower)
    proc.communicate(timeout=600)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed when the child exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"folding" in seen and b"21/21" in seen
