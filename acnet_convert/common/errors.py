"""The errors the CLI turns into exit codes. Each carries a one-line message for the user."""
from __future__ import annotations


class ConvertError(Exception):
    """Bad input: a missing file, a corrupt or hostile checkpoint, a tensor that does not fit.

    The message is one line and names the file and/or tensor; the CLI prints it and exits 3.
    """

    exit_code = 3
