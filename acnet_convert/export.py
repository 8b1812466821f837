"""`export-onnx`: the deploy Paddle program in OUT/, read back as a graph, translated to ONNX.

`fuse --onnx` calls the same function on its staging folder, so the ONNX file is always a
translation of the deploy program as written, whichever command made it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from acnet_convert.artifacts import Artifacts, Manifest
from acnet_convert.errors import ConvertError
from acnet_convert.text import printable


def onnx_metadata(manifest: Manifest) -> dict[str, str]:
    """The model's metadata_props: what it was made from and by which tool."""
    return {
        "arch": manifest.arch or "",
        "num_classes": "" if manifest.num_classes is None else str(manifest.num_classes),
        "input_size": str(manifest.input_size),
        "source_path": manifest.source.path,
        "source_sha256": manifest.source.sha256,
        "source_format": manifest.source.format,
        "tool_version": manifest.tool_version,
    }


def export_onnx(
    artifacts: Artifacts,
    manifest: Manifest | None = None,
    output: Path | None = None,
    *,
    force: bool = True,
    **options: Any,
) -> Path:
    """Write the ONNX model of the deploy program in `artifacts` (default OUT/model.onnx);
    `options` go to `onnx_writer.build_onnx` (opset, static_batch, dynamic_size, fp16)."""
    from acnet_convert.onnx_writer import build_onnx, write_onnx
    from acnet_convert.program_reader import load_program, read_graph

    manifest = manifest or artifacts.read_manifest()
    artifacts.check_complete(manifest)
    output = artifacts.onnx if output is None else Path(output)
    if output.exists() and not force:
        raise ConvertError(f"{printable(output)} already exists (pass --force to replace it)")
    fmt = "pir" if "pir" in manifest.formats else manifest.formats[0]
    program = load_program(artifacts.program(fmt), artifacts.params)
    graph = read_graph(program)
    model = build_onnx(graph, input_size=manifest.input_size, metadata=onnx_metadata(manifest), **options)
    del program, graph
    write_onnx(model, output)
    return output
