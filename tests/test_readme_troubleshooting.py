"""The README's troubleshooting section quotes the real messages: every `error: ...` it lists is
made here, the way a user meets it, and must match the quote (`...` stands for any text). Each
run fails at its first check: a few seconds in all."""
from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from click.testing import CliRunner

from acnet_convert.cli import cli
from tests.cnn_fixtures import cnn_models  # noqa: F401 - a fixture
from tests.lod_bytes import lod_file

ROOT = Path(__file__).resolve().parents[1]


def quoted_errors() -> list[str]:
    """The `error: ...` lines the troubleshooting section quotes, in order."""
    section = (ROOT / "README.md").read_text().split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"\*\*`(error: [^`]+)`\*\*", section)


def first_error(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code in (2, 3), result.output
    return next(line for line in result.stderr.splitlines() if line.startswith("error: "))


class _Evil:
    def __reduce__(self):
        return os.system, ("echo pwned",)


def _producers(checkpoints, fused, cnn_models, tmp: Path) -> dict[str, Callable[[], str]]:  # noqa: F811
    ckpt = checkpoints(18, "vars")

    def copy(name: str) -> Path:
        return Path(shutil.copytree(ckpt, tmp / name))

    def missing() -> str:
        folder = copy("missing")
        (folder / "res3a_branch2a_acver_weights").unlink()
        return first_error("fuse", str(folder), str(tmp / "out"))

    def nan() -> str:
        from acnet_convert.read.checkpoint import read_checkpoint

        folder = copy("nan")
        bias = read_checkpoint(folder).tensors["fc_0.b_0"].copy()
        bias[0] = np.nan
        (folder / "fc_0.b_0").write_bytes(lod_file(bias))
        return first_error("fuse", str(folder), str(tmp / "out"))

    def hostile() -> str:
        folder = tmp / "pickle"
        folder.mkdir()
        (folder / "model.pdparams").write_bytes(pickle.dumps({"w": _Evil()}))
        return first_error("fuse", str(folder), str(tmp / "out"))

    def images() -> str:
        folder = tmp / "photos"
        folder.mkdir()
        (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff\xe0 a photo")
        return first_error("fuse", str(folder), str(tmp / "out"))

    def device() -> str:
        from acnet_convert.verify.device import detect_gpu

        if detect_gpu()[0]:
            pytest.skip("this machine has a CUDA GPU")
        return first_error("verify", str(fused(18, "vars")), "--device", "gpu")

    return {
        "missing tensor": missing,
        "has shape": lambda: first_error("fuse", str(ckpt), str(tmp / "out"), "--num-classes", "5"),
        "NaN or Inf": nan,
        "refusing to load": hostile,
        "no ONNX translation": lambda: first_error("fuse", str(cnn_models("neg_unsupported_op")), str(tmp / "out"),
                                                   "--onnx"),
        "no Paddle tensor file": images,
        "--device gpu": device,
    }


def test_every_quoted_error_is_the_real_one(checkpoints, fused, cnn_models, tmp_path) -> None:  # noqa: F811
    producers = _producers(checkpoints, fused, cnn_models, tmp_path)
    quoted = quoted_errors()
    assert len(quoted) == len(producers), quoted
    for quote in quoted:
        key = next(k for k in producers if k in quote)
        real = producers.pop(key)()
        pattern = ".*".join(re.escape(part) for part in quote.split("..."))
        assert re.fullmatch(pattern, real), f"README: {quote}\nreal:   {real}"
    assert not producers
