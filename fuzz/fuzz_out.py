"""atheris fuzz target for the readers of OUT's own files, which a user (or anyone with write
access to OUT) may have edited: manifest.json (`Manifest.from_json`, then what inspect and
verify read from it) and inference.yml (`parse_inference_config`).

Each input is tried as both. Any exception other than ConvertError is a finding, as is a message
that is not one printable line naming the file; and whatever passes must be usable: inspect's
table of the fused rows, verify's image shape, a preprocessing within the size budget.

    .venv/bin/pip install atheris
    mkdir -p /tmp/out-corpus
    .venv/bin/python fuzz/fuzz_out.py --seed-corpus /tmp/out-corpus   # write seeds
    .venv/bin/python fuzz/fuzz_out.py /tmp/out-corpus -max_total_time=120 -rss_limit_mb=1024 -timeout=10
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["acnet_convert"]):
    from acnet_convert.commands.describe import _manifest_rows
    from acnet_convert.common.budgets import MAX_SIDE
    from acnet_convert.common.errors import ConvertError
    from acnet_convert.out.artifacts import Manifest
    from acnet_convert.out.deploy_config import default_preprocess, parse_inference_config, render, DeployConfig

from fuzz.fuzz_lod_tensor import write_seed_corpus  # noqa: E402

MANIFEST, CONFIG = Path("out/manifest.json"), "out/inference.yml"


def _manifest() -> dict:
    branch = {"kind": "conv", "kernel": [3, 3], "offset": [0, 0], "weight": "w", "conv_bias": None,
              "bn": ["s", "b", "m", "v"], "epsilon": 1e-5}
    return {
        "tool": "acnet-convert", "manifest_version": 2, "tool_version": "0.2.0", "paddle_version": "3.3.1",
        "source": {"path": "/m/inference.json", "sha256": "ab" * 32, "format": "pir", "kind": "program"},
        "inputs": [{"name": "image", "shape": [-1, 3, 32, 32], "dtype": "float32"}], "input_size": 32,
        "formats": ["pir", "legacy"], "arch": None, "num_classes": None, "ignored_variables": 0,
        "fused": [{"name": "conv", "kind": "sum", "branches": [branch, {"kind": "identity", "bn": ["s", "b", "m", "v"]}],
                   "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
                   "in": 8, "out": 8, "input": "x", "output": "y", "ops": [3, 4], "deploy_tensors": ["w", "w.b"]}],
        "declined": [{"op": "add (op #9 of the program)", "output": "z", "reason": "a BN output is read elsewhere"}],
        "ops": {"train": {"conv2d": 2}, "deploy": {"conv2d": 1}}, "totals": {"params_train": 10, "params_deploy": None},
    }


def seeds() -> dict[str, bytes]:
    config = render(DeployConfig(default_preprocess(224), 1000, "resnet50_acnet"))
    return {
        "manifest": json.dumps(_manifest()).encode(),
        "manifest_no_fused": json.dumps({**_manifest(), "fused": []}).encode(),
        "manifest_hw": json.dumps({**_manifest(), "input_size": [48, 160]}).encode(),
        "inference_yml": config.encode(),
        "inference_yml_hw": render(DeployConfig(default_preprocess((48, 160)), None, "ocr")).encode(),
        "inference_yml_expression": config.replace("0.00392157", "1.0/255.0").encode(),
        "paddleclas": b"Global:\n  use_gpu: True\nPreProcess:\n  transform_ops:\n    - ResizeImage:\n        resize_short: 256"
                      b"\n    - CropImage:\n        size: 224\n    - NormalizeImage:\n        scale: 1.0/255.0\n"
                      b"        order: ''\n    - ToCHWImage:\nPostProcess:\n  name: Topk\n  topk: 5\n",
    }


def _check_error(err: ConvertError, name: str) -> None:
    msg = str(err)
    if not msg.isprintable() or name not in msg:
        raise AssertionError(f"bad error message: {msg!r}") from None


def TestOneInput(data: bytes) -> None:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        document = None
    if document is not None:
        try:
            manifest = Manifest.from_json(document, MANIFEST)
        except ConvertError as err:
            _check_error(err, str(MANIFEST))
        else:
            _manifest_rows(manifest.fused)  # inspect's table: every row it reads is there, typed
            for row in manifest.fused:
                weight, bias = row["deploy_tensors"]  # verify --per-layer's unpacking
            if not all(1 <= side <= MAX_SIDE for side in manifest.input_hw):
                raise AssertionError(f"input size {manifest.input_hw} beyond the budget")
            for record in manifest.inputs:
                if len(record.shape) == 4 and any(d > MAX_SIDE for d in record.shape[2:]):
                    raise AssertionError(f"input shape {record.shape} beyond the budget")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    try:
        config = parse_inference_config(text, CONFIG)
    except ConvertError as err:
        _check_error(err, CONFIG)
        return
    p = config.preprocess
    crop_ok = all(1 <= side <= MAX_SIDE for side in p.crop)
    if p.resize is not None:  # the whole image to (H, W), then a crop no larger
        resize_ok = p.resize_short is None and all(c <= r <= MAX_SIDE for c, r in zip(p.crop, p.resize))
    else:
        resize_ok = p.resize_short is not None and max(p.crop) <= p.resize_short <= 2 * MAX_SIDE
    if not (crop_ok and resize_ok):
        raise AssertionError(f"sizes beyond the budget: {p}")
    if not all(math.isfinite(v) for v in (p.scale, *p.mean, *p.std)):
        raise AssertionError(f"a number that is not finite: {p}")


def main() -> None:
    if write_seed_corpus(seeds):
        return
    for blob in seeds().values():
        TestOneInput(blob)
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
