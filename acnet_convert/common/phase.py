"""What the work is doing now, and on which file: the library announces each step that runs
native code (Paddle, onnx, ONNX Runtime) on an input, so that whoever watches the process (the
supervisor, through the worker) can name the step when that code crashes, hangs or runs out of
memory: "Paddle crashed (SIGSEGV) while saving the deploy model of model/inference.json".

Used in process, announcing costs a list append; nobody listens unless `listen` was called.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

PADDLE, ONNX, ORT = "Paddle", "onnx", "ONNX Runtime"


@dataclass(frozen=True)
class Phase:
    doing: str  # "loading", "saving the deploy model of": read before the file's name
    file: str
    native: str | None = None  # the native library that runs, None for our own Python

    def describe(self) -> str:
        return f"{self.doing} {self.file}"


_stack: list[Phase] = []
_listeners: list[Callable[[Phase | None], None]] = []


def listen(listener: Callable[[Phase | None], None]) -> None:
    """Call `listener` with every phase entered, and with the enclosing one (None: none) when a
    phase ends."""
    _listeners.append(listener)


def current() -> Phase | None:
    return _stack[-1] if _stack else None


@contextlib.contextmanager
def phase(doing: str, file: Path | str, native: str | None = None) -> Iterator[None]:
    """Announce the step for the block's duration."""
    step = Phase(doing, str(file), native)
    _stack.append(step)
    _tell(step)
    try:
        yield
    finally:
        _stack.pop()
        _tell(current())


def _tell(step: Phase | None) -> None:
    for listener in _listeners:
        listener(step)
