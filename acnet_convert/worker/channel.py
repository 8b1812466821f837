"""The worker's side of the pipe to the command process: what the library reports through its
callbacks (notes, progress, phases), the result and the failure, each one `protocol` message."""
from __future__ import annotations

import os
from typing import Any, Iterable, Iterator

from acnet_convert.common import protocol
from acnet_convert.common.phase import Phase


class Channel:
    """Messages to the parent, written whole with os.write: no buffer to lose when the work
    dies, and nothing shared with fds 1 and 2, where Paddle writes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, kind: str, **fields: Any) -> None:
        data = memoryview(protocol.encode(kind, **fields))
        while data:
            data = data[os.write(self.fd, data):]

    def note(self, text: str) -> None:
        self.send("note", text=str(text))

    def warning(self, text: str) -> None:
        self.send("warning", text=str(text))

    def track(self, items: Iterable[Any], label: str) -> Iterator[Any]:
        """The library's progress callback: a bar of len(items) steps (0: unknown), one step per
        item taken."""
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = 0
        self.send("progress", label=str(label), total=int(total))
        for item in items:
            yield item
            self.send("advance", steps=1)

    def phase(self, step: Phase | None) -> None:
        if step is not None:  # the job's own phase encloses every other: None comes only after it
            self.send("phase", doing=step.doing, file=step.file, native=step.native)
