"""One command's work, run in a supervised child (`python -m acnet_convert.worker`).

The child gets a session of its own, so the terminal's Ctrl-C reaches this process only; its
TMPDIR is a folder this process made and removes; it writes only where this process told it
(a staging folder this process commits or removes). So this process can end the child at any
moment with SIGKILL to its process group and leave nothing behind: on SIGINT/SIGTERM/SIGHUP
(raised here as KeyboardInterrupt by `common.signals`), when it goes past its memory limit,
when it says nothing for longer than its time limit. A child that dies (a signal, an exit without
a word) becomes one line naming what it was doing, and on which file (`endings`).

The child reports on a pipe of its own (`common.protocol`); this process relays notes and
progress to the user as they come (`Listener`).
"""
from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Protocol

import acnet_convert
from acnet_convert.common import protocol, signals
from acnet_convert.common.failures import EXIT_BAD_INPUT
from acnet_convert.common.text import printable
from acnet_convert.out.staging import locked_folder, remove_stale
from acnet_convert.supervise.endings import ChildFailed, Watched, ending
from acnet_convert.supervise.limits import POLL, resident_bytes

WORKER = "acnet_convert.worker"
# The module run as the worker; the tests name one that misbehaves on purpose (tests/fault_worker.py)
WORKER_ENV = "ACNET_CONVERT_WORKER"
_EXIT_WAIT = 10.0  # seconds a child that closed its pipe gets to exit before it is killed
_TMP_PREFIX = "acnet-convert-"


class Listener(Protocol):
    """Where the child's notes and progress go (the CLI's terminal)."""

    def note(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def progress(self, label: str, total: int) -> None: ...

    def advance(self, steps: int) -> None: ...

    def phase(self, doing: str, file: str, native: str | None) -> None: ...

    def resources(self, peak: int, limit: int) -> None: ...

    def finish(self) -> None: ...


def run(command: str, options: dict[str, Any], listener: Listener, *, memory: int, time_limit: float,
        verbose: bool = False) -> Any:
    """Run `command` with `options` in a supervised child and return its result value. Raises
    ChildFailed (exit code and one line) when the work failed, crashed or went past a limit, and
    KeyboardInterrupt / signals.Terminated when the run was interrupted (the child is gone by
    then, and its TMPDIR)."""
    tmp, lock = _private_tmp()
    child = None
    try:
        with signals.deferred():  # no interrupt between the fork and `child` knowing the process
            child = _Child(command, options, str(tmp), verbose)
        watched = child.watch(listener, memory, time_limit)
    finally:
        with signals.deferred():
            if child is not None:
                child.end()
            shutil.rmtree(tmp, ignore_errors=True)
            os.close(lock)
        listener.finish()
    listener.resources(watched.peak, memory)
    return ending(watched)


def _private_tmp() -> tuple[Path, int]:
    """The child's TMPDIR: a fresh folder in the user's, locked while this run lives. One that a
    run killed with SIGKILL left behind (its lock free) is removed by the next run."""
    parent = Path(tempfile.gettempdir())
    remove_stale(parent, _TMP_PREFIX)
    try:
        return locked_folder(parent, _TMP_PREFIX, mode=0o700)
    except OSError as err:
        raise ChildFailed(EXIT_BAD_INPUT, f"error: cannot create a temporary folder in {printable(parent)}: "
                                          f"{err.strerror or err}") from None


def _environment(tmp: str) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=tmp)
    # the child runs this very package, wherever it was imported from (a source tree, a test's copy)
    root = str(Path(acnet_convert.__file__).resolve().parents[1])
    if Path(root).name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class _Child:
    def __init__(self, command: str, options: dict[str, Any], tmp: str, verbose: bool) -> None:
        read_fd, write_fd = os.pipe()
        try:
            # with -v the child's own output (Paddle's logs, ONNX Runtime's) goes to stderr, never
            # to stdout, where a report may be going
            output = 2 if verbose else subprocess.DEVNULL
            module = os.environ.get(WORKER_ENV) or WORKER
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, str(write_fd), str(os.getpid())], stdin=subprocess.PIPE,
                stdout=output, stderr=output, pass_fds=(write_fd,), start_new_session=True, env=_environment(tmp),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self.fd = read_fd
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(protocol.job(command, options, verbose))
            self.proc.stdin.close()
        except BrokenPipeError:  # it died at once: how it died tells
            pass

    def watch(self, listener: Listener, memory: int, time_limit: float) -> Watched:
        """Relay the child's messages until it closes its pipe (or is stopped here); how it ended."""
        watched = Watched(memory=memory, time_limit=time_limit)
        buffer = bytearray()
        last_word = last_look = time.monotonic()
        while True:
            ready, _, _ = select.select([self.fd], [], [], POLL)
            now = time.monotonic()
            if ready:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    break
                buffer += chunk
                lines = buffer.split(b"\n")
                buffer = bytearray(lines.pop())
                if len(buffer) > protocol.MAX_LINE:
                    watched.stopped = "protocol"
                    break
                for line in lines:
                    last_word = now
                    if not self._take(line, watched, listener):
                        break
                if watched.stopped:
                    break
            if now - last_look >= POLL:
                last_look = now
                used = resident_bytes(self.proc.pid)
                if used is not None:
                    watched.peak = max(watched.peak, used)
                    if used > memory:
                        watched.stopped, watched.used = "memory", used
                        break
            if now - last_word > time_limit:
                watched.stopped = "time"
                break
        if watched.stopped:
            self._kill()
        watched.status = self._exit_status()
        return watched

    @staticmethod
    def _take(line: bytes, watched: Watched, listener: Listener) -> bool:
        try:
            message = protocol.decode(bytes(line))
        except protocol.ProtocolError:
            watched.stopped = "protocol"
            return False
        kind = message["kind"]
        if kind == "note":
            listener.note(message["text"])
        elif kind == "warning":
            listener.warning(message["text"])
        elif kind == "progress":
            listener.progress(message["label"], message["total"])
        elif kind == "advance":
            listener.advance(message["steps"])
        elif kind == "phase":
            watched.phase = message
            listener.phase(message["doing"], message["file"], message["native"])
        elif kind == "result":
            watched.result, watched.has_result = message["value"], True
        else:
            watched.error = message
        return True

    def _kill(self) -> None:
        """SIGKILL to the child's process group. Only while its leader is unreaped: a zombie
        keeps the group's id, so no other process can hold it yet."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def _exit_status(self) -> int:
        """The child's exit status as Popen gives it (-N: killed by signal N), reaped; a child
        that does not exit within _EXIT_WAIT of closing its pipe is killed."""
        deadline = time.monotonic() + _EXIT_WAIT
        while os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            if time.monotonic() > deadline:
                self._kill()
                deadline = float("inf")
            time.sleep(0.005)
        self._kill()  # anything it left in its group goes with it
        return self.proc.wait()

    def end(self) -> None:
        """However the watch ended (an interrupt included): the child's group killed, the child
        reaped, the pipe closed."""
        if self.proc.returncode is None:
            self._kill()
            with contextlib.suppress(ChildProcessError):
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.close(self.fd)
