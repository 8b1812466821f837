"""Opening a file the readers are about to parse: a regular file, opened without following a
symbolic link and without blocking, then read to an exact length.

A checkpoint folder is listed first and its files opened afterwards; in between, a file can be
swapped for a FIFO (whose open and read block forever), a device or a symbolic link. Opening
with O_NOFOLLOW | O_NONBLOCK and checking the opened descriptor with fstat closes that window:
whatever is opened is what is checked and read.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind_of(mode: int) -> str:
    """What a non-regular file is, for a message."""
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def not_a_file(path: Path | str) -> str | None:
    """Why `path` is not a regular file ("does not exist", "is a folder, not a file", "is a
    FIFO, not a file", ...), or None when it is one (links followed)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as err:
        return f"cannot be read ({err.strerror or one_line(err)})"
    return None if stat.S_ISREG(mode) else f"is {kind_of(mode)}, not a file"


def open_regular(path: Path | str, shown: Path | str | None = None, follow: bool = False) -> BinaryIO:
    """Open `path` for reading if it is a regular file, not through a symbolic link (unless
    `follow`: a link to a regular file is then opened).

    `shown` is the name used in messages (the checkpoint-relative path when `path` is a link's
    resolved target). Raises ConvertError, one line naming the file, for anything else."""
    shown = printable(path if shown is None else shown)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConvertError(f"{shown} is a symbolic link (it changed while being read?)") from None
        raise ConvertError(f"cannot read {shown}: {err.strerror or one_line(err)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ConvertError(f"{shown} is {kind_of(mode)}, expected a regular file")
        os.set_blocking(fd, True)  # a regular file never blocks; reads should just be reads
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_size(f: BinaryIO) -> int:
    """The bytes left in `f`, from its position to the end the file system reports."""
    return os.fstat(f.fileno()).st_size - f.tell()


def read_into(f: BinaryIO, view: memoryview, shown: Path | str) -> None:
    """Fill `view` from `f`. The readers size `view` from fstat before reading, so a short read
    means the file shrank while it was being read."""
    got = 0
    while got < len(view):
        try:
            n = f.readinto(view[got:])
        except OSError as err:
            raise ConvertError(f"cannot read {printable(shown)}: {err.strerror or one_line(err)}") from None
        if not n:
            raise ConvertError(f"{printable(shown)}: the file shrank while it was being read")
        got += n
