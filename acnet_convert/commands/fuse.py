"""`fuse`: SOURCE -> train-form program and graph -> groups found by structure -> numpy fusion
-> the deploy model and its companions, written into OUT/ all at once."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from acnet_convert.out.artifacts import Artifacts, InputRecord, Manifest, SourceRecord, new_manifest
from acnet_convert.common.budgets import input_shape_problem
from acnet_convert.common.errors import ConvertError, UsageError
from acnet_convert.common.phase import PADDLE, phase
from acnet_convert.common.sizes import Size, SizeLike, as_size, size_text
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
from acnet_convert.write.weights import stored_weights

PADDLE_FORMATS = ("auto", "pir", "legacy", "both")
DEFAULT_INPUT_SIZE = 224


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

    def summary(self) -> str:
        """One line: what was fused into what, each proven; kinds that count nothing are left out."""
        counts = self.counts
        what = self.manifest.arch or printable(self.source.path)
        classes = f" ({self.manifest.num_classes} classes)" if self.manifest.num_classes else ""
        kinds = ", ".join(f"{n} {label}" for n, label in ((counts["sum"], "branch sums"), (counts["chain"], "conv chains"),
                                                          (counts["conv_bn"], "conv+BN")) if n)
        line = f"fused {what}{classes}: {kinds} into {sum(counts.values())} convs, each proven" if kinds else \
            f"fused {what}{classes}: nothing folds"
        if self.declined:
            line += f"; left {len(self.declined)} regions as they are (see inspect)"
        if self.source.kind == "checkpoint" and self.source.ignored:
            line += f"; ignored {self.source.ignored} non-weight variables"
        return line


def _write_inference_config(artifacts: Artifacts, source: Source, size: Size) -> str | None:
    """OUT/inference.yml (PaddleClas's deploy layout) for image models: one [N, 3, H, W] input,
    `size` its (H, W). A classifier (one [N, C] output) gets its label count; dense outputs get
    no PostProcess. Returns why none was written, or None."""
    from acnet_convert.out.deploy_config import write_inference_config

    graph = source.graph
    shape = _single_input_shape(graph)
    if len(graph.inputs) != 1:
        return f"the model has {len(graph.inputs)} inputs"
    if len(shape) != 4 or shape[1] != 3:
        return f"its input {list(shape)} is not an [N, 3, H, W] image"
    outputs = [graph.tensors.get(name) for name in graph.outputs]
    classes = outputs[0].shape[1] if len(outputs) == 1 and outputs[0] and len(outputs[0].shape) == 2 and outputs[0].shape[1] > 0 else None
    name = source.plan.arch if source.plan else source.path.parent.name or source.path.stem
    write_inference_config(artifacts, input_size=size, num_classes=classes, model_name=name)
    return None


def _single_input_shape(graph: Graph) -> tuple[int, ...]:
    """The shape of the graph's one input, () when it has several or its shape is unknown."""
    return graph.tensors[graph.inputs[0]].shape if len(graph.inputs) == 1 and graph.inputs[0] in graph.tensors else ()


def input_size_of(graph: Graph, asked: SizeLike | None, where: str) -> Size:
    """The (H, W) the manifest records: the program's own where its input fixes them, `asked`
    (default 224) where it leaves them open. Asking a program fixed at one size for another is a
    usage error: nothing would honour it."""
    shape = _single_input_shape(graph)
    fixed = tuple(shape[2:]) if len(shape) == 4 else (-1, -1)
    want = as_size(asked) if asked is not None else (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE)
    if asked is not None and any(f > 0 and f != a for f, a in zip(fixed, want)):
        shown = "x".join(str(d) if d > 0 else "any" for d in fixed)
        raise UsageError(f"--input-size {size_text(want)}: {where} takes {shown} images (its input shape is fixed); "
                         "leave --input-size out, or export the model with another input size")
    return tuple(f if f > 0 else a for f, a in zip(fixed, want))  # type: ignore[return-value]


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
    input_size: SizeLike | None = None,
    onnx: bool = False,
    force: bool = False,
    allow_nonfinite: bool = False,
    paddle_format: str = "auto",
    static_size: bool = False,
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
        raise UsageError(f"--paddle-format {printable(paddle_format)}: choose one of {', '.join(PADDLE_FORMATS)}")
    if into is None:
        check_destination(out, force, [source_path])  # before any work: OUT apart from SOURCE, replaceable
    timings: dict[str, float] = {}
    warnings: list[str] = []
    start = time.perf_counter()
    source = open_source(source_path, arch=arch, num_classes=num_classes,
                         input_size=DEFAULT_INPUT_SIZE if input_size is None else input_size,
                         allow_nonfinite=allow_nonfinite)
    warnings += source.warnings
    timings["read"] = time.perf_counter() - start
    for name in source.graph.inputs:  # what the manifest records, verify feeds and ONNX declares
        shape = source.graph.tensors[name].shape if name in source.graph.tensors else ()
        problem = input_shape_problem(shape)
        if problem:
            raise ConvertError(f"{printable(source.path)}: input {printable(name)} has shape {list(shape)}: {problem}; "
                               "no deploy model of it could be verified or run")
    size = input_size_of(source.graph, input_size, printable(source.path))  # the manifest, ONNX and verify use it

    start = time.perf_counter()
    train_ops, train_totals = source.graph.op_counts(), graph_totals(source.graph)
    # persistables/ keeps the 1x1 convs and BNs of the source: those weights stay
    release = None if reference_layout else source.release
    folding = fold_graph(source.graph, allow_nonfinite, warnings.append, track, release=release)
    fused, declined = folding.fused, folding.declined
    deploy = stored_weights(deploy_graph(folding))
    if allow_nonfinite and not all(np.isfinite(w).all() for w in deploy.weights.values() if w.dtype.kind == "f"):
        warnings.append("the deploy weights hold NaN or Inf: verify this OUT with --allow-nonfinite")
    deploy_totals = graph_totals(deploy)
    timings["fusion"] = time.perf_counter() - start

    paddle = import_paddle()
    formats = _formats(paddle_format, deploy, warnings.append)
    manifest = new_manifest(
        paddle_version=paddle.__version__,
        source=SourceRecord(str(source.path.resolve()), source.sha256, source.format, source.kind),
        inputs=tuple(InputRecord(name, tuple(source.graph.tensors[name].shape), source.graph.tensors[name].dtype)
                     for name in source.graph.inputs),
        input_hw=size,
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
    from acnet_convert.write.pir import apply_deploy_graph, save_program

    with staged_dir(out, force, [source_path]) if into is None else contextlib.nullcontext(Path(into)) as stage:
        artifacts = Artifacts(stage)
        try:
            with phase("editing the program of", source.path, PADDLE):
                apply_deploy_graph(source.program, deploy)
            with phase("saving the deploy model of", source.path, PADDLE):
                save_program(source.program, artifacts.prefix)
            timings["paddle"] = time.perf_counter() - start
            if "legacy" in formats:  # from the same deploy graph, sharing inference.pdiparams
                from acnet_convert.write.legacy.writer import write_legacy_program

                legacy_start = time.perf_counter()
                try:
                    with phase("writing the legacy deploy model of", source.path, PADDLE):
                        write_legacy_program(artifacts, deploy)
                except ConvertError as err:  # Paddle refused an op (a BN epsilon above 1e-3): auto falls back
                    if paddle_format != "auto":
                        raise
                    warnings.append(f"no legacy inference.pdmodel: {str(err).rstrip('.')}; the PIR model is written")
                    formats.remove("legacy")
                    manifest = replace(manifest, formats=tuple(formats))
                if "pir" not in formats:
                    artifacts.program("pir").unlink()
                timings["legacy"] = time.perf_counter() - legacy_start
            artifacts.write_deploy_weights(deploy.weights)
            why = _write_inference_config(artifacts, source, size)
            if why is not None:
                warnings.append(f"no {artifacts.inference_config.name} written: {why}")
            if reference_layout:
                write_reference_layout(artifacts.persistables, reference_tensors(plan, source.graph.weights, deploy.weights))
            if onnx:
                from acnet_convert.commands.export_onnx import export_onnx

                onnx_start = time.perf_counter()
                exported = export_onnx(artifacts, manifest, static_size=static_size)
                manifest = replace(manifest, onnx_input=exported.input_dims)
                timings["onnx"] = time.perf_counter() - onnx_start
            artifacts.write_manifest(manifest)
        except OSError as err:
            raise ConvertError(f"cannot write {printable(out)}: {err.strerror or err}") from None
        files = sorted(p.name for p in stage.iterdir())
    timings["write"] = time.perf_counter() - start
    return FuseResult(out, source, manifest, fused, declined, warnings, files, timings)
