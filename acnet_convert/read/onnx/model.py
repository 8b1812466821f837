"""A train-form ONNX model, found, checked and loaded: the file is a regular `.onnx` file within
protobuf's 2 GB, every external-data entry names a regular file inside the model's folder with
its bytes inside that file (checked before onnx reads any of it), and onnx's own parser and
checker accept it. What `load_onnx` returns keeps the parsed model: the ONNX writer edits it
in place.

Node numbering, shared by the reader (a node's `origin`) and the writer: the main graph's nodes
in order, then the nodes of every sub-graph (an If's branches) in the order they are met.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import file_size, open_regular
from acnet_convert.common.text import one_line, printable

ONNX_SUFFIX = ".onnx"
ONNX_FORMAT = "onnx"
MAX_MODEL_BYTES = (2 << 30) - 1  # protobuf cannot parse more
MIN_OPSET = 13
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


def is_onnx_path(path: Path | str) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


@dataclass
class OnnxModel:
    proto: Any  # onnx.ModelProto, external data loaded into it
    path: Path
    sha256: str
    data_files: tuple[Path, ...] = ()  # external data files, as the model names them
    external: frozenset[str] = frozenset()  # tensors the source keeps in external data
    opset: int = 0  # of the default domain
    _nodes: list[tuple[Any, Any]] | None = field(default=None, repr=False)

    @property
    def nodes(self) -> list[tuple[Any, Any]]:
        """(NodeProto, GraphProto it sits in) by node number (see the module docstring)."""
        if self._nodes is None:
            self._nodes = list(numbered_nodes(self.proto.graph))
        return self._nodes

    def where(self, index: int) -> str:
        node = self.nodes[index][0]
        name = f" '{printable(node.name, 80)}'" if node.name else ""
        return f"{printable(self.path)}: node #{index}{name} ({printable(node.op_type, 40)})"


def numbered_nodes(graph: Any) -> Iterator[tuple[Any, Any]]:
    """(node, its graph): the main graph's nodes, then each sub-graph's, in the order met."""
    pending = [graph]
    while pending:
        g = pending.pop(0)
        subgraphs = []
        for node in g.node:
            yield node, g
            for attr in node.attribute:
                if attr.type == 5:  # GRAPH
                    subgraphs.append(attr.g)
                elif attr.type == 10:  # GRAPHS
                    subgraphs.extend(attr.graphs)
        pending[0:0] = subgraphs


def _all_tensors(proto: Any) -> Iterator[Any]:
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(proto)


def _external_entries(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _check_external_data(proto: Any, path: Path) -> tuple[tuple[Path, ...], frozenset[str]]:
    """Every external-data entry names a regular file inside the model's folder (no absolute
    path, no `..`, no link out of it) and bytes that lie inside that file."""
    base = path.parent
    real_base = Path(os.path.realpath(base))
    files: dict[str, int] = {}
    names = set()
    for tensor in _all_tensors(proto):
        if tensor.data_location != _EXTERNAL:
            continue
        entries = _external_entries(tensor)
        location = entries.get("location", "")
        shown = f"{printable(path)}: tensor {printable(tensor.name, 80)}"
        parts = Path(location).parts
        if not location or Path(location).is_absolute() or ".." in parts or "\x00" in location:
            raise ConvertError(f"{shown} names external data {printable(location)!r}: only a file beside the model is read")
        target = base / location
        real = Path(os.path.realpath(target))
        if real_base not in real.parents:
            raise ConvertError(f"{shown}: external data {printable(location)} lies outside {printable(base)}")
        if location not in files:
            with open_regular(target, shown=target) as f:
                files[location] = file_size(f)
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else files[location] - offset
        except ValueError:
            raise ConvertError(f"{shown}: external data offset or length is not a number") from None
        if offset < 0 or length < 0 or offset + length > files[location]:
            raise ConvertError(f"{shown}: external data bytes {offset}..{offset + length} lie outside "
                               f"{printable(location)} ({files[location]} bytes)")
        names.add(tensor.name)
    return tuple(base / name for name in sorted(files)), frozenset(names)


def _sha256(paths: list[Path], out: list[str]) -> None:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    out.append(digest.hexdigest())


def load_onnx(path: Path | str, check: bool = True) -> OnnxModel:
    """Read `path` (and its external data) into an `OnnxModel`; a file that is not a valid ONNX
    model is one ConvertError naming it. `check=False` skips onnx.checker (a model fuse wrote)."""
    import onnx

    path = Path(path)
    with open_regular(path) as f:
        size = file_size(f)
        if size > MAX_MODEL_BYTES:
            raise ConvertError(f"{printable(path)} is {size} bytes: larger than the 2 GB an ONNX protobuf can hold")
        data = f.read()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError types
        raise ConvertError(f"{printable(path)} is not an ONNX model: {one_line(err)}") from None
    del data
    if not proto.HasField("graph"):
        raise ConvertError(f"{printable(path)} is not an ONNX model: it has no graph")
    data_files, external = _check_external_data(proto, path)
    digest: list[str] = []
    hashing = threading.Thread(target=_sha256, args=([path, *data_files], digest), daemon=True)
    hashing.start()
    try:
        if external:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        if check:
            onnx.checker.check_model(proto)
    except Exception as err:  # noqa: BLE001 - onnx raises ValidationError, ValueError, OSError
        raise ConvertError(f"{printable(path)} is not a valid ONNX model: {one_line(err, 300)}") from None
    finally:
        hashing.join()
    if not digest:
        raise ConvertError(f"cannot read {printable(path)} to hash it")
    opsets = {o.domain: o.version for o in proto.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    if opset < MIN_OPSET:
        raise ConvertError(f"{printable(path)} uses ONNX opset {opset}; opsets {MIN_OPSET} and newer are read "
                           f"(export again with opset_version={MIN_OPSET} or later)")
    return OnnxModel(proto, path, digest[0], data_files, external, opset)
