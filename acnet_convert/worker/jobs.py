"""The work of each command, as the worker runs it: the job's options (JSON: paths as strings)
to the library call, and its outcome to a JSON value the command process prints from.

Each job runs inside its own phase (`fusing SOURCE`, ...), so whatever happens, the command
process knows which file the work was on."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from acnet_convert.common.phase import phase
from acnet_convert.out.artifacts import ONNX_MODEL, ONNX_SOURCE, Artifacts
from acnet_convert.worker.channel import Channel

_PATHS = ("source", "ckpt", "onnx", "inputs", "images", "labels")
_TUPLES = ("input_size", "crop", "mean", "std")  # sizes (H, W) and R,G,B: JSON made them lists


def _paths(options: dict[str, Any]) -> dict[str, Any]:
    def value(key: str, v: Any) -> Any:
        if key in _PATHS and isinstance(v, str):
            return Path(v)
        return tuple(v) if key in _TUPLES and isinstance(v, list) else v

    return {k: value(k, v) for k, v in options.items()}


def fuse(options: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Fuse into the staging folder `into` the command process made for OUT (and commits)."""
    from acnet_convert.commands.fuse import fuse as run

    options = _paths(options)
    source, out, into = options.pop("source"), Path(options.pop("out")), Path(options.pop("into"))
    with phase("fusing", source):
        result = run(source, out, into=into, track=channel.track, note=channel.note, **options)
    return {"summary": result.summary(), "format": result.manifest.formats[0], "files": result.files,
            "warnings": list(result.warnings)}


def fuse_onnx(options: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """fuse MODEL.onnx: onnx reads the untrusted model here, never in the command process."""
    from acnet_convert.commands.fuse_onnx import fuse_onnx as run

    options = _paths(options)
    source, out, into = options.pop("source"), Path(options.pop("out")), Path(options.pop("into"))
    with phase("fusing", source):
        result = run(source, out, into=into, track=channel.track, note=channel.note, **options)
    return {"summary": result.summary(), "files": result.files, "warnings": list(result.warnings)}


def export_onnx(options: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """Write the ONNX model into the folder `into` the command process made beside the target."""
    from acnet_convert.commands.export_onnx import export_onnx as run

    artifacts = Artifacts(Path(options.pop("out_dir")))
    into = Path(options.pop("into"))
    with phase("exporting", artifacts.root):
        done = run(artifacts, None, into / ONNX_MODEL, force=False, **options)
    return {"opset": done.opset, "fp16": done.fp16, "underflow": done.underflow, "values": done.values,
            "input_dims": list(done.input_dims)}


def verify(options: dict[str, Any], channel: Channel) -> dict[str, Any]:
    """verify OUT: of a Paddle model's, or (its manifest says) an ONNX model's fuse."""
    options = _paths(options)
    out = Path(options.pop("out_dir"))
    if Artifacts(out).read_manifest().source.format == ONNX_SOURCE:
        from acnet_convert.commands.verify_onnx import verify_onnx as run
    else:
        from acnet_convert.commands.verify import verify as run
    with phase("verifying", out):
        report = run(out, note=channel.note, track=channel.track, **options)
    # the table without its last line, the verdict, which the command process prints (coloured)
    table = report.format_table().rsplit("\n", 1)[0]
    return {"ok": report.ok, "verdict": report.verdict, "table": table, "report": report.to_json()}


def inspect(options: dict[str, Any], channel: Channel) -> dict[str, Any]:
    import json

    from acnet_convert.commands.describe import describe, format_report

    path = Path(options["path"])
    with phase("describing", path):
        report = describe(path, input_size=_paths(options).get("input_size"))
    return {"text": json.dumps(report, indent=2) if options.get("as_json") else format_report(report)}


def versions(_options: dict[str, Any], _channel: Channel) -> dict[str, Any]:
    from acnet_convert.worker.versions import versions as text

    return {"text": text()}


JOBS: dict[str, Callable[[dict[str, Any], Channel], dict[str, Any]]] = {
    "fuse": fuse, "fuse-onnx": fuse_onnx, "export-onnx": export_onnx, "verify": verify, "inspect": inspect, "versions": versions,
}
