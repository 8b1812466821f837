"""The README's "Any architecture" example runs as written: ACBs in paddle.vision's
MobileNetV2, a few training steps, paddle.jit.save, fuse, verify (exit 0)."""
from __future__ import annotations

import json
from pathlib import Path

from examples.any_cnn import main


def test_any_cnn_example_fuses_and_verifies(tmp_path: Path) -> None:
    assert main(["--steps", "2", "--size", "32", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "deploy" / "manifest.json").read_text())
    sums = [row for row in manifest["fused"] if row["kind"] == "sum"]
    assert len(sums) == 17 and all(row["groups"] > 1 for row in sums)  # every depthwise 3x3 became one conv
    assert manifest["ops"]["deploy"].get("batch_norm", 0) == 0
