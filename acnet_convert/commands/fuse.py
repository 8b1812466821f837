"""`fuse`: SOURCE -> train-form program and graph -> groups found by structure -> numpy fusion
-> the deploy model and its companions, written into OUT/ all at once."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from acnet_convert.out.artifacts import Artifacts, InputRecord, Manifest, SourceRecord, new_manifest
from acnet_convert.common.budgets import input_shape_problem
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.phase import PADDLE, phase
from acnet_convert.graph.ir import Graph
from acnet_convert.graph.summary import declined_rows, fused_rows, graph_totals
from acnet_convert.out.destination import check_destination
from acnet_convert.out.staging import staged_dir
from acnet_convert.graph.collapse import Declined
from acnet_convert.graph.regions import Region
from acnet_convert.common.quiet import import_paddle
from acnet_convert.graph.reparam import FusedConv, deploy_graph, fold_graph
from acnet_convert.read.source import Source, open_source
from acnet_convert.common.text import printable

PADDLE_FORMATS = ("auto", "pir", "legacy", "both")


@dataclass
class FuseResult:
    out_dir: Path
    source: Source
    manifest: Manifest
    fused: list[FusedConv]
    declined: list[Declined]
    warnings: list[str]
    files: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """Fused convs by kind: sums of branches, chains of convs, one conv with its BN."""
        kinds = [row["kind"] for row in self.manifest.fused]
        return {kind: kinds.count(kind) for kind in ("sum", "chain", "conv_bn")}


def _write_inference_config(artifacts: Artifacts, source: Source, input_size: int) -> None:
    """OUT/inference.yml (PaddleClas's deploy layout) for image models: one [N, 3, H, W] input.
    A classifier (one [N, C] output) gets its label count; dense outputs get no PostProcess.
    `input_size` is the program's own where it is fixed (`_fixed_size`)."""
    from acnet_convert.out.deploy_config import write_inference_config

    graph = source.graph
    shape = _single_input_shape(graph)
    if len(shape) != 4 or shape[1] != 3 or (shape[2] > 0 and shape[2] != shape[3]):
        return
    outputs = [graph.tensors.get(name) for name in graph.outputs]
    classes = outputs[0].shape[1] if len(outputs) == 1 and outputs[0] and len(outputs[0].shape) == 2 and outputs[0].shape[1] > 0 else None
    name = source.plan.arch if source.plan else source.path.parent.name or source.path.stem
    write_inference_config(artifacts, input_size=input_size, num_classes=classes, model_name=name)


def _single_input_shape(graph: Graph) -> tuple[int, ...]:
    """The shape of the graph's one input, () when it has several or its shape is unknown."""
    return graph.tensors[graph.inputs[0]].shape if len(graph.inputs) == 1 and graph.inputs[0] in graph.tensors else ()


def _fixed_size(graph: Graph) -> int | None:
    """H of a program whose one [N, C, H, W] input has a fixed square size, else None."""
    shape = _single_input_shape(graph)
    return shape[2] if len(shape) == 4 and shape[2] > 0 and shape[2] == shape[3] else None


def _formats(paddle_format: str, deploy: Graph, warn: Callable[[str], None]) -> list[str]:
    """The Paddle formats to write. `auto`: both, unless an op has no legacy form (then PIR,
    with a warning; asking for `both` or `legacy` makes that an error)."""
    if paddle_format != "auto":
        return ["pir", "legacy"] if paddle_format == "both" else [paddle_format]
    from acnet_convert.write.legacy.writer import translate  # pure Python: checking costs no Paddle time

    try:
        translate(deploy)
    except ConvertError as err:
        warn(f"no legacy inference.pdmodel: {err}; the PIR model is written")
        return ["pir"]
    return ["pir", "legacy"]


def fuse(
    source_path: Path,
    out: Path,
    *,
    arch: str = "auto",
    num_classes: int | None = None,
    input_size: int = 224,
    onnx: bool = False,
    force: bool = False,
    allow_nonfinite: bool = False,
    paddle_format: str = "auto",
    dynamic_size: bool = False,
    reference_layout: bool = False,
    track: Callable[[list[Region], str], Iterable[Region]] | None = None,
    note: Callable[[str], None] = lambda _text: None,
    into: Path | None = None,
) -> FuseResult:
    """Read SOURCE, fold what folds, write OUT (staged beside it, committed at the end). With
    `into`, an empty folder the caller made (and checked OUT for, and commits): everything is
    written there instead, nothing is checked or committed here."""
    source_path, out = Path(source_path), Path(out)
    if paddle_format not in PADDLE_FORMATS:
        raise ConvertError(f"--paddle-format {printable(paddle_format)}: choose one of {', '.join(PADDLE_FORMATS)}")
    if into is None:
        check_destination(out, force, [source_path])  # before any work: OUT apart from SOURCE, replaceable
    timings: dict[str, float] = {}
    warnings: list[str] = []
    start = time.perf_counter()
    source = open_source(source_path, arch=arch, num_classes=num_classes, input_size=input_size,
                         allow_nonfinite=allow_nonfinite)
    warnings += source.warnings
    timings["read"] = time.perf_counter() - start
    for name in source.graph.inputs:  # what the manifest records, verify feeds and ONNX declares
        shape = source.graph.tensors[name].shape if name in source.graph.tensors else ()
        problem = input_shape_problem(shape)
        if problem:
            raise ConvertError(f"{printable(source.path)}: input {printable(name)} has shape {list(shape)}: {problem}; "
                               "no deploy model of it could be verified or run")
    fixed = _fixed_size(source.graph)
    if fixed is not None:  # a program made for one size: the manifest, ONNX and verify use it
        input_size = fixed

    start = time.perf_counter()
    train_ops, train_totals = source.graph.op_counts(), graph_totals(source.graph)
    # persistables/ keeps the 1x1 convs and BNs of the source: those weights stay
    release = None if reference_layout else source.release
    folding = fold_graph(source.graph, allow_nonfinite, warnings.append, track, release=release)
    fused, declined = folding.fused, folding.declined
    deploy = deploy_graph(folding)
    deploy_totals = graph_totals(deploy)
    timings["fusion"] = time.perf_counter() - start

    paddle = import_paddle()
    formats = _formats(paddle_format, deploy, warnings.append)
    manifest = new_manifest(
        paddle_version=paddle.__version__,
        source=SourceRecord(str(source.path.resolve()), source.sha256, source.format, source.kind),
        inputs=tuple(InputRecord(name, tuple(source.graph.tensors[name].shape), source.graph.tensors[name].dtype)
                     for name in source.graph.inputs),
        input_size=input_size,
        formats=tuple(formats),
        arch=source.plan.arch if source.plan else None,
        num_classes=source.plan.num_classes if source.plan else None,
        ignored_variables=source.ignored,
        fused=tuple(fused_rows(folding.graph, fused)),
        declined=tuple(declined_rows(folding.graph, declined)),
        ops={"train": train_ops, "deploy": deploy.op_counts()},
        totals={"params_train": train_totals["params"], "params_deploy": deploy_totals["params"],
                "macs_train": train_totals["macs"], "macs_deploy": deploy_totals["macs"]},
    )
    if reference_layout:  # a usage error before anything is written or announced
        from acnet_convert.write.reference_layout import check_reference_source, reference_tensors, write_reference_layout

        plan = check_reference_source(source.plan, str(source_path))
    note(f"writing the deploy model to {printable(out)}")
    start = time.perf_counter()
    from acnet_convert.write.pir import apply_fusion, save_program

    with staged_dir(out, force, [source_path]) if into is None else contextlib.nullcontext(Path(into)) as stage:
        artifacts = Artifacts(stage)
        try:
            with phase("editing the program of", source.path, PADDLE):
                apply_fusion(source.program, folding)
            with phase("saving the deploy model of", source.path, PADDLE):
                save_program(source.program, artifacts.prefix)
            timings["paddle"] = time.perf_counter() - start
            if "legacy" in formats:  # from the same deploy graph, sharing inference.pdiparams
                from acnet_convert.write.legacy.writer import write_legacy_program

                legacy_start = time.perf_counter()
                with phase("writing the legacy deploy model of", source.path, PADDLE):
                    write_legacy_program(artifacts, deploy)
                if "pir" not in formats:
                    artifacts.program("pir").unlink()
                timings["legacy"] = time.perf_counter() - legacy_start
            artifacts.write_deploy_weights(deploy.weights)
            _write_inference_config(artifacts, source, input_size)
            if reference_layout:
                write_reference_layout(artifacts.persistables, reference_tensors(plan, source.graph.weights, deploy.weights))
            if onnx:
                from acnet_convert.commands.export_onnx import export_onnx

                onnx_start = time.perf_counter()
                export_onnx(artifacts, manifest, dynamic_size=dynamic_size)
                timings["onnx"] = time.perf_counter() - onnx_start
            artifacts.write_manifest(manifest)
        except OSError as err:
            raise ConvertError(f"cannot write {printable(out)}: {err.strerror or err}") from None
        files = sorted(p.name for p in stage.iterdir())
    timings["write"] = time.perf_counter() - start
    return FuseResult(out, source, manifest, fused, declined, warnings, files, timings)
