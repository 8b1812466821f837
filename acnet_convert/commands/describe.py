"""`inspect`: describe a SOURCE or a fuse output: what folds (each group, by kind), ops by type,
parameters and multiply-adds of the train and the deploy graph, and every sum declined, with
the reason.

An OUT folder is described from its manifest, and a ResNet-ACNet checkpoint from the plan,
without importing Paddle; a program needs Paddle to be read. A checkpoint that fails
validation is still described: the first problem is reported instead of raised. Only a path
that cannot be read at all is an error.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from acnet_convert.out.artifacts import MANIFEST, Artifacts
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.sizes import SizeLike, as_size, size_text
from acnet_convert.common.text import printable

DEFAULT_INPUT_SIZE = 224
FUSE_OUTPUT = "fuse-output"
_IGNORED_SHOWN = 5
ROW_KEYS = ("name", "kind", "branches", "kernel", "stride", "groups", "in", "out", "params_train", "params_deploy")


def group_row(name: str, kind: str, branches: Iterable[Mapping[str, Any]], kernel: Iterable[int], stride: Iterable[int],
              groups: int, channels_in: int, channels_out: int) -> dict[str, Any]:
    """One row of the layer table. Train parameters: every branch's kernel, its conv bias and
    its BN's scale and offset; deploy: one kernel and one bias."""
    kh, kw = kernel
    per = channels_out * (channels_in // groups)
    train, labels = 0, []
    for b in branches:
        if b["kind"] in ("identity", "pool"):
            labels.append(b["kind"])
        else:
            bh, bw = b["kernel"]
            labels.append(f"{bh}x{bw}")
            train += per * bh * bw + (channels_out if b.get("conv_bias") else 0)
        scale, offset = (b.get("bn") or [None, None])[:2]
        train += channels_out * ((scale is not None) + (offset is not None))
    return {
        "name": name, "kind": kind, "branches": labels, "kernel": [int(kh), int(kw)], "stride": [int(s) for s in stride],
        "groups": groups, "in": channels_in, "out": channels_out, "params_train": train, "params_deploy": per * kh * kw + channels_out,
    }


def plan_rows(plan: Any) -> list[dict[str, Any]]:
    """The ResNet-ACNet plan's table: every conv in execution order, then the FC head."""
    from acnet_convert.nn.plan import FC

    rows = []
    for conv in plan.convs():
        k = conv.kernel
        if conv.is_acb:
            branches = [{"kind": "conv", "kernel": shape, "bn": [1, 1]} for shape in ((k, k), (k, 1), (1, k))]
        else:
            branches = [{"kind": "conv", "kernel": (1, 1), "bn": [1, 1]}]
        rows.append(group_row(conv.name, "sum" if conv.is_acb else "conv_bn", branches, (k, k), (conv.stride,) * 2,
                              conv.groups, conv.in_channels, conv.out_channels))
    fc = sum(math.prod(shape) for shape in plan.fc_tensors().values())
    rows.append({"name": FC, "kind": "fc", "branches": [], "kernel": None, "stride": None, "groups": None,
                 "in": plan.features, "out": plan.num_classes, "params_train": fc, "params_deploy": fc})
    return rows


def _manifest_rows(fused: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The layer table of fused rows (the manifest's, or made by `fused_rows` for a program)."""
    rows = []
    for r in fused:
        row = group_row(r["name"], r["kind"], r["branches"], r["kernel"], r["stride"], r["groups"], r["in"], r["out"])
        if "params_train" in r:  # regions say what they held (manifests before regions did not)
            row.update(params_train=r["params_train"], params_deploy=r["params_deploy"])
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# the three kinds of path


def describe(path: Path | str, input_size: SizeLike | None = None) -> dict[str, Any]:
    """The report, `inspect --json` (README: its schema): path, format, arch, num_classes,
    input_size ([H, W] or None), layers (ROW_KEYS; kernel and stride [H, W] ints), totals
    (params_train, params_deploy, macs_train, macs_deploy; None where unknown), ops (train and
    deploy op counts, or None), declined (op, reason), ignored, ignored_count, problems; for an
    OUT also files and source."""
    path = Path(path)
    if not path.exists() and not any(Path(f"{path}{s}").exists() for s in (".json", ".pdmodel", ".pdparams")):
        raise ConvertError(f"{printable(path)} does not exist")
    if (path / MANIFEST).is_file():
        return describe_output(path, input_size)
    if path.suffix.lower() == ".onnx" and path.is_file():
        return describe_onnx(path, input_size)
    from acnet_convert.read.source import find_program

    found = find_program(path)
    if found is not None:
        return describe_program(path, found, input_size)
    return describe_checkpoint(path, input_size)


def _report(path: Path, fmt: str, input_size: SizeLike | None, rows: list[dict[str, Any]], totals: dict[str, Any], **extra: Any) -> dict[str, Any]:
    report = {
        "path": str(path), "format": fmt, "arch": None, "num_classes": None,
        "input_size": None if input_size is None else list(as_size(input_size)),
        "layers": rows, "totals": totals, "ops": None, "declined": [], "ignored": [], "ignored_count": 0, "problems": [],
    }
    report.update(extra)
    return report


def describe_checkpoint(path: Path, input_size: SizeLike | None = None) -> dict[str, Any]:
    # imported here: describing an OUT folder needs neither numpy nor the readers
    from acnet_convert.read.checkpoint import read_checkpoint
    from acnet_convert.nn.plan import FC_BIAS, FC_WEIGHT
    from acnet_convert.read.validate import check_tensors, detect_plan

    checkpoint = read_checkpoint(path, digest=False)
    tensors = checkpoint.tensors
    num_classes = None
    if FC_BIAS not in tensors and FC_WEIGHT in tensors and len(tensors[FC_WEIGHT].shape) == 2:
        num_classes = int(tensors[FC_WEIGHT].shape[1])  # so a missing bias is a problem, not a failure
    plan = detect_plan(tensors, printable(path), num_classes=num_classes)
    try:
        problems = check_tensors(plan, tensors, printable(path), allow_nonfinite=True)
    except ConvertError as err:
        problems = [str(err)]
    size = input_size or DEFAULT_INPUT_SIZE
    rows = plan_rows(plan)
    totals = {
        "params_train": sum(r["params_train"] for r in rows), "params_deploy": sum(r["params_deploy"] for r in rows),
        "macs_train": plan.macs(size, deploy=False), "macs_deploy": plan.macs(size, deploy=True),
    }
    return _report(path, checkpoint.format, size, rows, totals, arch=plan.arch, num_classes=plan.num_classes,
                   ignored=sorted(checkpoint.ignored), ignored_count=len(checkpoint.ignored), problems=problems)


def describe_program(path: Path, found: tuple[Path, Path], input_size: SizeLike | None = None) -> dict[str, Any]:
    from acnet_convert.read.program import load_program
    from acnet_convert.read.program_reader import read_graph

    program = load_program(*found)
    return describe_graph(path, program.format, read_graph(program), input_size)


def describe_onnx(path: Path, input_size: SizeLike | None = None) -> dict[str, Any]:
    """A train-form ONNX model, each op of the tables named by its ONNX node."""
    from acnet_convert.commands.fuse_onnx import onnx_tables
    from acnet_convert.read.onnx.source import open_onnx

    source = open_onnx(path)
    return describe_graph(path, source.format, source.graph, input_size, lambda f: onnx_tables(source.model, f))


def describe_graph(path: Path, fmt: str, graph: Any, input_size: SizeLike | None = None,
                   tables: Callable[[Any], tuple[list, list]] | None = None) -> dict[str, Any]:
    """What folds in `graph` (read from a program or a model) and what is declined."""
    from acnet_convert.graph.reparam import deploy_graph, fold_graph
    from acnet_convert.graph.summary import declined_rows, fused_rows, graph_totals

    problems: list[str] = []
    try:
        folding = fold_graph(graph, allow_nonfinite=True, warn=problems.append)
        deploy = deploy_graph(folding)
        if tables is not None:
            rows, declined = tables(folding)
        else:
            rows, declined = fused_rows(folding.graph, folding.fused), declined_rows(folding.graph, folding.declined)
    except ConvertError as err:
        problems.append(str(err))
        deploy, rows, declined = None, [], []
    train_totals = graph_totals(graph)
    deploy_totals = graph_totals(deploy) if deploy is not None else {"params": None, "macs": None}
    totals = {"params_train": train_totals["params"], "params_deploy": deploy_totals["params"],
              "macs_train": train_totals["macs"], "macs_deploy": deploy_totals["macs"]}
    shape = graph.tensors[graph.inputs[0]].shape if graph.inputs and graph.inputs[0] in graph.tensors else ()
    size = tuple(shape[2:]) if len(shape) == 4 and min(shape[2:]) > 0 else input_size
    return _report(
        path, fmt, size, _manifest_rows(rows), totals,
        ops={"train": graph.op_counts(), "deploy": deploy.op_counts() if deploy is not None else {}},
        declined=declined,
        problems=problems,
    )


def describe_output(path: Path, input_size: SizeLike | None = None) -> dict[str, Any]:
    artifacts = Artifacts(path)
    manifest = artifacts.read_manifest()
    totals = dict(manifest.totals)
    if input_size is not None and as_size(input_size) != manifest.input_hw and manifest.arch:
        from acnet_convert.nn.plan import arch_depth, resnet

        plan = resnet(arch_depth(manifest.arch), manifest.num_classes or 1000)
        totals.update(macs_train=plan.macs(input_size, deploy=False), macs_deploy=plan.macs(input_size, deploy=True))
    files = sorted(p for p in path.iterdir() if p.is_file())
    return _report(
        path, FUSE_OUTPUT, input_size or manifest.input_hw, _manifest_rows(manifest.fused), totals,
        arch=manifest.arch, num_classes=manifest.num_classes, ops=manifest.ops, declined=list(manifest.declined),
        ignored_count=manifest.ignored_variables, source={"path": manifest.source.path, "sha256": manifest.source.sha256,
                                                          "format": manifest.source.format},
        files=[{"name": p.name, "bytes": p.stat().st_size} for p in files],
        problems=[f"{printable(path)}: missing {printable(p.name)}" for p in artifacts.missing(manifest)],
    )


# ----------------------------------------------------------------------------------------------
# the human report


def format_report(report: dict[str, Any]) -> str:
    size = report["input_size"]
    head = [f"format: {report['format']}"]
    if report.get("arch"):
        head.append(f"arch: {report['arch']}")
    if report.get("num_classes"):
        head.append(f"classes: {report['num_classes']}")
    head.append(f"input: {size_text(size)}" if size else "input: dynamic size")
    lines = [printable(report["path"], 400), "   ".join(head)]
    if report.get("source"):
        source = report["source"]
        lines.append(f"fused from: {printable(source.get('path', '?'), 400)} (sha256 {printable(source.get('sha256', '?'))[:12]})")
    lines.append("")
    rows = report["layers"]
    lines += _table(
        ["layer", "kind", "branches", "kernel", "stride", "groups", "in", "out", "params train", "params deploy"],
        [[printable(r["name"], 60), r["kind"], "+".join(r["branches"]) or "-", _pair(r["kernel"]), _pair(r["stride"], short=True),
          "-" if r["groups"] is None else str(r["groups"]), str(r["in"]), str(r["out"]),
          f"{r['params_train']:,}", f"{r['params_deploy']:,}"] for r in rows],
        left=3,
    )
    kinds = [r["kind"] for r in rows]
    lines += ["", f"{kinds.count('sum')} branch sums and {kinds.count('conv_bn')} conv+BN fold into one conv each"
              " (params: learned weights; BN running statistics not counted)"]
    t = report["totals"]
    macs = f"multiply-adds @{size_text(size)}" if size else "multiply-adds"
    lines += _table(
        ["total", "train", "deploy", "deploy/train"],
        [["params", _count(t["params_train"]), _count(t["params_deploy"]), _ratio(t["params_deploy"], t["params_train"])],
         [macs, _giga(t["macs_train"]), _giga(t["macs_deploy"]), _ratio(t["macs_deploy"], t["macs_train"])]],
        left=1,
    )
    if report.get("ops"):
        train, deploy = report["ops"].get("train", {}), report["ops"].get("deploy", {})
        lines += ["", "ops (train -> deploy): " + ", ".join(
            f"{printable(op, 40)} {train.get(op, 0)}->{deploy.get(op, 0)}" for op in sorted(set(train) | set(deploy)))]
    declined = report.get("declined") or []
    if declined:
        lines += ["", f"sums left as they are: {len(declined)}"]
        lines += [f"  {printable(d['op'], 80)}: {printable(d['reason'], 160)}" for d in declined]
    lines.append("")
    if "files" in report:
        lines.append(f"files in {printable(report['path'], 400)}:")
        lines += ["  " + line for line in _table(["file", "bytes"], [[printable(f["name"], 80), f"{f['bytes']:,}"] for f in report["files"]], left=1)[1:]]
        lines.append(f"ignored when fused: {report.get('ignored_count', 0)} non-weight variables")
    elif report.get("ignored"):
        ignored = [printable(n, 60) for n in report["ignored"]]
        shown = ", ".join(ignored[:_IGNORED_SHOWN]) + (", ..." if len(ignored) > _IGNORED_SHOWN else "")
        lines.append(f"ignored: {len(ignored)} non-weight variables ({shown})")
    problems = report["problems"]
    lines.append(f"problems: {len(problems)}" if problems else "problems: none")
    lines += [f"  {printable(p, 400)}" for p in problems]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]], left: int) -> list[str]:
    """Aligned columns: the first `left` columns to the left, the rest (numbers) to the right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return [line(header)] + [line(row) for row in rows]


def _pair(value: list[int] | None, short: bool = False) -> str:
    """A kernel or stride [H, W] for the table: 3x3; with `short`, one number when both agree."""
    if not value:
        return "-"
    return str(value[0]) if short and len(set(value)) == 1 else "x".join(map(str, value))


def _count(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"


def _giga(macs: int | None) -> str:
    return "-" if macs is None else f"{macs / 1e9:.3f} G"


def _ratio(a: int | None, b: int | None) -> str:
    return f"{a / b:.3f}" if a is not None and b else "-"
