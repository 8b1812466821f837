"""One handler per op kind, registered in a table (the tf2onnx pattern): adding an op to a
translator is adding a function. The ONNX and the legacy-Paddle writers each keep a table."""
from __future__ import annotations

from typing import Callable, Generic, Iterable, TypeVar

H = TypeVar("H", bound=Callable[..., None])


class Registry(Generic[H]):
    def __init__(self) -> None:
        self.handlers: dict[str, H] = {}

    def handles(self, *ops: str) -> Callable[[H], H]:
        """Decorator: `fn` translates nodes whose op is one of `ops`."""

        def register(fn: H) -> H:
            for op in ops:
                self.handlers[op] = fn
            return fn

        return register

    def supported(self, also: Iterable[str] = ()) -> list[str]:
        return sorted(set(self.handlers) | set(also))
