"""The README's "From PyTorch (ONNX)" section runs as written: its export lines on a RepVGG of
fixtures/torch_blocks.py, then its fuse and verify commands (exit 0, MATCH, one Conv per block)."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from acnet_convert.cli import cli  # noqa: E402
from fixtures import export_onnx as E  # noqa: E402
from fixtures import torch_blocks as tb  # noqa: E402
from tests.torch_onnx import onnx_export  # noqa: E402,F401 - a session fixture

README = Path(__file__).resolve().parents[1] / "README.md"


def section_blocks() -> tuple[str, list[str]]:
    text = README.read_text()
    section = text[text.index("## From PyTorch (ONNX)"):]
    section = section[: section.index("\n## ", 1)]
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return python, [line.split("#")[0].strip() for line in shell.strip().splitlines()]


def test_the_pytorch_section_runs_as_written(tmp_path, monkeypatch, onnx_export):
    python, commands = section_blocks()
    assert len(python.strip().splitlines()) + len(commands) == 5
    monkeypatch.chdir(tmp_path)
    model, _shape = tb.build("repvgg")
    with E._quiet():
        exec(python, {"model": model})  # noqa: S102 - the README's own lines
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "acnet-convert"
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "MATCH"
    assert E.op_histogram(tmp_path / "deploy" / "model.onnx")["Conv"] == E.op_histogram(
        onnx_export("repvgg", deployed=True))["Conv"]
    assert os.path.isfile(tmp_path / "train.onnx")
