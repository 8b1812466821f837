"""The limits the worker runs under: resident memory relative to the inputs, and the longest it
may go without a word (a phase, a progress step, a note).

Why resident memory watched from outside, not RLIMIT_AS: Paddle, onnx and ONNX Runtime reserve
address space they never touch, and how much grows with the machine, not the input (measured,
Paddle 3.3.1 on 2 cores: 723 MB of address space after `import paddle` at 294 MB resident; each
paddle.inference predictor +440 MB of address space, +25 MB resident; glibc reserves 64 MB per
malloc arena, up to 8 per core, and every thread stack 8 MB). An address-space limit that lets a
ResNet-152 through on a 64-core machine would stop nothing on a small one. So the command process
reads the child's resident set (/proc/PID/statm) every POLL seconds and stops it beyond the limit.

Why the time limit counts from the last message, not from the start: `verify --images` over a
whole validation set legitimately runs for hours, one batch after the other, each a message; a
native call that never returns (an ONNX Loop of 2**62 iterations, a deadlock) says nothing.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

POLL = 0.05  # seconds between two looks at the child's memory
MIB = 1 << 20
# The longest step measured: fusing a 100,000-op program reads it in one step of 85-110 s on a
# 2-core machine; a 16-Mpixel batch of ResNet-152 through one runtime ~80 s. 15 minutes is 8x
# that, and still ends a hung run the same hour.
DEFAULT_TIME_LIMIT = 900
# Resident memory: Paddle + onnx + ONNX Runtime imported and a predictor of each kind made is
# ~450 MB before any model; a run holds a few copies of the weights (the source's, the fused
# ones, one per runtime in verify) and the batches in flight with their activations.
BASE_BYTES = 1536 * MIB
PER_INPUT_BYTE = 8
PER_BATCH_PIXEL = 1024  # bytes per pixel of a batch: the float32 images and a CNN's widest activations


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes of resident memory; None: from the inputs (`memory_for`)
    time: float = DEFAULT_TIME_LIMIT  # seconds without a message

    def memory_for(self, input_bytes: int, batch_pixels: int = 0) -> int:
        if self.memory is not None:
            return self.memory
        return BASE_BYTES + PER_INPUT_BYTE * input_bytes + PER_BATCH_PIXEL * batch_pixels


def input_bytes(paths: Iterable[Path | str | None]) -> int:
    """What the inputs hold on disk: a file's size, a folder's regular files (not followed into
    links), a path prefix's files (PREFIX.json + PREFIX.pdiparams)."""
    total = 0
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            total += _folder_bytes(path)
        elif path.is_file():
            total += path.stat().st_size
        elif path.parent.is_dir():
            total += sum(_size(p) for p in path.parent.glob(f"{_glob_escape(path.name)}.*"))
    return total


def _folder_bytes(folder: Path, entries: int = 100_000) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            total += _size(Path(root) / name)
            entries -= 1
            if entries <= 0:  # a checkpoint folder has hundreds of files; enough is enough
                return total
    return total


def _size(path: Path) -> int:
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int) -> int | None:
    """The resident set of process `pid`, None when it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None
