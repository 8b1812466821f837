"""`export-onnx`: the deploy Paddle program in OUT/, read back as a graph, translated to ONNX.

`fuse --onnx` calls the same function on its staging folder, so the ONNX file is always a
translation of the deploy program as written, whichever command made it."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from acnet_convert.out import staging
from acnet_convert.out.artifacts import Artifacts, Manifest
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.phase import ONNX, phase
from acnet_convert.common.sizes import size_text
from acnet_convert.common.text import printable


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    fp16: bool
    underflow: int  # with fp16: nonzero weight values that become 0 in float16
    values: int  # float weight values in all
    input_dims: tuple[int | str, ...] = ()  # the ONNX input's: "N", "H", "W" where symbolic

    @property
    def dynamic_size(self) -> bool:
        return len(self.input_dims) == 4 and all(isinstance(d, str) for d in self.input_dims[2:])


def free_axes(manifest: Manifest) -> tuple[int, ...]:
    """The input axes (2: height, 3: width) of a model that takes any size there: both for a
    ResNet-ACNet checkpoint (convolutions and a global pool: its program is only built at
    --input-size), those the program leaves open (-1) for a program."""
    if len(manifest.inputs) != 1 or len(manifest.inputs[0].shape) != 4:
        return ()
    if manifest.source.kind == "checkpoint":
        return (2, 3)
    return tuple(axis for axis in (2, 3) if manifest.inputs[0].shape[axis] < 0)


def onnx_metadata(manifest: Manifest) -> dict[str, str]:
    """The model's metadata_props: what it was made from and by which tool."""
    return {
        "arch": manifest.arch or "",
        "num_classes": "" if manifest.num_classes is None else str(manifest.num_classes),
        "input_size": size_text(manifest.input_hw),
        "source_path": manifest.source.path,
        "source_sha256": manifest.source.sha256,
        "source_format": manifest.source.format,
        "tool_version": manifest.tool_version,
    }


def with_input_size(graph: Any, size: tuple[int, int]) -> Any:
    """`graph` whose [N, C, H, W] inputs have `size` (H, W) where their own are dynamic."""
    tensors = dict(graph.tensors)
    for name in graph.inputs:
        info = tensors.get(name)
        if info is not None and len(info.shape) == 4:
            shape = (*info.shape[:2], *(d if d > 0 else s for d, s in zip(info.shape[2:], size)))
            tensors[name] = dataclasses.replace(info, shape=shape)
    return dataclasses.replace(graph, tensors=tensors)


def export_onnx(
    artifacts: Artifacts,
    manifest: Manifest | None = None,
    output: Path | None = None,
    *,
    force: bool = True,
    opset: int = 17,
    static_batch: bool = False,
    batch_size: int = 1,
    static_size: bool = False,
    fp16: bool = False,
    record: bool = False,
) -> OnnxExport:
    """Write the ONNX model of the deploy program in `artifacts` (default OUT/model.onnx).

    Height and width are symbolic where the model takes any size (`free_axes`) unless
    `static_size` fixes them to the manifest's input size; `static_batch` fixes the batch to
    `batch_size`. With `record`, OUT/manifest.json is rewritten to say what input the ONNX
    model takes (`fuse` records it in the manifest it writes). With `fp16` the weights and activations are float16 (inputs and outputs stay
    float32): before anything is written, a weight beyond float16's range is refused by name
    (`onnx_writer.fp16_range_report`), and the values that underflow to zero are counted."""
    with phase("importing", "onnx", ONNX):
        from acnet_convert.write.onnx.writer import build_onnx, fp16_range_report, write_onnx
    from acnet_convert.read.program import load_program
    from acnet_convert.read.program_reader import read_graph

    manifest = manifest or artifacts.read_manifest()
    artifacts.check_complete(manifest)
    output = artifacts.onnx if output is None else Path(output)
    if output.exists() and not force:
        raise ConvertError(f"{printable(output)} already exists (pass --force to replace it)")
    fmt = "pir" if "pir" in manifest.formats else manifest.formats[0]
    shown = artifacts.program(fmt)
    program = load_program(shown, artifacts.params, follow_links=False)
    graph = read_graph(program)
    free = () if static_size else free_axes(manifest)
    if not free:  # where the program leaves H and W open, the manifest's size fixes them
        graph = with_input_size(graph, manifest.input_hw)
    underflow = values = 0
    if fp16:
        overflowing, underflow, values = fp16_range_report(graph)
        if overflowing:
            names = sorted(overflowing)
            shown = ", ".join(printable(n) for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            largest = max(float(np.nanmax(np.abs(np.asarray(graph.weights[n], np.float64)))) for n in names)
            raise ConvertError(f"{'weight' if len(names) == 1 else 'weights'} {shown} "
                               f"{'does' if len(names) == 1 else 'do'} not fit float16: values up to "
                               f"{largest:.4g}, beyond its largest 65504; export without --fp16")
    with phase("translating to ONNX the deploy model", shown, ONNX):
        model = build_onnx(graph, opset=opset, static_batch=static_batch, batch_size=batch_size, dynamic_size=free,
                           fp16=fp16, metadata=onnx_metadata(manifest))
    del program, graph
    dims = tuple(d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    with phase("checking and writing the ONNX model of", shown, ONNX):
        write_onnx(model, output, replace=force)
    if record:
        data = json.dumps(replace(manifest, onnx_input=dims).to_json(), indent=2) + "\n"
        staging.write_file(artifacts.manifest_path, data.encode(), replace=True, what="manifest")
    return OnnxExport(output, opset, fp16, underflow, values, dims)
