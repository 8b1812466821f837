"""A table of functions by op name and the decorator that fills it: what every set of op
handlers (evaluators, ONNX readers, ONNX node makers) registers itself with."""
from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable[..., object])


def registry() -> tuple[dict[str, F], Callable[..., Callable[[F], F]]]:
    """`TABLE, handles = registry()`, then `@handles("op", ...)` on each handler."""
    table: dict[str, F] = {}

    def handles(*ops: str) -> Callable[[F], F]:
        def register(fn: F) -> F:
            for op in ops:
                table[op] = fn
            return fn

        return register

    return table, handles
