"""How a command ends: every outcome becomes at most one line on stderr and the contract's exit
code (0 success, 1 mismatch, 3 bad input, 4 internal error, 130/143 interrupted, 141 pipe closed)."""
from __future__ import annotations

import contextlib
import functools
import textwrap
import gc
import os
import sys
import traceback
from typing import Any, Callable

import click

from acnet_convert.cli.output import LINE, Output
from acnet_convert.common import signals
from acnet_convert.common.errors import ConvertError
from acnet_convert.common.text import one_line, printable

EXIT_BAD_INPUT = 3
EXIT_INTERNAL = 4
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a filter whose reader went away returns
WIDTH = 80  # a listing under an error is wrapped to a terminal's width


def say(line: str) -> None:
    """One line on stderr, escaped; nothing if stderr itself is gone."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(printable(line, LINE), err=True)


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


def _stdout_closed() -> int:
    """stdout's reader went away (`| head`, `| true`): stop without a word, as a filter killed by
    SIGPIPE would; stdout goes to /dev/null so the flush at exit cannot complain either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def handled(command: Callable[..., int | None]) -> Callable[..., None]:
    """Turn every way a command can end into at most one line on stderr and the contract's exit
    code: bad input 3 (ConvertError, and the OSError, RecursionError, OverflowError and
    MemoryError an input provokes), mismatch 1, Ctrl-C 130, SIGTERM 143, a closed stdout 141
    (silently), anything else 4, "internal error" (with -v, after its traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        ui: Output = click.get_current_context().obj
        try:
            code = command(*args, **kwargs) or 0
            signals.raise_if_received()  # a library swallowed the interrupt: still one
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BaseException as err:  # noqa: BLE001 - every ending gets its line and code
            ui.end_line()
            code = _ending(err, ui.verbose)
        # Paddle leaves millions of objects behind; collecting them at interpreter exit took
        # 0.7-2 s of every run (measured). Nothing needs them collected: freeze and go.
        gc.freeze()
        sys.exit(code)

    return wrapper


def _ending(err: BaseException, verbose: bool) -> int:
    """The line and exit code for a command that raised `err`."""
    # Paddle turns an interrupt raised inside its C++ callbacks into a RuntimeError: the signal
    # that arrived decides, whatever the exception became
    interrupt = signals.received() or (err if isinstance(err, KeyboardInterrupt) else None)
    if interrupt is not None:
        say(signals.describe(interrupt))
        return signals.exit_code(interrupt)
    if isinstance(err, ConvertError):
        say(f"error: {err.headline}")
        if err.listing:
            label, names = err.listing
            for line in textwrap.wrap(f"{label}: {', '.join(printable(n, 80) for n in names)}", WIDTH,
                                      initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False):
                say(line)
        return err.exit_code
    if isinstance(err, BrokenPipeError):
        return _stdout_closed()
    if isinstance(err, (OSError, RecursionError, OverflowError, MemoryError)):
        if verbose:
            traceback.print_exception(err)
        say(f"error: {_input_error(err)}")
        return EXIT_BAD_INPUT
    if isinstance(err, Exception):
        if verbose:
            traceback.print_exception(err)
        hint = "" if verbose else " (rerun with -v for the traceback)"
        say(f"internal error: {type(err).__name__}: {one_line(err)}{hint}")
        return EXIT_INTERNAL
    raise err  # SystemExit and the like: not ours to translate
