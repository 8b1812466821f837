"""How a command ends: every outcome becomes at most one line on stderr (with, for some errors,
a listing wrapped under it) and the contract's exit code (0 success, 1 mismatch, 2 usage, 3 bad
input, 4 internal error, 130/143 interrupted, 141 pipe closed).
The work's own failures come from the worker already said (`supervise.ChildFailed`); this
process's own (the checks before the work, the commit after it) are said the same way
(`common.failures`)."""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Any, Callable

import click

from acnet_convert.cli.output import LINE, Output
from acnet_convert.common import signals
from acnet_convert.common.failures import failure
from acnet_convert.common.text import printable
from acnet_convert.supervise.endings import ChildFailed

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a filter whose reader went away returns


def say(line: str) -> None:
    """One line on stderr, escaped; nothing if stderr itself is gone."""
    with contextlib.suppress(OSError, ValueError):
        click.echo(printable(line, LINE), err=True)


def _say_lines(text: str) -> None:
    """A failure's line, and the wrapped listing under it (`common.failures`: each line of it
    made printable there, so a newline here is one the failure put)."""
    for line in text.split("\n"):
        say(line)


def _stdout_closed() -> int:
    """stdout's reader went away (`| head`, `| true`): stop without a word, as a filter killed by
    SIGPIPE would; stdout goes to /dev/null so the flush at exit cannot complain either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _traceback(text: str | None) -> None:
    if text:
        with contextlib.suppress(OSError, ValueError):
            click.echo(text.rstrip("\n"), err=True)


def handled(command: Callable[..., int | None]) -> Callable[..., None]:
    """Turn every way a command can end into at most one line on stderr and the contract's exit
    code: the worker's failure as it said it, bad input 3, mismatch 1, Ctrl-C 130, SIGTERM and
    SIGHUP 143, a closed stdout 141 (silently), anything else 4, "internal error" (with -v, after
    its traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        ui: Output = click.get_current_context().obj
        try:
            code = command(*args, **kwargs) or 0
            signals.raise_if_received()  # swallowed somewhere: still an interrupt
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BaseException as err:  # noqa: BLE001 - every ending gets its line and code
            ui.end_line()
            code = _ending(err, ui.verbose)
        sys.exit(code)

    return wrapper


def _ending(err: BaseException, verbose: bool) -> int:
    """The line and exit code for a command that raised `err`."""
    interrupt = signals.received() or (err if isinstance(err, KeyboardInterrupt) else None)
    if interrupt is not None:
        say(signals.describe(interrupt))
        return signals.exit_code(interrupt)
    if isinstance(err, ChildFailed):
        if verbose:
            _traceback(err.traceback)
        _say_lines(err.line)
        return err.code
    if isinstance(err, BrokenPipeError):
        return _stdout_closed()
    if isinstance(err, Exception):
        told = failure(err, verbose)
        if verbose:
            _traceback(told.traceback)
        _say_lines(told.line)
        return told.code
    raise err  # SystemExit and the like: not ours to translate
