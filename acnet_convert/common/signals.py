"""SIGTERM and SIGHUP handled like Ctrl-C, and the few steps no signal may cut in two.

`timeout`, job schedulers and `docker stop` end a run with SIGTERM, a closed terminal with
SIGHUP. Their default action kills the process where it stands, so nothing cleans up:
`install()` turns either into `Terminated`, a KeyboardInterrupt, raised wherever the program is,
so every cleanup that runs for Ctrl-C (the staging folder, temporary files, the supervised
child) runs for them too; the CLI exits 143 (128 + 15) for both: a run ended from outside.

Paddle turns an exception raised in Python code it calls back from C++ (it builds a Python call
stack for every op it creates) into a RuntimeError, so the exception that reaches the CLI may not
be the interrupt: the handler also records the signal, and `received()` says which arrived.

`deferred()` holds the three back (blocked in the kernel, delivered on exit) around
steps that must finish once begun: the commit of an output into place, the removal of a staging
folder, the import of Paddle (a Ctrl-C inside a C extension's initialisation surfaces as
`ImportError: initialization failed`, not as an interrupt).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

_HELD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
_installed = False
_received: int | None = None  # the first signal of the run


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived."""


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def describe(interrupt: KeyboardInterrupt) -> str:
    return "terminated" if isinstance(interrupt, Terminated) else "interrupted"


def _interrupt(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


def _on_signal(signum: int, _frame: object) -> None:
    global _received
    if _received is None:
        _received = signum
    raise _interrupt(signum)


def install() -> None:
    """Record SIGINT, SIGTERM and SIGHUP and raise KeyboardInterrupt / `Terminated` for them from
    now on (main thread only: the CLI's entry point)."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        for signum in _HELD:
            signal.signal(signum, _on_signal)
        _installed = True


def reinstall() -> None:
    """Paddle replaces the SIGTERM handler at C level when imported (and its
    `disable_signal_handler` resets it to the default, which kills): put ours back."""
    if _installed:
        for signum in _HELD:
            signal.signal(signum, _on_signal)


def exit_now(interrupt: KeyboardInterrupt) -> None:
    """End the process for `interrupt` where no handler of the CLI is up yet (its imports):
    "interrupted" / "terminated", 130 / 143."""
    import sys

    if threading.current_thread() is threading.main_thread():  # a second signal changes nothing now
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        sys.stderr.write(describe(interrupt) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    raise SystemExit(exit_code(interrupt))


def received() -> KeyboardInterrupt | None:
    """The interrupt for the first signal that arrived in this run, if any."""
    return None if _received is None else _interrupt(_received)


def raise_if_received() -> None:
    """Raise the interrupt of a signal whose exception a library swallowed."""
    interrupt = received()
    if interrupt is not None:
        raise interrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run the block with SIGINT, SIGTERM and SIGHUP held back; one that arrives meanwhile is
    delivered (and raises) when the block ends."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
