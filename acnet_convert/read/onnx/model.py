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
from acnet_convert.common.phase import ONNX, phase
from acnet_convert.common.protobuf_fields import fields
from acnet_convert.common.regular_file import file_size, open_regular
from acnet_convert.common.text import one_line, printable

ONNX_SUFFIX = ".onnx"
ONNX_FORMAT = "onnx"
MAX_MODEL_BYTES = (2 << 30) - 1  # protobuf cannot parse more
MIN_OPSET = 13
_EXTERNAL = 1  # onnx.TensorProto.EXTERNAL


def is_onnx_path(path: Path | str) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


class _Digest:
    """The sha256 of the model and its data files, computed in a thread while the model is read
    and folded (hashlib releases the GIL on large buffers); asked for at the end."""

    def __init__(self, first: tuple[Path, bytes], paths: list[Path]) -> None:
        self.path = first[0]
        self.out: list[str] = []
        self.thread: threading.Thread | None = threading.Thread(target=_sha256, args=(first, paths, self.out), daemon=True)
        self.thread.start()

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (an `OnnxModel` sent from a supervised child) as its value."""
        self.value()
        return {"path": self.path, "out": self.out, "thread": None}

    def value(self) -> str:
        if self.thread is not None:
            self.thread.join()
        if not self.out:
            raise ConvertError(f"cannot read {printable(self.path)} to hash it")
        return self.out[0]


@dataclass
class OnnxModel:
    proto: Any  # onnx.ModelProto, external data loaded into it
    path: Path
    digest: _Digest
    data: bytes = b""  # the file's bytes: the weights stored in it are read as views of them
    data_files: tuple[Path, ...] = ()  # external data files, as the model names them
    external: frozenset[str] = frozenset()  # tensors the source keeps in external data
    opset: int = 0  # of the default domain
    _nodes: list[tuple[Any, Any]] | None = field(default=None, repr=False)

    @property
    def sha256(self) -> str:
        return self.digest.value()

    @property
    def nodes(self) -> list[tuple[Any, Any]]:
        """(NodeProto, GraphProto it sits in) by node number (see the module docstring)."""
        if self._nodes is None:
            self._nodes = list(numbered_nodes(self.proto.graph))
        return self._nodes

    def raw_views(self) -> dict[str, tuple[int, int]]:
        """Initializer name -> (offset, length) of its raw bytes in `data` (main graph, stored
        in the file; a tensor named twice or holding its bytes twice is left out)."""
        spans: dict[str, tuple[int, int]] = {}
        seen: set[str] = set()
        data = self.data
        try:
            for number, wire, start, end in fields(data, 0, len(data)):
                if number != 7 or wire != 2:  # ModelProto.graph
                    continue
                for g_number, g_wire, t_start, t_end in fields(data, start, end):
                    if g_number != 5 or g_wire != 2:  # GraphProto.initializer
                        continue
                    name, raw = None, []
                    for n, w, a, b in fields(data, t_start, t_end):
                        if n == 8 and w == 2:  # TensorProto.name
                            name = bytes(data[a:b]).decode("utf-8", "replace")
                        elif n == 9 and w == 2:  # TensorProto.raw_data
                            raw.append((a, b - a))
                    if name is not None and len(raw) == 1 and name not in seen:
                        spans[name] = raw[0]
                    elif name in spans:
                        del spans[name]
                    seen.add(name or "")
        except (ValueError, IndexError):
            return {}
        return spans

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


def _sha256(first: tuple[Path, bytes], paths: list[Path], out: list[str]) -> None:
    """The digest of the model's bytes (already read) and of its external data files."""
    digest = hashlib.sha256()
    digest.update(first[0].name.encode() + b"\0")
    digest.update(first[1])
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    out.append(digest.hexdigest())


_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_STUB_BYTES = 1024  # tensors from this size stand in as external data for the checker


def check_structure(proto: Any, full_check: bool = False) -> None:
    """onnx.checker on `proto` (`full_check`: with shape inference), every large tensor standing
    in as external data of its declared size (a sparse file): the checker reads no tensor
    values, so the model's weights are neither serialized nor copied for it. Raises what the
    checker raises."""
    import math
    import tempfile

    import onnx

    light = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(light, name, getattr(proto, name))
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    light.metadata_props.extend(proto.metadata_props)
    g, lg = proto.graph, light.graph
    lg.name, lg.doc_string = g.name, g.doc_string
    for part in ("node", "input", "output", "value_info", "sparse_initializer", "quantization_annotation"):
        getattr(lg, part).extend(getattr(g, part))
    offset = 0
    for tensor in g.initializer:
        size = math.prod(tensor.dims) * _ITEMSIZE.get(tensor.data_type, 0)
        if size < _STUB_BYTES and tensor.data_location != _EXTERNAL:
            lg.initializer.append(tensor)
            continue
        stub = lg.initializer.add()
        stub.name, stub.data_type, stub.data_location = tensor.name, tensor.data_type, _EXTERNAL
        stub.dims.extend(tensor.dims)
        for key, value in (("location", "stub.data"), ("offset", str(offset)), ("length", str(size))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
        offset += size
    with tempfile.TemporaryDirectory(prefix="acnet-check-") as tmp:
        with open(os.path.join(tmp, "stub.data"), "wb") as f:
            f.truncate(offset)  # sparse: nothing is written
        path = os.path.join(tmp, "model.onnx")
        with open(path, "wb") as f:
            f.write(light.SerializeToString())
        onnx.checker.check_model(path, full_check=full_check)


def load_onnx(path: Path | str, check: bool = True) -> OnnxModel:
    """Read `path` (and its external data) into an `OnnxModel`; a file that is not a valid ONNX
    model is one ConvertError naming it. `check=False` skips onnx.checker (a model fuse wrote).
    Announced as a phase: protobuf and onnx.checker are native code on an untrusted file."""
    with phase("loading", path, ONNX):
        return _load_onnx(Path(path), check)


def _load_onnx(path: Path, check: bool) -> OnnxModel:
    import onnx

    with open_regular(path) as f:
        size = file_size(f)
        if size > MAX_MODEL_BYTES:
            raise ConvertError(f"{printable(path)} is {size} bytes: larger than the 2 GB an ONNX protobuf can hold")
        data = f.read()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError types
        raise ConvertError(f"{printable(path)} is not an ONNX model: {one_line(err)}") from None
    if not proto.HasField("graph"):
        raise ConvertError(f"{printable(path)} is not an ONNX model: it has no graph")
    data_files, external = _check_external_data(proto, path)
    digest = _Digest((path, data), list(data_files))
    try:
        if check:
            check_structure(proto)
        if external:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
    except Exception as err:  # noqa: BLE001 - onnx raises ValidationError, ValueError, OSError
        raise ConvertError(f"{printable(path)} is not a valid ONNX model: {one_line(err, 300)}") from None
    opsets = {o.domain: o.version for o in proto.opset_import}
    opset = opsets.get("", opsets.get("ai.onnx", 0))
    if opset < MIN_OPSET:
        raise ConvertError(f"{printable(path)} uses ONNX opset {opset}; opsets {MIN_OPSET} and newer are read "
                           f"(export again with opset_version={MIN_OPSET} or later)")
    return OnnxModel(proto, path, digest, data, data_files, external, opset)
