"""OUT/manifest.json: what was converted, from what, by which tools, and the fusion table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acnet_convert import __version__
from acnet_convert.errors import ConvertError
from acnet_convert.plan import Plan, arch_depth, resnet

# the layout of OUT/ (DESIGN.md section 4)
MANIFEST = "manifest.json"
DEPLOY_WEIGHTS = "deploy.pdparams"
ONNX_MODEL = "model.onnx"
MODEL_PREFIX = "inference"  # inference.json + inference.pdiparams
INPUT_NAME = "image"


def program_file(prefix: Path) -> Path:
    """The program paddle.jit.save wrote for `prefix`: PREFIX.json (PIR, Paddle 3), else
    PREFIX.pdmodel (Paddle 2.x)."""
    json_program = prefix.with_suffix(".json")
    pdmodel = prefix.with_suffix(".pdmodel")
    return pdmodel if not json_program.is_file() and pdmodel.is_file() else json_program


def layer_table(plan: Plan, legacy_bias: bool = False) -> list[dict[str, Any]]:
    """The per-layer fusion table: what each deploy conv was folded from."""
    return [
        {
            **conv.describe(),
            "groups": conv.groups,
            "branches_folded": 3 if conv.is_acb else 1,
            "pre_bn_bias_folded": bool(legacy_bias and conv.is_acb),
            "deploy_tensors": [conv.deploy_weight, conv.deploy_bias],
        }
        for conv in plan.convs()
    ]


def make_manifest(
    plan: Plan, input_size: int, source: dict[str, Any], paddle_version: str, legacy_bias: bool, ignored: int
) -> dict[str, Any]:
    return {
        "tool": "acnet-convert",
        "tool_version": __version__,
        "paddle_version": paddle_version,
        "arch": plan.arch,
        "num_classes": plan.num_classes,
        "input_size": input_size,
        "input": {"name": INPUT_NAME, "shape": ["N", 3, input_size, input_size], "dtype": "float32"},
        "source": source,
        "ignored_variables": ignored,
        "layers": layer_table(plan, legacy_bias),
    }


def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not Path(out_dir).is_dir():
        raise ConvertError(f"{out_dir} does not exist or is not a directory")
    if not path.is_file():
        raise ConvertError(f"{path} is missing: {out_dir} is not an output of 'acnet-convert fuse'")
    try:
        manifest = json.loads(path.read_text())
        arch_depth(manifest["arch"])
        int(manifest["num_classes"]), int(manifest["input_size"])
    except (ValueError, KeyError, TypeError) as err:
        raise ConvertError(f"{path} is not a valid manifest ({type(err).__name__}: {err})") from None
    return manifest


def manifest_plan(manifest: dict[str, Any]) -> Plan:
    return resnet(arch_depth(manifest["arch"]), int(manifest["num_classes"]))
