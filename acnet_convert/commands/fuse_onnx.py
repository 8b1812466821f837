"""`fuse MODEL.onnx OUT`: a train-form ONNX model from any framework -> its graph -> what folds,
found by structure -> numpy fusion -> the source model edited in place (`write.onnx.edit`),
checked, written into OUT/ with the manifest, all at once. No Paddle model is written and
Paddle is not imported."""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from acnet_convert.commands.fuse import FuseResult, input_size_of
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.phase import ONNX, phase
from acnet_convert.common.sizes import SizeLike
from acnet_convert.common.text import printable
from acnet_convert.graph.regions import Region
from acnet_convert.graph.reparam import Folding, deploy_graph, fold_graph
from acnet_convert.graph.summary import declined_rows, fused_rows, graph_totals
from acnet_convert.out.artifacts import ONNX_DATA, ONNX_SOURCE, Artifacts, InputRecord, SourceRecord, new_manifest
from acnet_convert.out.destination import check_destination
from acnet_convert.out.staging import staged_dir
from acnet_convert.read.onnx.model import OnnxModel
from acnet_convert.read.onnx.source import OnnxSource, open_onnx


@dataclass
class OnnxFuseResult(FuseResult):
    source: OnnxSource  # type: ignore[assignment] - the same fields a Paddle source's summary reads


def _onnx_node(model: OnnxModel, node: Any) -> str:
    """A graph node as its (first) ONNX node: "node #12 'name' (Conv)"."""
    return model.where(node.origin[0]).split(": ", 1)[-1] if node.origin else node.where()


def onnx_tables(model: OnnxModel, folding: Folding) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's fused and declined tables, each op named by its ONNX node (read before
    the edit renumbers them)."""
    graph = folding.graph
    fused = fused_rows(graph, folding.fused)
    for row, f in zip(fused, folding.fused):
        row["ops"] = [_onnx_node(model, graph.nodes[i]) for i in f.collapse.nodes]
    declined = declined_rows(graph, folding.declined)
    for row, d in zip(declined, folding.declined):
        row["op"] = _onnx_node(model, graph.nodes[d.node])
    return fused, declined


def fuse_onnx(
    source_path: Path,
    out: Path,
    *,
    input_size: SizeLike | None = None,
    force: bool = False,
    allow_nonfinite: bool = False,
    track: Callable[[list[Region], str], Iterable[Region]] | None = None,
    note: Callable[[str], None] = lambda _text: None,
    into: Path | None = None,
) -> OnnxFuseResult:
    """Fuse the train-form ONNX model `source_path` into OUT/model.onnx (see the module docstring).
    With `into`, an empty folder the caller made (and checked OUT for, and commits): everything
    is written there instead, nothing is committed here."""
    with phase("importing", "onnx", ONNX):
        from acnet_convert.write.onnx.edit import apply_deploy, check_onnx, save_onnx

    source_path, out = Path(source_path), Path(out)
    if into is None:
        check_destination(out, force, [source_path])  # before any work: OUT apart from SOURCE, replaceable
    timings: dict[str, float] = {}
    warnings: list[str] = []
    start = time.perf_counter()
    with phase("reading the model", source_path, ONNX):
        source = open_onnx(source_path)
    # its external data is a source too (the caller knew only the model): OUT must stay apart from it
    check_destination(out, force, [source_path, *source.model.data_files])
    graph = source.graph
    size = input_size_of(graph, input_size, printable(source.path))  # the manifest, the ONNX checks and verify use it
    timings["read"] = time.perf_counter() - start

    start = time.perf_counter()
    folding = fold_graph(graph, allow_nonfinite, warnings.append, track)
    fused, declined = folding.fused, folding.declined
    deploy = deploy_graph(folding)
    train_totals, deploy_totals = graph_totals(graph), graph_totals(deploy)
    timings["fusion"] = time.perf_counter() - start
    fused_table, declined_table = onnx_tables(source.model, folding)
    note(f"writing the fused ONNX model to {printable(out)}")
    start = time.perf_counter()
    external = source.model.external
    with phase("editing and checking the model", source.path, ONNX):
        proto = apply_deploy(source.model, graph, deploy)
        check_onnx(proto, out / "model.onnx")
    timings["edit"] = time.perf_counter() - start
    manifest = new_manifest(
        paddle_version="",
        source=SourceRecord(str(source.path.resolve()), source.sha256, ONNX_SOURCE, source.kind),
        inputs=tuple(InputRecord(name, tuple(graph.tensors[name].shape), graph.tensors[name].dtype)
                     for name in graph.inputs if name in graph.tensors),
        input_hw=size,
        formats=(),
        fused=tuple(fused_table),
        declined=tuple(declined_table),
        ops={"train": graph.op_counts(), "deploy": deploy.op_counts()},
        totals={"params_train": train_totals["params"], "params_deploy": deploy_totals["params"],
                "macs_train": train_totals["macs"], "macs_deploy": deploy_totals["macs"]},
    )
    start = time.perf_counter()
    staged = staged_dir(out, force, [source_path, *source.model.data_files]) if into is None else nullcontext(Path(into))
    with staged as stage:
        artifacts = Artifacts(stage)
        try:
            with phase("saving the fused model of", source.path, ONNX):
                save_onnx(proto, artifacts.onnx, external, ONNX_DATA)
            artifacts.write_manifest(manifest)
        except OSError as err:
            raise ConvertError(f"cannot write {printable(out)}: {err.strerror or err}") from None
        files = sorted(p.name for p in stage.iterdir())
    timings["write"] = time.perf_counter() - start
    return OnnxFuseResult(out, source, manifest, fused, declined, warnings, files, timings)  # type: ignore[arg-type]
