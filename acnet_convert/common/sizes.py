"""Image sizes: (height, width), written `HxW` (or `N` for a square N x N), as the options
(`--input-size`, `--crop`), the manifest, inference.yml and the reports carry them."""
from __future__ import annotations

import re
from typing import Sequence, Union

from acnet_convert.common.errors import UsageError

Size = tuple[int, int]  # (height, width)
SizeLike = Union[int, Sequence[int]]

MIN_SIZE, MAX_SIZE = 32, 8192  # what Paddle and memory can honour (the README's ranges)


def as_size(value: SizeLike) -> Size:
    """An int N (N x N) or a (height, width) pair, as (height, width)."""
    if isinstance(value, int):
        return value, value
    h, w = value
    return int(h), int(w)


def parse_size(text: str, option: str, low: int = MIN_SIZE, high: int = MAX_SIZE) -> Size:
    """'224' -> (224, 224), '48x160' -> (48, 160); each side in [low, high], else a usage error
    naming `option`."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX*]\s*(\d+)\s*)?", str(text))
    if not match:
        raise UsageError(f"{option} {text!r}: expected N or HxW (height x width), e.g. 224 or 48x160")
    h = int(match.group(1))
    w = int(match.group(2)) if match.group(2) else h
    if not (low <= h <= high and low <= w <= high):
        raise UsageError(f"{option} {text!r}: each side must be in {low}..{high}")
    return h, w


def size_text(size: SizeLike) -> str:
    """(48, 160) -> '48x160'."""
    h, w = as_size(size)
    return f"{h}x{w}"
