"""The Paddle deploy models OUT holds, and their weights: every tensor each one loads (with
Paddle's own loader) must equal OUT/deploy.pdparams bit for bit; the first one's conv geometry
is what `--per-layer` checks the manifest against."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acnet_convert.out.artifacts import Artifacts
from acnet_convert.verify.runners import op_names

@dataclass
class DeployModel:
    name: str  # "paddle-deploy" | "paddle-legacy"
    program: Path
    params: Path
    ops: frozenset[str] = frozenset()  # its op names, filled when it is loaded


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise identical tensors (NaN == NaN here), compared through byte views, not copies."""
    x, y = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x.reshape(-1).view(np.uint8),
                                                                         y.reshape(-1).view(np.uint8))


def _loaded_parameters(program: Any) -> Iterator[tuple[str, np.ndarray]]:
    """(name, value) of every parameter a loaded program reads, one at a time."""
    for op in program.ops:
        if op.name() == "builtin.parameter":
            name = op.attrs()["parameter_name"]
            variable = program.scope.find_var(name)
            if variable is not None:
                yield name, np.array(variable.get_tensor())


def check_deploy_weights(models: list[DeployModel], artifacts: Artifacts, keep: set[str], want_geometry: bool):
    """Load every Paddle deploy model with Paddle's own loader and compare the parameters it
    loads with deploy.pdparams, bit for bit. Returns (mismatched names, the parameters named in
    `keep` as the first model loads them, the first model's conv geometry if `want_geometry`)."""
    from acnet_convert.verify.per_layer import deploy_geometry
    from acnet_convert.read.program import load_program
    from acnet_convert.read.program_reader import read_graph

    stored = artifacts.load_deploy_weights()
    mismatched: set[str] = set()
    kept: dict[str, np.ndarray] = {}
    geometry = None
    for i, model in enumerate(models):
        loaded = load_program(model.program, model.params, follow_links=False)
        model.ops = op_names(loaded.ops)
        seen = set()
        for name, value in _loaded_parameters(loaded):
            seen.add(name)
            if name not in stored or not same_bits(value, stored[name]):
                mismatched.add(name)
            if i == 0 and name in keep:
                kept[name] = value
        mismatched.update(set(stored) - seen)
        if i == 0 and want_geometry:
            geometry = deploy_geometry(read_graph(loaded))
        loaded.close()
        del loaded
    return sorted(mismatched), kept, geometry
