"""What an exception means for the user: its exit code and its one line. The worker says it for
the work it ran, the command process for its own checks; both the same way.

Bad input is 3: ConvertError (a UsageError is 2), and the OSError, RecursionError, OverflowError
and MemoryError an input provokes. Anything else is a bug, 4, "internal error" (the traceback goes
with it, shown with -v). A ConvertError's listing (the ops a writer translates, ...) goes under
its line, wrapped to a terminal's width: the failure's `line` then holds several, each made
printable here, joined by newlines."""
from __future__ import annotations

import textwrap
import traceback
from dataclasses import dataclass

from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable

EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4
WIDTH = 80  # a listing under an error is wrapped to a terminal's width
LINE = 2000  # characters of one line (an error naming a few paths)


@dataclass(frozen=True)
class Failure:
    code: int
    line: str  # "error: ..." or "internal error: ..." (a ConvertError's listing: more lines under it)
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


def _lines(err: ConvertError) -> list[str]:
    """The error's line, then its listing wrapped under it; each printable (no newline of its own)."""
    lines = [printable(f"error: {err.headline}", LINE)]
    if err.listing:
        label, names = err.listing
        lines += textwrap.wrap(f"{printable(label)}: {', '.join(printable(n, 80) for n in names)}", WIDTH,
                               initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False)
    return lines


def failure(err: Exception, verbose: bool) -> Failure:
    """The exit code and line for work that raised `err` (not an interrupt)."""
    if isinstance(err, ConvertError):
        return Failure(err.exit_code, "\n".join(_lines(err)))
    trace = "".join(traceback.format_exception(err))
    if isinstance(err, (OSError, RecursionError, OverflowError, MemoryError)):
        return Failure(EXIT_BAD_INPUT, printable(f"error: {_input_error(err)}", LINE), trace)
    hint = "" if verbose else " (rerun with -v for the traceback)"
    return Failure(EXIT_INTERNAL, printable(f"internal error: {type(err).__name__}: {one_line(err)}{hint}", LINE), trace)
