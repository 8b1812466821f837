"""OUT/: the one place that knows its file names, and the manifest, validated once on read.

    OUT/
      inference.json + inference.pdiparams   deploy Paddle model (PIR)          paddle_writer
      inference.pdmodel                      the same model, legacy format       legacy_writer
      inference.yml                          preprocessing + label count          deploy_config
      deploy.pdparams                        fused weights, name -> ndarray      this module
      manifest.json                          what was converted, from what, how  this module
      model.onnx                             with --onnx / export-onnx            onnx_writer
                                             (an ONNX source: the fused model)   onnx edit
      model.onnx.data                        its external data, when the source had some
      persistables/                          --reference-layout                   reference_layout

Writers write through `Artifacts`' paths; readers read through it.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from acnet_convert import __version__
from acnet_convert.common.budgets import MAX_DIM, MAX_SIDE, input_shape_problem
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import file_size, open_regular
from acnet_convert.common.text import one_line, printable

if TYPE_CHECKING:  # numpy is imported where weights are written: the CLI starts without it
    import numpy as np

TOOL = "acnet-convert"
MANIFEST_VERSION = 2
MANIFEST = "manifest.json"
DEPLOY_WEIGHTS = "deploy.pdparams"
ONNX_MODEL = "model.onnx"
ONNX_DATA = "model.onnx.data"
ONNX_SOURCE = "onnx"  # SourceRecord.format of a train-form ONNX source (OUT holds no Paddle model)
MODEL_PREFIX = "inference"
INFERENCE_CONFIG = "inference.yml"
PERSISTABLES = "persistables"
PROGRAM_SUFFIXES = {"pir": ".json", "legacy": ".pdmodel"}
MAX_MANIFEST_BYTES = 64 << 20


@dataclass(frozen=True)
class SourceRecord:
    path: str
    sha256: str
    format: str  # "per-variable" | "pdparams" | "pir" | "legacy" | "onnx"
    kind: str  # "checkpoint" | "program"


@dataclass(frozen=True)
class InputRecord:
    name: str
    shape: tuple[int, ...]  # -1 for dynamic dimensions
    dtype: str


@dataclass(frozen=True)
class Manifest:
    tool_version: str
    paddle_version: str
    source: SourceRecord
    inputs: tuple[InputRecord, ...]
    input_hw: tuple[int, int]  # (H, W) verify and ONNX use where the model's are dynamic
    formats: tuple[str, ...]  # Paddle formats written: "pir", "legacy"; none for an ONNX source
    arch: str | None = None  # the ResNet-ACNet family member, for checkpoint sources
    num_classes: int | None = None
    ignored_variables: int = 0
    fused: tuple[dict[str, Any], ...] = ()  # one row per fused conv (see convert.fused_rows)
    declined: tuple[dict[str, Any], ...] = ()  # sums left as they are, with the reason
    ops: dict[str, dict[str, int]] = field(default_factory=dict)  # {"train": counts, "deploy": counts}
    # params_train, params_deploy, macs_train, macs_deploy (None where a shape is dynamic)
    totals: dict[str, int | None] = field(default_factory=dict)
    # the input model.onnx takes, when fuse or export-onnx wrote it: [N, C, H, W] with "N", "H",
    # "W" where symbolic (height and width are symbolic where the model takes any size)
    onnx_input: tuple[int | str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_size"] = list(data.pop("input_hw"))  # [H, W]; manifests before 0.3 hold one int
        return {"tool": TOOL, "manifest_version": MANIFEST_VERSION, **data}

    @classmethod
    def from_json(cls, data: Any, path: Path) -> "Manifest":
        """Check every field's type and range; a bad manifest is one line naming the field."""
        where = printable(path)

        def bad(field_name: str, why: str) -> ConvertError:
            return ConvertError(f"{where} is not a valid manifest: {field_name} {why}")

        if not isinstance(data, dict) or data.get("tool") != TOOL:
            raise ConvertError(f"{where} is not a manifest written by {TOOL} fuse")
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise ConvertError(f"{where} has manifest version {printable(data.get('manifest_version'))}; "
                               f"this {TOOL} reads version {MANIFEST_VERSION}: re-run fuse")

        def string(obj: Any, key: str, optional: bool = False) -> Any:
            value = obj.get(key) if isinstance(obj, dict) else None
            if value is None and optional:
                return None
            if not isinstance(value, str) or len(value) > 4096:
                raise bad(key, "must be a string")
            return value

        def integer(obj: Any, key: str, low: int, high: int, optional: bool = False) -> Any:
            value = obj.get(key) if isinstance(obj, dict) else None
            if value is None and optional:
                return None
            if type(value) is not int or not low <= value <= high:
                raise bad(key, f"must be an integer in [{low}, {high}]")
            return value

        source = data.get("source")
        if not isinstance(source, dict):
            raise bad("source", "must be an object")
        record = SourceRecord(string(source, "path"), string(source, "sha256"), string(source, "format"), string(source, "kind"))
        if record.kind not in ("checkpoint", "program"):
            raise bad("source.kind", "must be checkpoint or program")
        raw_inputs = data.get("inputs")
        if not isinstance(raw_inputs, list) or not 1 <= len(raw_inputs) <= 64:
            raise bad("inputs", "must be a list of 1 to 64 inputs")
        inputs = []
        for item in raw_inputs:
            shape = item.get("shape") if isinstance(item, dict) else None
            if not isinstance(shape, list) or len(shape) > 8:
                raise bad("inputs.shape", "must be a list of at most 8 integers")
            problem = input_shape_problem(shape)
            if problem:
                raise bad("inputs.shape", f"is beyond what verify and ONNX can feed: {problem}")
            inputs.append(InputRecord(string(item, "name"), tuple(shape), string(item, "dtype")))
        formats = data.get("formats")
        if (not isinstance(formats, list) or (not formats and record.format != ONNX_SOURCE)
                or any(f not in PROGRAM_SUFFIXES for f in formats)):
            raise bad("formats", f"must list Paddle formats among {sorted(PROGRAM_SUFFIXES)}")
        rows = {}
        for key, check in (("fused", _fused_row_problem), ("declined", _declined_row_problem)):
            value = data.get(key, [])
            if not isinstance(value, list) or any(not isinstance(row, dict) for row in value):
                raise bad(key, "must be a list of objects")
            for i, row in enumerate(value):
                problem = check(row)
                if problem:
                    raise bad(f"{key}[{i}]", problem)
            rows[key] = tuple(value)
        ops = data.get("ops", {})
        if not isinstance(ops, dict) or any(
            not isinstance(counts, dict) or any(not isinstance(k, str) or type(v) is not int for k, v in counts.items())
            for counts in ops.values()
        ):
            raise bad("ops", "must map graph names to op counts")
        totals = data.get("totals", {})
        if not isinstance(totals, dict) or any(
            not isinstance(k, str) or (v is not None and (type(v) is not int or v < 0)) for k, v in totals.items()
        ):
            raise bad("totals", "must map names to counts")
        onnx_input = data.get("onnx_input")
        if onnx_input is not None and (not isinstance(onnx_input, list) or len(onnx_input) > 8 or any(
                not (type(d) is int and 0 <= d <= 1 << 31) and not (isinstance(d, str) and 0 < len(d) <= 64)
                for d in onnx_input)):
            raise bad("onnx_input", "must be a list of at most 8 sizes or names")
        return cls(
            tool_version=string(data, "tool_version"),
            paddle_version=string(data, "paddle_version"),
            source=record,
            inputs=tuple(inputs),
            input_hw=_input_hw(data.get("input_size"), bad),
            formats=tuple(formats),
            arch=string(data, "arch", optional=True),
            num_classes=integer(data, "num_classes", 1, 1 << 24, optional=True),
            ignored_variables=integer(data, "ignored_variables", 0, 1 << 31),
            fused=rows["fused"],
            declined=rows["declined"],
            ops=ops,
            totals=totals,
            onnx_input=None if onnx_input is None else tuple(onnx_input),
        )


