"""What an exception means for the user: its exit code and its one line. The worker says it for
the work it ran, the command process for its own checks; both the same way.

Bad input is 3: ConvertError, and the OSError, RecursionError, OverflowError and MemoryError an
input provokes. Anything else is a bug, 4, "internal error" (the traceback goes with it, shown
with -v)."""
from __future__ import annotations

import traceback
from dataclasses import dataclass

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable

EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4


@dataclass(frozen=True)
class Failure:
    code: int
    line: str  # "error: ..." or "internal error: ..."
    traceback: str | None = None  # for -v


def _input_error(err: BaseException) -> str:
    """What the standard library's errors about an input mean, in one line."""
    if isinstance(err, MemoryError):
        return "out of memory: the input is too large for this machine"
    if isinstance(err, RecursionError):
        return "the input is nested too deeply to read"
    if isinstance(err, OverflowError):
        return f"a number in the input is out of range ({one_line(err)})"
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        both = f"{printable(err.filename)} -> {printable(err.filename2)}" if err.filename2 else printable(err.filename)
        return f"{both}: {err.strerror}"
    return one_line(err)


def failure(err: Exception, verbose: bool) -> Failure:
    """The exit code and line for work that raised `err` (not an interrupt)."""
    if isinstance(err, ConvertError):
        return Failure(err.exit_code, f"error: {err}")
    trace = "".join(traceback.format_exception(err))
    if isinstance(err, (OSError, RecursionError, OverflowError, MemoryError)):
        return Failure(EXIT_BAD_INPUT, f"error: {_input_error(err)}", trace)
    hint = "" if verbose else " (rerun with -v for the traceback)"
    return Failure(EXIT_INTERNAL, f"internal error: {type(err).__name__}: {one_line(err)}{hint}", trace)
