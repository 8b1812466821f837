"""A Paddle inference program (PIR `.json` or legacy `.pdmodel`, each with `.pdiparams`) found
and loaded with its parameters: `paddle.static.load_inference_model` does the parsing (a
`.pdmodel` under the old IR, then translated to PIR). The loaded `Program` stays alive beside
the graph read from it: the Paddle writer edits it in place.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.phase import PADDLE, phase
from acnet_convert.common.quiet import import_paddle, silenced
from acnet_convert.common.regular_file import open_regular, read_into
from acnet_convert.common.text import one_line, printable
from acnet_convert.read.program_check import Declared, check_legacy, check_parameters, check_pir

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


class _Held:
    """The program and parameters files, opened (regular files, without blocking) and checked,
    then handed to Paddle through a private folder of links to the open descriptors
    (/proc/self/fd/N): Paddle reads exactly the files that were checked, even if the names are
    swapped meanwhile for a FIFO (whose open would block forever) or another file."""

    def __init__(self, program_file: Path, params_file: Path, follow: bool) -> None:
        self.files = [open_regular(program_file, follow=follow), open_regular(params_file, follow=follow)]
        self.folder: Path | None = None
        try:
            self.sizes = [os.fstat(f.fileno()).st_size for f in self.files]
            self.prefix = program_file.with_suffix("")
            if os.path.isdir("/proc/self/fd"):  # elsewhere Paddle opens the names (checked, not held)
                self.folder = Path(tempfile.mkdtemp(prefix="acnet-program-"))
                self.prefix = self.folder / "model"
                for f, suffix in zip(self.files, (program_file.suffix, PARAMS_SUFFIX)):
                    os.symlink(f"/proc/self/fd/{f.fileno()}", self.prefix.with_suffix(suffix))
        except BaseException:
            self.close()
            raise

    def read_at(self, which: int) -> Callable[[int, int], bytes]:
        fd = self.files[which].fileno()
        return lambda pos, n: os.pread(fd, n, pos)

    def read_all(self, which: int, shown: Path) -> bytes:
        data = bytearray(self.sizes[which])
        read_into(self.files[which], memoryview(data), shown)
        return bytes(data)

    def sha256(self, names: tuple[str, str]) -> str:
        """The digest fuse has always recorded: each file's name, a NUL, its bytes."""
        digest = hashlib.sha256()
        for f, size, name in zip(self.files, self.sizes, names):
            digest.update(name.encode() + b"\0")
            pos = 0
            while pos < size:
                chunk = os.pread(f.fileno(), min(1 << 20, size - pos), pos)
                if not chunk:
                    break
                digest.update(chunk)
                pos += len(chunk)
        return digest.hexdigest()

    def close(self) -> None:
        for f in self.files:
            f.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _check_op_names(program: Any, declared: Declared, program_file: Path) -> None:
    """An op name no dialect registers loads as an op without a name, on which Paddle's save
    crashes (SIGSEGV): refuse it, by its name in the file."""
    for position, op in enumerate(program.global_block().ops):
        if not op.name():
            name = declared.ops[position] if position < len(declared.ops) else "?"
            raise ConvertError(f"{printable(program_file)}: op #{position} {printable(name.split('.', 1)[-1], 80)} "
                               "is not an op this Paddle knows")


def load_program(program_file: Path, params_file: Path, follow_links: bool = True) -> Program:
    """Load an inference program and its parameters into a private scope, after checking what
    can be checked without Paddle (`program_check`). `follow_links` False: either file may not
    be a symbolic link (OUT's files, which fuse writes as regular files)."""
    program_file, params_file = Path(program_file), Path(params_file)
    fmt = PROGRAM_SUFFIXES.get(program_file.suffix)
    if fmt is None:
        raise ConvertError(f"{printable(program_file)}: expected a .json or .pdmodel Paddle program")
    for path in (program_file, params_file):
        if not os.path.lexists(path):  # what is there but not a regular file is named by open_regular
            raise ConvertError(f"{printable(path)} is missing: an inference model needs {program_file.stem}.json or .pdmodel and {program_file.stem}{PARAMS_SUFFIX}")
    held = _Held(program_file, params_file, follow_links)
    try:
        text = held.read_all(0, program_file)
        check = check_pir if fmt == PIR else check_legacy
        declared = check(text, printable(program_file))
        del text
        check_parameters(declared, held.read_at(1), held.sizes[1], printable(params_file), printable(program_file.name))
        # hashing runs while Paddle parses (hashlib and pread release the GIL)
        digest: list[str] = []
        hashing = threading.Thread(target=lambda: digest.append(held.sha256((program_file.name, params_file.name))),
                                   daemon=True)
        hashing.start()
        with phase("loading", program_file, PADDLE), static_mode() as paddle:
            scope = paddle.static.Scope()
            try:
                with paddle.static.scope_guard(scope), silenced():
                    executor = paddle.static.Executor(paddle.CPUPlace())
                    if fmt == PIR:
                        program, _feeds, _fetches = paddle.static.load_inference_model(str(held.prefix), executor)
                    else:
                        with paddle.pir_utils.OldIrGuard():
                            legacy, _feeds, _fetches = paddle.static.load_inference_model(str(held.prefix), executor)
                        program = paddle.pir.translate_to_pir(legacy.desc)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - Paddle raises many types for a bad file
                raise ConvertError(f"{printable(program_file)} (with {printable(params_file.name)}) cannot be loaded by Paddle: {one_line(err)}") from None
        _check_op_names(program, declared, program_file)
        hashing.join()
    finally:
        held.close()
    if not digest:
        raise ConvertError(f"cannot read {printable(program_file)} or {printable(params_file.name)} to hash them")
    return Program(program, scope, program_file, params_file, fmt, digest[0])
