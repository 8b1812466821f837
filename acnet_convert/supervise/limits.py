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
whole validation set legitimately runs for hours, one chunk of images after the other, each a
message; a native call that never returns (an ONNX Loop of 2**62 iterations, a deadlock) says
nothing.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

POLL = 0.05  # seconds between two looks at the child's memory
MIB = 1 << 20
# The longest silent step measured: fusing a 100,000-op program reads it in one step of 85-110 s
# on a 2-core machine (issue 18). A runtime is fed 2 images at 224 at a time, each chunk a step
# (under 2 s for ResNet-50 on 2 busy cores). 15 minutes is 8x the longest, and still ends a hung
# run within the hour; --time-limit raises it for slower machines or larger programs.
DEFAULT_TIME_LIMIT = 900
# Resident memory (measured with -v, Paddle 3.3.1, 2 cores): Paddle, onnx and ONNX Runtime
# imported and a predictor of each made hold ~450 MB before any model. A run then holds a few
# copies of the weights (the source's, the fused ones, ONNX's, one per runtime in verify), and a
# program's ops as Python objects: ~50 bytes per byte of its JSON (a 20,000-op program of 9.3 MB
# peaked at 769 MB, the 100,000-op one of issue 18 at 2.4 GB). Measured on ResNet-50 ACNet
# (133 MB export): fuse 502 MiB, fuse --onnx 1,082 MiB, export-onnx 847 MiB, verify 677 MiB,
# verify --batch-size 300 1,019 MiB (23 bytes per pixel of a batch: runtimes are fed 2 images at
# a time). The limit is 2.4x to 6x these.
BASE_BYTES = 1536 * MIB
PER_DATA_BYTE = 8  # weights, images, ONNX models
PER_PROGRAM_BYTE = 96  # .json / .pdmodel programs
PROGRAM_SUFFIXES = (".json", ".pdmodel")
PER_BATCH_PIXEL = 128  # the float32 images of a batch and their copies


@dataclass(frozen=True)
class Limits:
    memory: int | None = None  # bytes of resident memory; None: from the inputs (`memory_for`)
    time: float = DEFAULT_TIME_LIMIT  # seconds without a message

    def memory_for(self, inputs: Iterable[Path | str | None], batch_pixels: int = 0) -> int:
        """The memory limit for work on `inputs` (files, folders, path prefixes) that feeds
        batches of `batch_pixels` pixels."""
        if self.memory is not None:
            return self.memory
        return BASE_BYTES + input_weight(inputs) + PER_BATCH_PIXEL * batch_pixels


def input_weight(paths: Iterable[Path | str | None]) -> int:
    """The memory the inputs' bytes stand for: a program's bytes PER_PROGRAM_BYTE, any other
    file's PER_DATA_BYTE; a folder's regular files (not followed into links), a path prefix's
    files (PREFIX.json + PREFIX.pdiparams), an ONNX model's and the files named after it
    (MODEL.onnx.data)."""
    files: list[Path] = []
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            files += _folder_files(path)
        elif path.is_file():
            files.append(path)
            if path.suffix.lower() == ".onnx":  # its external data: torch writes MODEL.onnx.data beside it
                files += sorted(path.parent.glob(f"{_glob_escape(path.name)}?*"))[:64]
        elif path.parent.is_dir():
            files += path.parent.glob(f"{_glob_escape(path.name)}.*")
    return sum(_size(f) * (PER_PROGRAM_BYTE if f.suffix in PROGRAM_SUFFIXES else PER_DATA_BYTE) for f in files)


def _folder_files(folder: Path, entries: int = 100_000) -> list[Path]:
    found: list[Path] = []
    for root, _dirs, files in os.walk(folder):
        found += (Path(root) / name for name in files)
        if len(found) >= entries:  # a checkpoint folder has hundreds of files; enough is enough
            break
    return found


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
