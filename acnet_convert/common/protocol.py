"""The messages between the command process and the child that does its work (`supervise`,
`worker`): one JSON object per line, ASCII only (json's escapes carry any name, even a file
name that is not UTF-8), so a line can neither be split nor forged by what it carries.

The job, parent -> child, one line on the child's stdin:

    {"command": "fuse" | "verify" | "export-onnx" | "inspect" | "versions",
     "options": {...}, "verbose": bool}

What the child says, child -> parent, on a pipe of its own (Paddle writes to fds 1 and 2):

    {"kind": "note", "text": str}                       a line for stderr
    {"kind": "warning", "text": str}                    the same, said as a warning
    {"kind": "progress", "label": str, "total": int}    a progress bar starts
    {"kind": "advance", "steps": int}                   ... and moves
    {"kind": "phase", "doing": str, "file": str, "native": str | null}
                                                        what runs now, on which file, in
                                                        which native library (null: ours)
    {"kind": "result", "value": object}                 the command's outcome, or
    {"kind": "error", "code": int, "line": str, "traceback": str | null}
                                                        its failure: exit code and one line

"result" or "error" is the last message. Every message also proves the child alive: the
parent's time limit counts from the last one.
"""
from __future__ import annotations

import json
from typing import Any

COMMANDS = ("fuse", "fuse-onnx", "verify", "export-onnx", "inspect", "versions")
MAX_LINE = 256 << 20  # a verify report naming every skipped image of a large folder stays far below

# kind -> {field: type}; every field is required ("native" and "traceback" may be null)
_FIELDS: dict[str, dict[str, Any]] = {
    "note": {"text": str},
    "warning": {"text": str},
    "progress": {"label": str, "total": int},
    "advance": {"steps": int},
    "phase": {"doing": str, "file": str, "native": (str, type(None))},
    "result": {"value": object},
    "error": {"code": int, "line": str, "traceback": (str, type(None))},
}


class ProtocolError(Exception):
    """A line that is not a message of this protocol."""


def encode(kind: str, **fields: Any) -> bytes:
    """One message as a line of ASCII bytes, newline included."""
    message = {"kind": kind, **fields}
    check(message)
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The message on one line (without its newline); ProtocolError for anything else."""
    try:
        message = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise ProtocolError(f"not a JSON line ({type(err).__name__})") from None
    check(message)
    return message


def check(message: Any) -> None:
    """Raise ProtocolError unless `message` has a known kind and exactly its fields."""
    if not isinstance(message, dict) or message.get("kind") not in _FIELDS:
        raise ProtocolError("no known message kind")
    fields = _FIELDS[message["kind"]]
    if set(message) != {"kind", *fields}:
        raise ProtocolError(f"{message['kind']}: fields {sorted(set(message) - {'kind'})}, expected {sorted(fields)}")
    for name, kind in fields.items():
        value = message[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"{message['kind']}.{name} has the wrong type")


def job(command: str, options: dict[str, Any], verbose: bool) -> bytes:
    """The job line the parent sends."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    return json.dumps({"command": command, "options": options, "verbose": verbose}).encode("ascii") + b"\n"


def read_job(line: bytes) -> tuple[str, dict[str, Any], bool]:
    """(command, options, verbose) from the job line; ProtocolError for anything else."""
    try:
        data = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as err:
        raise ProtocolError(f"the job is not a JSON line ({type(err).__name__})") from None
    if (not isinstance(data, dict) or data.get("command") not in COMMANDS or not isinstance(data.get("options"), dict)
            or not isinstance(data.get("verbose"), bool)):
        raise ProtocolError("the job lacks its command, options or verbosity")
    return data["command"], data["options"], data["verbose"]
