"""What every evaluator shares: the error, a registry per module, and reading operands (sizes,
scalars, dtypes; floats always as float64)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from acnet_convert.graph.ir import Node

Evaluator = Callable[[Node, list[Any]], Any]  # (node, operand values) -> value or tuple of values


class Unevaluable(Exception):
    """An op this package cannot run (its reason names the op)."""


def registry() -> tuple[dict[str, Evaluator], Callable[..., Callable[[Evaluator], Evaluator]]]:
    """A table of evaluators and the decorator that fills it: `@evaluates("op", ...)`."""
    table: dict[str, Evaluator] = {}

    def evaluates(*ops: str) -> Callable[[Evaluator], Evaluator]:
        def register(fn: Evaluator) -> Evaluator:
            for op in ops:
                table[op] = fn
            return fn

        return register

    return table, evaluates


def as_float(x: Any) -> np.ndarray:
    x = np.asarray(x)
    return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x


def ints(value: Any, attr: Any = None) -> list[int]:
    source = value if value is not None else attr
    if source is None:
        raise Unevaluable("a size operand is missing")
    if isinstance(source, list) and source and isinstance(source[0], np.ndarray):  # a vector of scalars
        return [int(np.asarray(v).reshape(-1)[0]) for v in source]
    return [int(v) for v in np.asarray(source).reshape(-1)]


def scalar(value: Any, default: float) -> float:
    if value is None:
        return default
    return float(np.asarray(value).reshape(-1)[0])


_DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16, "int32": np.int32, "int64": np.int64,
           "bool": np.bool_, "int8": np.int8, "uint8": np.uint8, "int16": np.int16}


def dtype_of(name: Any) -> Any:
    key = str(name).lower().replace("paddle.", "").replace("datatype.", "")
    if key not in _DTYPES:
        raise Unevaluable(f"dtype {name}")
    return _DTYPES[key]


def keep_float(x: np.ndarray, dtype: Any) -> np.ndarray:
    """Floats stay float64 (the arithmetic of folding); other dtypes are cast as asked."""
    return x.astype(np.float64) if np.issubdtype(np.dtype(dtype), np.floating) else x.astype(dtype)


def pair(value: Any) -> tuple[int, int]:
    values = [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    values = values * 2 if len(values) == 1 else values
    if len(values) != 2:
        raise Unevaluable(f"{value} is not 2-D")
    return values[0], values[1]
