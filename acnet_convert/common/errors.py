"""The errors the CLI turns into exit codes. Each carries a one-line message for the user."""
from __future__ import annotations

from typing import Sequence


class ConvertError(Exception):
    """Bad input: a missing file, a corrupt or hostile checkpoint, a tensor that does not fit.

    The message is one line and names the file and/or tensor; the CLI prints it and exits 3.
    `listing` (a label and names, e.g. the ops a writer translates) belongs to the message, as
    "; LABEL: a, b, c" in `str()`, but the CLI prints it under the line, wrapped to the terminal
    (`headline` is the message without it)."""

    exit_code = 3

    def __init__(self, message: str, listing: tuple[str, Sequence[str]] | None = None) -> None:
        self.headline = message
        self.listing = None if listing is None else (listing[0], list(listing[1]))
        super().__init__(message if listing is None else f"{message}; {listing[0]}: {', '.join(listing[1])}")


class UsageError(ConvertError):
    """Options that do not go together, or that the input cannot honour (`--labels` without
    `--images`, `--input-size` on a program made for another size): exit 2, as click's own
    usage errors."""

    exit_code = 2
