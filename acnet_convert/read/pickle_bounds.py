"""What reading a pickle may cost: a budget of bytes tied to the file's size, a reader that never
asks for more bytes than the file holds, and the nesting check run on what was built. The
restricted unpickler (`pickle_reader`) charges and reads through these; the threat model is
written down there."""
from __future__ import annotations

from typing import Any, BinaryIO

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.regular_file import read_into
from acnet_convert.read.paddle_pickle import Refused

# Measured: paddle.save of a state dict of thousands of tiny tensors (6,000 BN vectors of 4
# floats, a 0.5 MB file) peaks at 16x its size in this unpickler (protocol 4 memoizes every
# tuple and string until the end); checkpoints of real-sized tensors peak near 1x plus their
# arrays. The budget lets the former load, and still bounds any file by its size.
BUDGET_FACTOR = 24
BUDGET_SLACK = 4 << 20
MAX_DEPTH = 32


class Truncated(Exception):
    """The pickle asks for more bytes than the file has left."""


class Budget:
    def __init__(self, size: int, shown: str) -> None:
        self.size, self.shown = size, shown
        self.limit = BUDGET_FACTOR * size + BUDGET_SLACK
        self.left = self.limit

    def charge(self, nbytes: int) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise ConvertError(f"refusing to load {self.shown}: it builds more than {self.limit} bytes of objects "
                               f"and data from a {self.size}-byte file")


class BoundedReader:
    """File wrapper for the unpickler: never asks the OS for more bytes than the file holds
    (a length prefix claiming 2**60 bytes must not allocate), raises on a short read, and
    feeds every byte it hands out to the checkpoint hash."""

    def __init__(self, f: BinaryIO, name: str, size: int, hasher: Any = None) -> None:
        self._f = f
        self._name = name
        self.remaining = size
        self._hasher = hasher

    def _took(self, data: Any) -> None:
        self.remaining -= len(data)
        if self._hasher is not None:
            self._hasher.update(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.remaining
        if n > self.remaining:
            if n > 1:
                raise Truncated()
            n = self.remaining
        data = self._f.read(n)
        if len(data) != n:
            raise Truncated()
        self._took(data)
        return data

    def readinto(self, b: bytearray) -> int:
        if len(b) > self.remaining:
            raise Truncated()
        with memoryview(b) as view:
            read_into(self._f, view, self._name)
            self._took(view)
        return len(b)

    def readline(self) -> bytes:
        data = self._f.readline(self.remaining)
        self._took(data)
        return data


def check_nesting(obj: Any) -> None:
    """Refuse containers nested deeper than MAX_DEPTH or holding themselves. Iterative, and
    each container is walked once however often the memo shares it."""
    containers = (tuple, list, dict)
    if type(obj) not in containers:
        return
    heights: dict[int, int] = {}  # id -> height of a finished container (all alive: ids stable)
    on_path = {id(obj)}
    path: list[list] = [[obj, iter(obj.values() if type(obj) is dict else obj), 0]]
    while path:
        frame = path[-1]
        child = next(frame[1], path)  # `path` itself marks the end: it is never an item
        if child is path:
            path.pop()
            on_path.discard(id(frame[0]))
            heights[id(frame[0])] = frame[2] + 1
            if path:
                path[-1][2] = max(path[-1][2], frame[2] + 1)
            continue
        if type(child) not in containers:
            continue
        height = heights.get(id(child))
        if height is not None:
            if len(path) + height > MAX_DEPTH:
                raise Refused(f"containers nested more than {MAX_DEPTH} deep")
            frame[2] = max(frame[2], height)
        elif id(child) in on_path:
            raise Refused("a container that holds itself")
        elif len(path) >= MAX_DEPTH:
            raise Refused(f"containers nested more than {MAX_DEPTH} deep")
        else:
            on_path.add(id(child))
            path.append([child, iter(child.values() if type(child) is dict else child), 0])
