"""`inspect`: describe a checkpoint or a fuse output, without Paddle.

Everything in the report is derived from the plan: the layer table, the parameter counts of
the train form (three kernels and three BNs per ACB) and the deploy form (one kernel and a
bias per conv), and the multiply-adds of both graphs at an input size. A checkpoint that
fails validation is still described: the first problem is reported instead of raised. Only a
path that cannot be read at all is an error.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from acnet_convert.errors import ConvertError
from acnet_convert.manifest import DEPLOY_WEIGHTS, MANIFEST, MODEL_PREFIX, manifest_plan, read_manifest
from acnet_convert.plan import FC, FC_BIAS, FC_WEIGHT, Plan

DEFAULT_INPUT_SIZE = 224
MIN_INPUT_SIZE = 32  # ResNet downsamples by 32
FUSE_OUTPUT = "fuse-output"
# what `fuse` writes; either inference.json (Paddle 3) or inference.pdmodel (Paddle 2)
_OUTPUT_FILES = (
    (f"{MODEL_PREFIX}.json", f"{MODEL_PREFIX}.pdmodel"), (f"{MODEL_PREFIX}.pdiparams",), (DEPLOY_WEIGHTS,), (MANIFEST,)
)
_IGNORED_SHOWN = 5


def inspect_path(path: Path | str, input_size: int | None = None) -> dict[str, Any]:
    """The report of a checkpoint directory, or of an OUT directory (it holds manifest.json).

    Keys: path, format ("per-variable" | "pdparams" | "fuse-output"), arch, num_classes,
    input_size, layers (name, kind "acb" | "conv1x1" | "fc", kernel, stride, in, out,
    params_train, params_deploy), totals (params_train, params_deploy, macs_train,
    macs_deploy), ignored (names of non-weight variables), ignored_count, problems (one line
    each; empty when the input is sound); for an OUT also files (name, bytes) and source.
    """
    path = Path(path)
    if input_size is not None and input_size < MIN_INPUT_SIZE:
        raise ConvertError(f"--input-size {input_size} is too small: ResNet downsamples by 32")
    if not path.exists():
        raise ConvertError(f"{path} does not exist")
    if (path / MANIFEST).is_file():
        return inspect_output(path, input_size)
    return inspect_checkpoint(path, input_size)


def inspect_checkpoint(path: Path, input_size: int | None = None) -> dict[str, Any]:
    # imported here: they need numpy, which describing an OUT directory does not
    from acnet_convert.checkpoint import read_checkpoint
    from acnet_convert.validate import check_tensors, detect_plan

    checkpoint = read_checkpoint(path, digest=False)
    tensors = checkpoint.tensors
    num_classes = None
    if FC_BIAS not in tensors and FC_WEIGHT in tensors and len(tensors[FC_WEIGHT].shape) == 2:
        num_classes = int(tensors[FC_WEIGHT].shape[1])  # so a missing bias is a problem, not a failure
    plan = detect_plan(tensors, str(path), num_classes=num_classes)
    try:
        problems = check_tensors(plan, tensors, str(path), allow_nonfinite=True)
    except ConvertError as err:
        problems = [str(err)]
    report = _report(checkpoint.format, plan, input_size or DEFAULT_INPUT_SIZE, path)
    report["ignored"] = sorted(checkpoint.ignored)
    report["ignored_count"] = len(checkpoint.ignored)
    report["problems"] = problems
    return report


def inspect_output(path: Path, input_size: int | None = None) -> dict[str, Any]:
    manifest = read_manifest(path)
    plan = manifest_plan(manifest)
    report = _report(FUSE_OUTPUT, plan, input_size or int(manifest["input_size"]), path)
    report["ignored"] = []  # the manifest keeps only their count
    report["ignored_count"] = int(manifest.get("ignored_variables", 0))
    report["source"] = manifest.get("source", {})
    files = sorted(p for p in path.iterdir() if p.is_file())
    report["files"] = [{"name": p.name, "bytes": p.stat().st_size} for p in files]
    present = {p.name for p in files}
    report["problems"] = [
        f"{path}: missing {' or '.join(names)}" for names in _OUTPUT_FILES if not present.intersection(names)
    ]
    return report


def _report(fmt: str, plan: Plan, input_size: int, path: Path) -> dict[str, Any]:
    layers = layer_rows(plan)
    return {
        "path": str(path),
        "format": fmt,
        "arch": plan.arch,
        "num_classes": plan.num_classes,
        "input_size": input_size,
        "layers": layers,
        "totals": {
            "params_train": sum(row["params_train"] for row in layers),
            "params_deploy": sum(row["params_deploy"] for row in layers),
            "macs_train": plan.macs(input_size, deploy=False),
            "macs_deploy": plan.macs(input_size, deploy=True),
        },
    }


def layer_rows(plan: Plan) -> list[dict[str, Any]]:
    """One row per conv in execution order, then the FC head. Parameters are the learned ones
    (BN running statistics are not counted): train form with BN scale and offset per branch,
    deploy form with one bias per conv."""
    fc = sum(math.prod(shape) for shape in plan.fc_tensors().values())
    return [conv.describe() for conv in plan.convs()] + [
        {"name": FC, "kind": "fc", "kernel": None, "stride": None, "in": plan.features,
         "out": plan.num_classes, "params_train": fc, "params_deploy": fc}
    ]


# ---------------------------------------------------------------------------------------------
# The human report


def format_report(report: dict[str, Any]) -> str:
    size = report["input_size"]
    lines = [
        f"{report['path']}",
        f"format: {report['format']}   arch: {report['arch']}   classes: {report['num_classes']}   "
        f"input: {size}x{size}",
    ]
    if report.get("source"):
        lines.append(f"fused from: {report['source'].get('path', '?')} (sha256 {report['source'].get('sha256', '?')[:12]})")
    lines.append("")
    lines += _table(
        ["layer", "kind", "kernel", "stride", "in", "out", "params train", "params deploy"],
        [
            [
                row["name"],
                row["kind"],
                "-" if row["kernel"] is None else f"{row['kernel']}x{row['kernel']}",
                "-" if row["stride"] is None else str(row["stride"]),
                str(row["in"]),
                str(row["out"]),
                f"{row['params_train']:,}",
                f"{row['params_deploy']:,}",
            ]
            for row in report["layers"]
        ],
        left=2,
    )
    t = report["totals"]
    kinds = [row["kind"] for row in report["layers"]]
    lines += [
        "",
        f"{kinds.count('acb')} ACBs, {kinds.count('conv1x1')} 1x1 conv+BN, {kinds.count('fc')} FC "
        "(params: learned weights; BN running statistics not counted)",
    ]
    lines += _table(
        ["total", "train", "deploy", "deploy/train"],
        [
            ["params", f"{t['params_train']:,}", f"{t['params_deploy']:,}", _ratio(t["params_deploy"], t["params_train"])],
            [f"multiply-adds @{size}", _giga(t["macs_train"]), _giga(t["macs_deploy"]), _ratio(t["macs_deploy"], t["macs_train"])],
        ],
        left=1,
    )
    lines.append("")
    if "files" in report:
        lines.append(f"files in {report['path']}:")
        lines += ["  " + line for line in _table(["file", "bytes"], [[f["name"], f"{f['bytes']:,}"] for f in report["files"]], left=1)[1:]]
        lines.append(f"ignored when fused: {report.get('ignored_count', 0)} non-weight variables")
    else:
        ignored = report["ignored"]
        shown = ", ".join(ignored[:_IGNORED_SHOWN]) + (", ..." if len(ignored) > _IGNORED_SHOWN else "")
        lines.append(f"ignored: {len(ignored)} non-weight variables" + (f" ({shown})" if ignored else ""))
    problems = report["problems"]
    lines.append(f"problems: {len(problems)}" if problems else "problems: none")
    lines += [f"  {p}" for p in problems]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Aligned columns: the first `left` columns to the left, the rest (numbers) to the right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _giga(macs: int) -> str:
    return f"{macs / 1e9:.3f} G"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.3f}" if b else "-"