def read_small(path: Path, limit: int, what: str) -> bytes:
    """A file of OUT, whole: a regular file (fuse writes nothing else: a link, a FIFO or a device
    in its place is refused like any other, ConvertError), of at most `limit` bytes."""
    with open_regular(path) as f:
        if file_size(f) > limit:
            raise ConvertError(f"{printable(path)} is too large to be {what}")
        return f.read(limit + 1)


def _ints(value: Any, length: int | tuple[int, ...], low: int, high: int) -> bool:
    lengths = (length,) if isinstance(length, int) else length
    return isinstance(value, list) and len(value) in lengths and all(type(v) is int and low <= v <= high for v in value)


def _fused_row_problem(row: dict[str, Any]) -> str | None:
    """What is wrong with one row of the manifest's fused table (`summary.fused_rows`), as
    inspect and verify --per-layer read it; None: nothing."""
    for key in ("name", "input", "output"):
        if not isinstance(row.get(key), str):
            return f"{key} must be a string"
    if row.get("kind") not in ("sum", "chain", "conv_bn"):
        return "kind must be sum, chain or conv_bn"
    for key, length, low in (("kernel", 2, 1), ("stride", 2, 1), ("dilation", 2, 1), ("padding", (2, 4), 0)):
        if not _ints(row.get(key), length, low, MAX_SIDE):
            return f"{key} must be a list of integers from {low} to {MAX_SIDE}"
    for key in ("groups", "in", "out"):
        if type(row.get(key)) is not int or not 1 <= row[key] <= MAX_DIM:
            return f"{key} must be an integer from 1 to {MAX_DIM}"
    if "params_train" in row and not all(type(row.get(k)) is int and row[k] >= 0 for k in ("params_train", "params_deploy")):
        return "params_train and params_deploy must be counts"
    tensors = row.get("deploy_tensors")
    if not isinstance(tensors, list) or len(tensors) != 2 or not all(isinstance(t, str) for t in tensors):
        return "deploy_tensors must be the names of a weight and a bias"
    branches = row.get("branches")
    if not isinstance(branches, list) or len(branches) > 4096:
        return "branches must be a list of at most 4096 branches"
    for branch in branches:
        if not isinstance(branch, dict) or branch.get("kind") not in ("conv", "identity", "pool"):
            return "every branch must be a conv, identity or pool object"
        if branch["kind"] == "conv" and not _ints(branch.get("kernel"), 2, 1, MAX_SIDE):
            return f"a conv branch's kernel must be a list of integers from 1 to {MAX_SIDE}"
        bn = branch.get("bn")  # manifests before issue 18 name each branch's BN
        if bn is not None and not (isinstance(bn, list) and len(bn) >= 2):
            return "a branch's bn must list its scale and offset (and statistics)"
    return None


