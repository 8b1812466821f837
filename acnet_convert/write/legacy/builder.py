"""What the legacy op handlers write with: `LegacyBuilder` reads a graph node's operands (weights
become parameters, constants `fill_constant`/`assign_value` ops made on first use) and collects
the legacy operators, their temporaries and parameters into a `LegacyProgram`. Pure Python."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import printable
from acnet_convert.graph.ir import Graph, Input, Node, unique_name
from acnet_convert.read.lod_tensor import VAR_TYPES

# ops that make constants: the writer folds their values into attributes, or makes them with
# fill_constant / assign_value where an op reads them at run time
CONSTANT_OPS = ("full", "full_int_array", "assign_value")


@dataclass(frozen=True)
class LegacyOp:
    type: str
    inputs: dict[str, list[str]]
    outputs: dict[str, list[str]]
    attrs: dict[str, Any]


@dataclass(frozen=True)
class Variable:
    shape: tuple[int, ...] | None
    dtype: str


@dataclass
class LegacyProgram:
    """What `write_legacy_program` builds: ops in order, the temporaries they write, and the
    parameters (graph weights) they read."""

    ops: list[LegacyOp]
    variables: dict[str, Variable]
    parameters: dict[str, np.ndarray]
    feeds: list[str]
    fetches: list[str]


# ----------------------------------------------------------------------------------------------
# the builder the handlers write with


class LegacyBuilder:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.ops: list[LegacyOp] = []
        self.variables: dict[str, Variable] = {}
        self.parameters: dict[str, np.ndarray] = {}
        self.node: Node | None = None
        self.taken = set(graph.tensors) | set(graph.weights) | {n for node in graph.nodes for n in node.outputs}
        self.names = self._output_names()
        self.made_constants: set[str] = set()
        # known values an op of the graph computes (folded shapes, bounds): that op makes them
        self.translated = {t for n in graph.nodes if n.op not in CONSTANT_OPS for t in n.outputs}

    def _output_names(self) -> dict[str, str]:
        """Graph outputs take the program's names for them (what the PIR predictor calls its
        outputs), so both models have the same output names."""
        names: dict[str, str] = {}
        for tensor, wanted in zip(self.graph.outputs, self.graph.output_names):
            if tensor in names or tensor in self.graph.inputs or tensor in self.graph.weights:
                continue
            if wanted == tensor or (wanted not in self.taken and wanted not in names.values()):
                names[tensor] = wanted
                self.taken.add(wanted)
        return names

    def fail(self, why: str) -> ConvertError:
        where = self.node.where() if self.node is not None else "the graph"
        return ConvertError(f"{printable(where)}: {why}; the legacy .pdmodel cannot be written "
                            "(use --paddle-format pir)")

    # -- reading operands --------------------------------------------------------------------

    def name(self, tensor: str) -> str:
        return self.names.get(tensor, tensor)

    def tensor(self, item: Input) -> str:
        """The legacy variable for an operand read at run time: a weight becomes a parameter,
        a constant made by a `full`-like op becomes a `fill_constant`/`assign_value` op."""
        if not isinstance(item, str):
            raise self.fail("an operand the translation needs is missing")
        if item in self.graph.weights:
            self.parameters[item] = self.graph.weights[item]
        elif item in self.graph.constants and item not in self.made_constants and item not in self.translated:
            self._constant(item, self.graph.constants[item])
        return self.name(item)

    def input(self, index: int) -> str:
        node = self.node
        assert node is not None
        if index >= len(node.inputs):
            raise self.fail(f"operand {index} is missing")
        return self.tensor(node.inputs[index])

    def optional(self, index: int) -> list[str]:
        """[variable] for a present optional operand, [] for an absent one."""
        node = self.node
        assert node is not None
        if index >= len(node.inputs) or node.inputs[index] is None:
            return []
        return [self.input(index)]

    def inputs(self, index: int) -> list[str]:
        """A vector operand (concat's, add_n's terms)."""
        node = self.node
        assert node is not None
        item = node.inputs[index]
        return [self.tensor(t) for t in item] if isinstance(item, tuple) else [self.tensor(item)]

    def constant(self, index: int, attr: str | None = None, default: Any = None) -> np.ndarray | None:
        """The value of operand `index` when it is a constant; PIR ops take some values either
        as an operand or as an attribute, so `attr` is looked at next, then `default`."""
        node = self.node
        assert node is not None
        item = node.inputs[index] if index < len(node.inputs) else None
        if item is not None:
            if isinstance(item, tuple):
                parts = [self.graph.constant(t) for t in item]
                if any(p is None for p in parts):
                    raise self.fail(f"operand {index} is computed at run time, not a constant")
                return np.concatenate([np.asarray(p).reshape(-1) for p in parts])  # type: ignore[arg-type]
            value = self.graph.constant(item)
            if value is None:
                raise self.fail(f"operand {index} is computed at run time, not a constant")
            return np.asarray(value)
        if attr is not None and attr in node.attrs:
            return np.asarray(node.attrs[attr])
        return None if default is None else np.asarray(default)

    def ints(self, index: int, attr: str | None = None, default: Sequence[int] | None = None) -> list[int]:
        value = self.constant(index, attr, default)
        if value is None:
            raise self.fail(f"operand {index} is missing")
        return [int(v) for v in np.asarray(value).reshape(-1)]

    def scalar(self, index: int, attr: str | None = None, default: float | None = None) -> float:
        value = self.constant(index, attr, default)
        if value is None or np.asarray(value).size != 1:
            raise self.fail(f"operand {index} is not a scalar constant")
        return float(np.asarray(value).reshape(-1)[0])

    # -- writing -----------------------------------------------------------------------------

    def output(self, index: int = 0) -> str:
        node = self.node
        assert node is not None
        tensor = node.outputs[index]
        info = self.graph.tensors.get(tensor)
        name = self.name(tensor)
        self.variables[name] = Variable(info.shape if info else None, info.dtype if info else "float32")
        return name

    def temp(self, base: str, dtype: str = "float32") -> str:
        name = unique_name(base, self.taken)
        self.variables[name] = Variable(None, dtype)
        return name

    def op(self, type_: str, inputs: dict[str, list[str]], outputs: dict[str, list[str]], **attrs: Any) -> None:
        self.ops.append(LegacyOp(type_, inputs, outputs, attrs))

    def _constant(self, name: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        dtype = str(value.dtype)
        if dtype not in VAR_TYPES:
            raise self.fail(f"constant {printable(name)} has dtype {printable(dtype)}")
        self.made_constants.add(name)
        self.variables[name] = Variable(tuple(value.shape), dtype)
        flat = value.reshape(-1)
        if flat.size and (flat == flat[0]).all():
            v = flat[0].item()
            self.op("fill_constant", {}, {"Out": [name]}, shape=[int(d) for d in value.shape], dtype=VAR_TYPES[dtype],
                    value=float(v), str_value=repr(v) if not isinstance(v, bool) else str(v).lower(), force_cpu=False)
        else:
            self.op("assign_value", {}, {"Out": [name]}, shape=[int(d) for d in value.shape], dtype=VAR_TYPES[dtype],
                    values=[v.item() for v in flat])
