"""Walk the fields of a serialized protobuf message in place (bytes, mmap): where a large field
sits in a file, without parsing (and copying) the message. For ONNX: a model's float16 weights,
the spans of its weights' raw bytes."""
from __future__ import annotations

from typing import Any, Iterator


def varint(data: Any, i: int) -> tuple[int, int]:
    """The varint at data[i] and the index after it; ValueError when it runs past the end or
    past 64 bits."""
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            return value, i
        shift += 7


def fields(data: Any, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, value or payload start, payload end) of a protobuf message
    lying in data[start:end]. ValueError on a wire type it cannot skip, IndexError when a field
    runs past the end."""
    i = start
    while i < end:
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(data, i)
            yield number, wire, value, i
        elif wire == 2:
            size, i = varint(data, i)
            if i + size > end:
                raise IndexError("a field runs past the end of its message")
            yield number, wire, i, i + size
            i += size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
