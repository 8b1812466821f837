"""Read a Paddle inference program (PIR `.json` or legacy `.pdmodel`, each with `.pdiparams`)
into the package's `Graph`.

Paddle does the parsing: `paddle.static.load_inference_model` loads either format into a
program and its parameters into a scope (a `.pdmodel` under the old IR, then translated to
PIR), and this module walks the PIR ops. The loaded `Program` stays alive beside the graph:
the Paddle writer edits it in place, by the op positions recorded in each node's `origin`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acnet_convert.errors import ConvertError
from acnet_convert.graph import Graph, Input, Node, TensorInfo, unique_name
from acnet_convert.quiet import import_paddle, silenced
from acnet_convert.text import one_line, printable

PIR, LEGACY = "pir", "legacy"
PROGRAM_SUFFIXES = {".json": PIR, ".pdmodel": LEGACY}
PARAMS_SUFFIX = ".pdiparams"
# ops that make a constant whose value the graph keeps (`Graph.constants`)
_CONSTANT_OPS = ("full", "full_int_array", "assign_value")
# attributes that describe Paddle's bookkeeping, not the computation
_BOOKKEEPING = frozenset(
    {"stop_gradient", "op_callstack", "struct_name", "op_role", "op_namescope", "persistable", "place",
     "is_persistable", "op_dist_attr", "chunk_id", "with_quant_attr", "use_mkldnn", "use_onednn",
     "use_cudnn", "use_quantizer", "mkldnn_data_type", "onednn_data_type", "is_distributed", "need_clip",
     "trainable", "is_parameter"}
)


@dataclass
class Program:
    """A Paddle program loaded into PIR with its parameter values (in `scope`).

    `program` must stay referenced while anything holds its ops (Paddle frees them with it)."""

    program: Any
    scope: Any
    path: Path  # the program file (or a description of where it was built)
    params: Path | None
    format: str  # "pir" | "legacy" | "built"
    sha256: str = ""
    # tensor name -> (op position, result index): filled by `read_graph`, read by the writer
    values: dict[str, tuple[int, int]] = field(default_factory=dict)
    # parameter values held as numpy arrays instead of in `scope` (a program built from a
    # checkpoint: one copy of the weights, not two); the writer puts them in the scope to save
    arrays: dict[str, np.ndarray] | None = None

    @property
    def ops(self) -> list[Any]:
        return list(self.program.global_block().ops)

    def fill_scope(self) -> None:
        """Put parameters held as numpy arrays (`arrays`) into the scope, where Paddle runs and
        saves them from; those the scope already has (loaded, or fused) stay."""
        if not self.arrays:
            return
        paddle = import_paddle()
        place = paddle.CPUPlace()
        for op in self.ops:
            if op.name() != "builtin.parameter":
                continue
            name = op.attrs()["parameter_name"]
            variable = self.scope.find_var(name)
            if (variable is None or not variable.get_tensor()._is_initialized()) and name in self.arrays:
                self.scope.var(name).get_tensor().set(np.ascontiguousarray(self.arrays[name]), place)

    def close(self) -> None:
        """Free the parameters now. Paddle keeps every Scope in a global pool, so dropping the
        last reference frees nothing (measured: +100 MB per ResNet-50 load)."""
        self.scope.erase(self.scope.local_var_names())
        self.arrays = None


# ----------------------------------------------------------------------------------------------
# finding and loading


def program_files(path: Path) -> tuple[Path, Path] | None:
    """The (program, params) pair that `path` names: a program file, a path prefix, or a folder
    holding exactly one program. None when `path` names no program at all."""
    path = Path(path)
    if path.suffix in PROGRAM_SUFFIXES and path.is_file():
        return path, path.with_suffix(PARAMS_SUFFIX)
    if path.suffix == PARAMS_SUFFIX and path.is_file():
        found = [path.with_suffix(s) for s in PROGRAM_SUFFIXES if path.with_suffix(s).is_file()]
        return (found[0], path) if found else None
    if not path.is_dir():
        candidates = [Path(f"{path}{s}") for s in PROGRAM_SUFFIXES]
        found = [c for c in candidates if c.is_file()]
        return (found[0], Path(f"{path}{PARAMS_SUFFIX}")) if found else None
    programs = sorted(
        p for p in path.iterdir()
        if p.suffix in PROGRAM_SUFFIXES and p.is_file() and p.with_suffix(PARAMS_SUFFIX).is_file()
    )
    if not programs:
        return None
    stems = sorted({p.stem for p in programs})
    if len(stems) > 1:
        names = ", ".join(printable(s) for s in stems[:8])
        raise ConvertError(f"{printable(path)} holds {len(stems)} inference models ({names}); name one as {printable(path)}/PREFIX")
    return programs[0], programs[0].with_suffix(PARAMS_SUFFIX)


def _sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _short_stack(f: Any = None, limit: int | None = None) -> traceback.StackSummary:
    return _extract_stack(f, limit=1 if limit is None else limit)


_extract_stack = traceback.extract_stack


@contextlib.contextmanager
def static_mode() -> Iterator[Any]:
    """Paddle in static-graph mode for the duration (program loading and editing need it).

    Paddle records the whole Python stack of every op it builds (`traceback.extract_stack`,
    a third of the time of building ResNet-50's train program); here one frame is enough,
    and no saved program carries it."""
    paddle = import_paddle()
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    traceback.extract_stack = _short_stack
    try:
        yield paddle
    finally:
        traceback.extract_stack = _extract_stack
        if was_dynamic:
            paddle.disable_static()


def _check_json_program(path: Path) -> None:
    # Paddle's own JSON parser aborts the process on some malformed files: look first
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise ConvertError(f"{printable(path)} is not a Paddle program: not valid JSON ({one_line(err)})") from None
    except RecursionError:
        raise ConvertError(f"{printable(path)} is not a Paddle program: JSON nested too deeply") from None
    if not isinstance(data, dict) or "program" not in data:
        raise ConvertError(f"{printable(path)} is not a Paddle inference program (no 'program' entry)")


def load_program(program_file: Path, params_file: Path) -> Program:
    """Load an inference program and its parameters into a private scope."""
    program_file, params_file = Path(program_file), Path(params_file)
    fmt = PROGRAM_SUFFIXES.get(program_file.suffix)
    if fmt is None:
        raise ConvertError(f"{printable(program_file)}: expected a .json or .pdmodel Paddle program")
    for path in (program_file, params_file):
        if not path.is_file():
            raise ConvertError(f"{printable(path)} is missing: an inference model needs {program_file.stem}.json or .pdmodel and {program_file.stem}{PARAMS_SUFFIX}")
    if fmt == PIR:
        _check_json_program(program_file)
    # hashing runs while Paddle parses (hashlib releases the GIL on large buffers)
    digest: list[str] = []
    hashing = threading.Thread(target=lambda: digest.append(_sha256(program_file, params_file)), daemon=True)
    hashing.start()
    prefix = str(program_file.with_suffix(""))
    with static_mode() as paddle:
        scope = paddle.static.Scope()
        try:
            with paddle.static.scope_guard(scope), silenced():
                executor = paddle.static.Executor(paddle.CPUPlace())
                if fmt == PIR:
                    program, _feeds, _fetches = paddle.static.load_inference_model(prefix, executor)
                else:
                    with paddle.pir_utils.OldIrGuard():
                        legacy, _feeds, _fetches = paddle.static.load_inference_model(prefix, executor)
                    program = paddle.pir.translate_to_pir(legacy.desc)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - Paddle raises many types for a bad file
            raise ConvertError(f"{printable(program_file)} (with {printable(params_file.name)}) cannot be loaded by Paddle: {one_line(err)}") from None
    hashing.join()
    if not digest:
        raise ConvertError(f"cannot read {printable(program_file)} or {printable(params_file.name)} to hash them")
    return Program(program, scope, program_file, params_file, fmt, digest[0])


# ----------------------------------------------------------------------------------------------
# PIR ops -> graph nodes


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("paddle.", "")


def _attrs(op: Any) -> dict[str, Any]:
    out = {}
    for key, value in op.attrs().items():
        if key in _BOOKKEEPING:
            continue
        if hasattr(value, "name") and not isinstance(value, (str, int, float, bool, list)):
            value = _dtype_name(value) if "DataType" in type(value).__name__ or "dtype" in type(value).__name__ else str(value)
        out[key] = value
    return out


def _short(op_name: str) -> str:
    name = op_name.split(".", 1)[-1]
    name = name[:-1] if name.endswith("_") and not name.endswith("__") else name
    return "conv2d" if name == "depthwise_conv2d" else name


class _Names:
    """Tensor names for PIR values, keyed by (defining op id, result index): Paddle hands out a
    new Value wrapper on every access, so the wrappers themselves cannot be keys."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[int, int], Input] = {}
        self.taken: set[str] = set()
        self.where: dict[str, tuple[int, int]] = {}

    def unique(self, base: str) -> str:
        return unique_name(base, self.taken)

    def set(self, op: Any, index: int, name: Input, position: int) -> None:
        self.by_key[(op.id(), index)] = name
        if isinstance(name, str):
            self.where.setdefault(name, (position, index))

    def of(self, value: Any) -> Input:
        if not value.initialized():
            return None
        producer = value.get_defining_op()
        if producer is None:
            raise ConvertError("the program reads a block argument: control flow is not supported")
        return self.by_key[(producer.id(), value.index())]


def _tensor_info(value: Any) -> TensorInfo | None:
    try:
        return TensorInfo(tuple(int(d) for d in value.shape), _dtype_name(value.dtype))
    except Exception:  # noqa: BLE001 - vector values have no shape
        return None


def read_graph(source: Program) -> Graph:
    """The graph of `source`: one node per computing op (parameters, feeds, fetches and
    vector packing become names, not nodes), conv biases merged into their conv."""
    names = _Names()
    nodes: list[Node] = []
    inputs: list[str] = []
    outputs: list[str] = []
    output_names: list[str] = []
    tensors: dict[str, TensorInfo] = {}
    weights: dict[str, np.ndarray] = {}
    constants: dict[str, np.ndarray] = {}
    node_of_vector: dict[str, int] = {}
    combines: dict[tuple[int, int], int] = {}  # vector value -> position of the combine making it
    for position, op in enumerate(source.ops):
        kind = op.name()
        if kind == "builtin.parameter":
            name = op.attrs()["parameter_name"]
            names.taken.add(name)
            names.set(op, 0, name, position)
            if source.arrays is not None and name in source.arrays:
                weights[name] = source.arrays[name]
            else:
                variable = source.scope.find_var(name)
                if variable is None:
                    raise ConvertError(f"{printable(source.params)} lacks parameter {printable(name)} that the program reads")
                # moved, not copied: the scope's tensor is emptied and `fill_scope` puts back what
                # is still needed when the program is run or saved (one copy of the weights)
                tensor = variable.get_tensor()
                weights[name] = np.array(tensor)
                tensor._clear()
                if source.arrays is None:
                    source.arrays = {}
                source.arrays[name] = weights[name]
            info = _tensor_info(op.result(0))
            if info is not None:
                tensors[name] = info
            continue
        if kind in ("pd_op.data", "pd_op.feed"):
            name = names.unique(op.attrs()["name"])
            names.set(op, 0, name, position)
            inputs.append(name)
            info = _tensor_info(op.result(0))
            if info is not None:
                tensors[name] = info
            continue
        if kind == "pd_op.fetch":
            outputs.append(names.of(op.operand_source(0)))
            output_names.append(op.attrs().get("name", f"output_{len(outputs) - 1}"))
            continue
        if kind == "builtin.combine":
            names.set(op, 0, tuple(names.of(v) for v in op.operands_source()), position)
            combines[(op.id(), 0)] = position
            continue
        if kind == "builtin.split":
            vector = op.operand_source(0)
            owner = node_of_vector[names.of(vector)]
            parts = tuple(names.unique(f"{nodes[owner].op}_{nodes[owner].origin[0]}.{i}") for i in range(op.num_results()))
            for i, part in enumerate(parts):
                names.set(op, i, part, position)
                info = _tensor_info(op.result(i))
                if info is not None:
                    tensors[part] = info
            old = nodes[owner]
            nodes[owner] = Node(old.op, old.inputs, parts, old.attrs, old.origin + (position,))
            continue
        if op.num_regions() > 0:
            raise ConvertError(f"{printable(source.path)}: op #{position} {printable(kind)} has sub-blocks; control flow is not supported")
        short = _short(kind)
        node_inputs = tuple(names.of(v) for v in op.operands_source())
        results = []
        for i in range(op.num_results()):
            result = op.result(i)
            base = f"{short}_{position}" if op.num_results() == 1 else f"{short}_{position}.{i}"
            name = names.unique(base)
            names.set(op, i, name, position)
            results.append(name)
            info = _tensor_info(result) if result.initialized() else None
            if info is not None:
                tensors[name] = info
        attrs = _attrs(op)
        if short == "batch_norm" and (attrs.get("is_test") or attrs.get("use_global_stats")):
            # in inference its mean_out / variance_out are its mean / variance: a program that
            # runs one BN layer twice reads the first call's outputs, so read the parameters
            names.by_key[(op.id(), 1)] = node_inputs[1]
            names.by_key[(op.id(), 2)] = node_inputs[2]
        # the combine ops packing this op's vector operands go (and are edited) with it
        packed = tuple(
            combines[(v.get_defining_op().id(), v.index())] for v in op.operands_source()
            if v.initialized() and v.get_defining_op() is not None and v.get_defining_op().name() == "builtin.combine"
        )
        nodes.append(Node(short, node_inputs, tuple(results), attrs, (position,) + packed))
        if op.num_results() == 1 and op.result(0).initialized() and _tensor_info(op.result(0)) is None:
            node_of_vector[results[0]] = len(nodes) - 1
        if short in _CONSTANT_OPS:
            value = _constant_value(short, attrs, tensors.get(results[0]))
            if value is not None:
                constants[results[0]] = value
    if not outputs:
        raise ConvertError(f"{printable(source.path)} has no fetch op: it is not an inference program with outputs")
    source.values = names.where
    graph = Graph(nodes, inputs, outputs, tensors, weights, constants, output_names)
    return merge_conv_bias(graph).pruned()


def _constant_value(op: str, attrs: dict[str, Any], info: TensorInfo | None) -> np.ndarray | None:
    dtype = attrs.get("dtype", info.dtype if info else "float32")
    dtype = {"bool": "bool", "float32": "float32", "float64": "float64", "int32": "int32", "int64": "int64",
             "float16": "float16"}.get(str(dtype).lower(), None)
    if dtype is None:
        return None
    if op == "full_int_array":
        return np.asarray(attrs.get("value", []), dtype=dtype)
    if op == "full":
        shape = [int(d) for d in attrs.get("shape", [1])]
        return np.full(shape, attrs.get("value", 0), dtype=dtype)
    values = attrs.get("values")
    shape = attrs.get("shape")
    if values is None or shape is None:
        return None
    try:
        return np.asarray(values, dtype=dtype).reshape([int(d) for d in shape])
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# graph clean-ups that read Paddle's idioms


def merge_conv_bias(graph: Graph) -> Graph:
    """conv2d -> add(reshape(b, [1, -1, 1, 1])) (how Paddle writes a conv with a bias) becomes
    one conv2d node reading (x, weight, b), when the conv's output feeds only that add."""
    producers = graph.producers()
    users = graph.consumers()
    drop: set[int] = set()
    replaced: dict[int, Node] = {}
    for i, node in enumerate(graph.nodes):
        if node.op != "conv2d" or len(node.inputs) != 2 or node.attrs.get("data_format", "NCHW") != "NCHW":
            continue
        out = node.output
        if out in graph.outputs or len(users.get(out, [])) != 1:
            continue
        j = users[out][0]
        add = graph.nodes[j]
        if add.op != "add" or len(add.inputs) != 2:
            continue
        other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
        if other == out or not isinstance(other, str):
            continue
        bias, extra = _bias_parameter(graph, other, producers, users)
        weight = graph.weights.get(node.inputs[1]) if isinstance(node.inputs[1], str) else None
        if bias is None or weight is None or graph.weights[bias].shape != (weight.shape[0],):
            continue
        replaced[i] = Node("conv2d", (node.inputs[0], node.inputs[1], bias), add.outputs, node.attrs,
                           node.origin + add.origin + tuple(p for k in extra for p in graph.nodes[k].origin))
        drop.add(j)
        drop.update(extra)
    if not replaced:
        return graph
    nodes = [replaced.get(i, n) for i, n in enumerate(graph.nodes) if i not in drop]
    return replace(graph, nodes=nodes)


def _bias_parameter(graph: Graph, name: str, producers: dict[str, int], users: dict[str, list[int]]) -> tuple[str | None, list[int]]:
    """The [C] parameter that `name` is, viewed as [1, C, 1, 1]: the parameter itself shaped
    [1, C, 1, 1] is not accepted (its deploy shape would change), a reshape of a [C] one is."""
    if name not in producers:
        return None, []
    k = producers[name]
    reshape = graph.nodes[k]
    if reshape.op != "reshape" or len(users.get(name, [])) != 1 or name in graph.outputs:
        return None, []
    source = reshape.inputs[0]
    if not graph.is_parameter(source):
        return None, []
    shape = graph.constant(reshape.inputs[1]) if len(reshape.inputs) > 1 else None
    channels = graph.weights[source].shape
    if shape is None or len(channels) != 1 or list(shape) not in ([1, -1, 1, 1], [1, channels[0], 1, 1]):
        return None, []
    return source, [k]
