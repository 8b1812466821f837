"""How a supervised child ended, as the command's outcome: its result, or one line and an exit
code. A crash, a limit or a silent exit is bad input (3): the file the child was working on made
native code fail; the line names what the child was doing and on which file:

    error: Paddle crashed (SIGSEGV) while saving the deploy model of model/inference.json
    error: ONNX Runtime went 900 s without progress while running out/model.onnx (--time-limit ...)
"""
from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any

from acnet_convert.common import signals
from acnet_convert.common.failures import EXIT_BAD_INPUT, EXIT_INTERNAL
from acnet_convert.common.text import printable
from acnet_convert.supervise.limits import MIB

US = "acnet-convert"


class ChildFailed(Exception):
    """The work failed: the exit code, the one line to print, and for -v the child's traceback."""

    def __init__(self, code: int, line: str, traceback: str | None = None) -> None:
        super().__init__(line)
        self.code, self.line, self.traceback = code, line, traceback


@dataclass
class Watched:
    """What the supervisor saw of one child."""

    memory: int
    time_limit: float
    phase: dict[str, Any] | None = None  # the last "phase" message
    result: Any = None
    has_result: bool = False
    error: dict[str, Any] | None = None  # the "error" message
    stopped: str | None = None  # why the supervisor killed it: "memory" | "time" | "protocol"
    used: int = 0  # resident bytes when it was stopped for memory
    peak: int = 0  # the most resident bytes seen
    status: int = 0  # as Popen reports it: -N for signal N


def _where(watched: Watched) -> tuple[str, str]:
    """(who was running: the native library or us, "while DOING FILE")."""
    phase = watched.phase
    if phase is None:
        return US, "while starting"
    return printable(phase["native"] or US), printable(f"while {phase['doing']} {phase['file']}", 1000)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def ending(watched: Watched) -> Any:
    """The child's result value; or raise ChildFailed, KeyboardInterrupt (SIGINT) or
    signals.Terminated (SIGTERM, SIGHUP) for the way it ended."""
    who, where = _where(watched)
    if watched.stopped == "memory":
        raise ChildFailed(EXIT_BAD_INPUT, f"error: {who} used {watched.used / MIB:,.0f} MiB, more than the "
                                          f"{watched.memory / MIB:,.0f} MiB these inputs may take, {where} "
                                          "(--memory-limit MIB raises the limit)")
    if watched.stopped == "time":
        raise ChildFailed(EXIT_BAD_INPUT, f"error: {who} went {watched.time_limit:g} s without progress {where} "
                                          "(--time-limit SECONDS raises the limit)")
    if watched.stopped == "protocol":
        raise ChildFailed(EXIT_INTERNAL, f"internal error: the worker sent what is not a message {where}")
    if watched.error is not None:
        raise ChildFailed(watched.error["code"], watched.error["line"], watched.error["traceback"])
    if watched.has_result and watched.status == 0:
        return watched.result
    if watched.status < 0:
        number = -watched.status
        if number == signal.SIGINT:
            raise KeyboardInterrupt()
        if number in (signal.SIGTERM, signal.SIGHUP):  # sent to it directly: the run was ended from outside
            raise signals.Terminated()
        raise ChildFailed(EXIT_BAD_INPUT, f"error: {who} crashed ({_signal_name(number)}) {where}")
    if watched.status == 0:
        raise ChildFailed(EXIT_INTERNAL, f"internal error: the worker ended without a result {where}")
    raise ChildFailed(EXIT_BAD_INPUT, f"error: {who} exited with status {watched.status} {where}")
