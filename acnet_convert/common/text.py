"""Untrusted text made safe to print: file names, pickle keys, tensor and op names, manifest
values. One line, printable, bounded: a name can neither forge a second line of output nor send
terminal escape sequences."""
from __future__ import annotations


def printable(text: object, limit: int = 200) -> str:
    """`text` with control characters, newlines and non-printable code points escaped
    (`\\n`, `\\x1b`, ...), cut to `limit` characters."""
    raw = text if isinstance(text, str) else str(text)
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in raw)
    return out if len(out) <= limit else out[: limit - 3] + "..."


def one_line(err: BaseException | str, limit: int = 200) -> str:
    """The first meaningful line of an exception's message (third-party errors can run to
    dozens of lines), made printable."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = next((line for line in lines if "rror" in line), lines[0] if lines else "")
    return printable(text or type(err).__name__, limit)


def printable_lines(text: object) -> str:
    """A block of output (a table, a report) made printable line by line: every control
    character but the newline and the tab escaped, nothing cut. Names inside a block must still
    be passed through `printable` where they are put in, or a newline in one starts a line of
    its own."""
    raw = text if isinstance(text, str) else str(text)
    return "\n".join(
        "\t".join(printable(part, limit=len(part) * 10 + 10) for part in line.split("\t")) for line in raw.split("\n")
    )
