"""The supervised child: `python -m acnet_convert.worker FD PARENT_PID` reads one job on stdin
(`protocol.job`), runs it (`jobs`), and tells the command process everything on the pipe FD:
notes, progress, the phase it is in, and at the end the result or the failure. Then it leaves
at once (os._exit): Paddle's objects would take seconds to collect, and nothing here needs it.

It holds nothing the command process must clean up: the parent owns the staging folder it
writes into, and its TMPDIR. So it may die any way at all, and it dies with its parent.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys

from acnet_convert.common import phase, protocol, quiet
from acnet_convert.common.failures import EXIT_INTERNAL, failure
from acnet_convert.worker.channel import Channel

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when the command process dies, however it dies (a
    SIGKILL leaves it no time to stop the child itself)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's pipe closing is all there is
        pass
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(EXIT_INTERNAL)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    # The terminal's signals reach the command process only (this one has a session of its
    # own); one sent here directly ends it at once, and the parent reports the signal.
    ended = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    for signum in ended:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, ended)  # the parent spawned it with them held back
    channel = Channel(fd)
    try:
        command, options, verbose = protocol.read_job(sys.stdin.buffer.readline(protocol.MAX_LINE))
    except protocol.ProtocolError:
        os._exit(EXIT_INTERNAL)
    quiet.configure(verbose)
    if not verbose:  # a crash on a hostile file would leave a core of Paddle's size in the current folder
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    phase.listen(channel.phase)
    from acnet_convert.worker.jobs import JOBS

    try:
        value = JOBS[command](options, channel)
    except Exception as err:  # noqa: BLE001 - every failure is told, as its exit code and line
        told = failure(err, verbose)
        channel.send("error", code=told.code, line=told.line, traceback=told.traceback if verbose else None)
        os._exit(told.code)
    channel.send("result", value=value)
    os._exit(0)
