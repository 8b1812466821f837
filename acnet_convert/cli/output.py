"""What the commands print: results on stdout, progress and notes on stderr, both muted by -q."""
from __future__ import annotations

import sys
from typing import Any, Iterator

import click

from acnet_convert.common.text import printable, printable_lines

LINE = 2000  # characters of one printed line (an error naming a few paths)


class Output:
    """What the commands print: results on stdout, progress and notes on stderr, both muted by -q."""

    def __init__(self, quiet_mode: bool, verbose: bool) -> None:
        self.quiet = quiet_mode
        self.verbose = verbose

    def result(self, text: str) -> None:
        """A result on stdout. A block keeps its lines; no other control character passes."""
        if not self.quiet:
            click.echo(printable_lines(text))

    def note(self, text: str) -> None:
        """One line on stderr (progress, warnings), escaped: it cannot forge a second line."""
        if not self.quiet:
            click.echo(printable(text, LINE), err=True)

    def progress(self, items: list[Any], label: str) -> Iterator[Any]:
        """A progress bar on a terminal; nothing when piped or quiet."""
        if self.quiet or not sys.stderr.isatty():
            yield from items
            return
        with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
            yield from bar
