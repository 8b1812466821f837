"""An ONNX source as fuse, verify and inspect read it: the loaded model and its graph."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from acnet_convert.graph.ir import Graph
from acnet_convert.read.onnx.model import ONNX_FORMAT, OnnxModel, load_onnx
from acnet_convert.read.onnx.reader import read_graph


@dataclass
class OnnxSource:
    path: Path
    model: OnnxModel
    graph: Graph
    kind: str = "program"
    format: str = ONNX_FORMAT
    ignored: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        return self.model.sha256


def open_onnx(path: Path | str) -> OnnxSource:
    """Load and read a train-form ONNX model (one ConvertError naming the file and the node for
    bad input). A library function: the work a supervised child can run."""
    model = load_onnx(path)
    return OnnxSource(model.path, model, read_graph(model))
