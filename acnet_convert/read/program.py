"""A Paddle inference program (PIR `.json` or legacy `.pdmodel`, each with `.pdiparams`) found
and loaded with its parameters: `paddle.static.load_inference_model` does the parsing (a
`.pdmodel` under the old IR, then translated to PIR). The loaded `Program` stays alive beside
the graph read from it: the Paddle writer edits it in place.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.quiet import import_paddle, silenced
from acnet_convert.common.text import one_line, printable

PIR, LEGACY = "pir", "legacy"
PROGRAM_SUFFIXES = {".json": PIR, ".pdmodel": LEGACY}
PARAMS_SUFFIX = ".pdiparams"


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
        """Every op: the main block's in order, then the ops of sub-blocks (`pd_op.if`'s), block
        by block, breadth-first in the order the blocks are met. A position in this list is how
        the graph (`ir.Node.origin`) and the writer name an op."""
        ops: list[Any] = []
        blocks = deque([self.program.global_block()])
        while blocks:
            for op in blocks.popleft().ops:
                ops.append(op)
                if op.num_regions():
                    blocks.extend(op.blocks())
        return ops

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
                self.scope.var(name).get_tensor().set(np.asarray(self.arrays[name], order="C"), place)

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
