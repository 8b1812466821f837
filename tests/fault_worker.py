"""A worker that misbehaves on purpose, for the supervisor's tests: the CLI runs it instead of
acnet_convert.worker when ACNET_CONVERT_WORKER=tests.fault_worker (`supervise.child.WORKER_ENV`).

ACNET_TEST_FAULT="ACTION@PHASE" acts when the worker enters a phase whose description ("saving
the deploy model of model/inference.json", "importing Paddle") starts with PHASE, after the phase
was told to the parent, as a real crash inside that phase would be:

    segv     SIGSEGV to itself (what Paddle does on a hostile program)
    abort    SIGABRT (C++'s terminate)
    hang     sleep forever, saying nothing
    memory   allocate and touch memory until stopped
    raise    RuntimeError("a bug")           (an internal error)
    oserror  OSError(EACCES) on /some/file   (bad input from the standard library)
    exit     os._exit(7) without a word
    garbage  write a line that is not a message
    sigterm-parent, sigint-parent, sighup-parent
             send that signal to the command process (a user's Ctrl-C, `kill`, a closed
             terminal, landing exactly in that phase), then go on working

ACTION "never" (no @): the worker must not run at all; it fails at once, saying so.
"""
from __future__ import annotations

import errno
import os
import signal
import time

from acnet_convert.worker import channel
from acnet_convert.worker.main import main

FAULT = os.environ.get("ACNET_TEST_FAULT", "")
ACTION, _, PHASE = FAULT.partition("@")


def _act(self: channel.Channel) -> None:
    if ACTION == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif ACTION == "abort":
        os.abort()
    elif ACTION == "hang":
        while True:
            time.sleep(60)
    elif ACTION == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(16 << 20))  # zero-filled by the kernel on touch: bytearray touches it
    elif ACTION == "raise":
        raise RuntimeError("a bug")
    elif ACTION == "oserror":
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), "/some/file")
    elif ACTION == "exit":
        os._exit(7)
    elif ACTION.endswith("-parent"):
        os.kill(os.getppid(), getattr(signal, ACTION.split("-")[0].upper()))
        time.sleep(30)  # the parent ends this process long before
    elif ACTION == "garbage":
        os.write(self.fd, b"this is not a message\n")
        time.sleep(60)


_told = channel.Channel.phase


def _phase_then_fault(self: channel.Channel, step) -> None:  # noqa: ANN001
    _told(self, step)
    if step is not None and ACTION and PHASE and step.describe().startswith(PHASE):
        _act(self)


channel.Channel.phase = _phase_then_fault  # type: ignore[method-assign]

if ACTION == "never":
    from acnet_convert.worker import jobs

    def _never(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the work ran, though the command should have refused before it")

    jobs.JOBS = {name: _never for name in jobs.JOBS}

main()