def _declined_row_problem(row: dict[str, Any]) -> str | None:
    if not all(isinstance(row.get(key), str) for key in ("op", "reason")):
        return "op and reason must be strings"
    return None


def _input_hw(value: Any, bad: Any) -> tuple[int, int]:
    """manifest.json's input_size: [H, W], or one int (manifests written before non-square sizes)."""
    if type(value) is int:
        value = [value, value]
    if (not isinstance(value, list) or len(value) != 2
            or any(type(v) is not int or not 1 <= v <= MAX_SIDE for v in value)):
        raise bad("input_size", f"must be [height, width], integers in [1, {MAX_SIDE}]")
    return value[0], value[1]


def new_manifest(**fields: Any) -> Manifest:
    return Manifest(tool_version=__version__, **fields)


class Artifacts:
    """The files of one OUT folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    @property
    def deploy_weights(self) -> Path:
        return self.root / DEPLOY_WEIGHTS

    @property
    def onnx(self) -> Path:
        return self.root / ONNX_MODEL

    @property
    def onnx_data(self) -> Path:
        return self.root / ONNX_DATA

    @property
    def inference_config(self) -> Path:
        return self.root / INFERENCE_CONFIG

    @property
    def persistables(self) -> Path:
        return self.root / PERSISTABLES

    @property
    def prefix(self) -> Path:
        return self.root / MODEL_PREFIX

    def program(self, fmt: str) -> Path:
        return self.prefix.with_suffix(PROGRAM_SUFFIXES[fmt])

    @property
    def params(self) -> Path:
        return self.prefix.with_suffix(".pdiparams")

    def paddle_models(self, manifest: Manifest) -> list[tuple[str, Path, Path]]:
        """(format, program, params) of every Paddle model the manifest says was written."""
        return [(fmt, self.program(fmt), self.params) for fmt in manifest.formats]

    def missing(self, manifest: Manifest) -> list[Path]:
        """Files fuse wrote for this manifest that are not there."""
        if manifest.source.format == ONNX_SOURCE:
            return [p for p in [self.onnx] if not p.is_file()]
        expected = [self.deploy_weights, self.params] + [self.program(fmt) for fmt in manifest.formats]
        return [p for p in expected if not p.is_file()]

    def check_complete(self, manifest: Manifest) -> None:
        missing = self.missing(manifest)
        if missing:
            raise ConvertError(f"{printable(missing[0])} is missing: {printable(self.root)} is not a complete output of '{TOOL} fuse'")

    # -- manifest.json -----------------------------------------------------------------------

    def write_manifest(self, manifest: Manifest) -> None:
        self.manifest_path.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")

    def read_manifest(self) -> Manifest:
        root, path = self.root, self.manifest_path
        if not root.is_dir():
            why = "does not exist" if not os.path.lexists(root) else "is not a folder (OUT is the folder fuse wrote)"
            raise ConvertError(f"{printable(root)} {why}")
        if not os.path.lexists(path):
            raise ConvertError(f"{printable(path)} is missing: {printable(root)} is not an output of '{TOOL} fuse'")
        try:
            data = json.loads(read_small(path, MAX_MANIFEST_BYTES, "a manifest").decode("utf-8"))
        except RecursionError:
            raise ConvertError(f"{printable(path)} is not a valid manifest: nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise ConvertError(f"{printable(path)} is not a valid manifest: {one_line(err)}") from None
        except OSError as err:
            raise ConvertError(f"cannot read {printable(path)}: {err.strerror or one_line(err)}") from None
        return Manifest.from_json(data, path)

    # -- deploy.pdparams ---------------------------------------------------------------------

    def write_deploy_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        # A plain pickle of ndarrays: paddle.load reads it, and so does our restricted
        # unpickler. Protocol 5 writes each array's buffer directly; protocol 4 keeps a bytes
        # copy of every array until the dump ends (measured: +100 MiB peak on ResNet-50).
        import numpy as np

        with open(self.deploy_weights, "wb") as f:
            pickle.dump({k: np.asarray(v, order="C") for k, v in weights.items()}, f, protocol=5)  # 0-d stays 0-d
            f.flush()
            os.fsync(f.fileno())

    def load_deploy_weights(self, expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
        """deploy.pdparams, read with the restricted unpickler; with `expected` (name -> shape,
        e.g. from the deploy graph) every tensor must be there with that shape, and no other."""
        from acnet_convert.read.pickle_reader import load_pickle

        path = self.deploy_weights
        if not path.is_file():
            raise ConvertError(f"{printable(path)} is missing: {printable(self.root)} is not a complete output of '{TOOL} fuse'")
        weights = load_pickle(path)
        if expected is not None:
            for name, shape in expected.items():
                if name not in weights:
                    raise ConvertError(f"{printable(path)} lacks tensor {printable(name)} (expected shape {list(shape)})")
                if tuple(weights[name].shape) != tuple(shape):
                    raise ConvertError(f"{printable(path)}: tensor {printable(name)} has shape {list(weights[name].shape)}, expected {list(shape)}")
            extra = sorted(set(weights) - set(expected))
            if extra:
                raise ConvertError(f"{printable(path)} holds tensor {printable(extra[0])} that the deploy model does not read")
        return weights
