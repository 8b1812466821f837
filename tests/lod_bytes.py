"""A hand writer of Paddle's LoDTensor file layout, to build valid and broken files byte by
byte (shared by the reader tests and the fuzz target's seed corpus)."""
from __future__ import annotations

import struct

import numpy as np


CODES = {np.dtype("?"): 0, np.dtype("<i2"): 1, np.dtype("<i4"): 2, np.dtype("<i8"): 3,
         np.dtype("<f2"): 4, np.dtype("<f4"): 5, np.dtype("<f8"): 6, np.dtype("u1"): 20,
         np.dtype("i1"): 21}


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def desc(code: int, dims, packed: bool = False) -> bytes:
    d = b"\x08" + _varint(code)
    if packed and dims:
        body = b"".join(_varint(x) for x in dims)
        d += b"\x12" + _varint(len(body)) + body
    else:
        d += b"".join(b"\x10" + _varint(x) for x in dims)
    return d


def lod_file(arr=None, *, code=None, dims=None, data=None, lod=(), packed=False, version=0,
             tversion=0, desc_bytes=None, desc_size=None) -> bytes:
    if arr is not None:
        arr = np.asarray(arr)
        code = CODES[arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype]
        dims = list(arr.shape)
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    out = struct.pack("<IQ", version, len(lod))
    for level in lod:
        out += struct.pack("<Q", 8 * len(level)) + struct.pack(f"<{len(level)}Q", *level)
    d = desc(code, dims, packed) if desc_bytes is None else desc_bytes
    out += struct.pack("<Ii", tversion, len(d) if desc_size is None else desc_size) + d
    return out + (data or b"")
