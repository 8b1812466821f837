"""What the commands print: results on stdout, progress and notes on stderr, both muted by -q."""
from __future__ import annotations

import os
import sys
from typing import Any, Iterator

import click

from acnet_convert.common.text import printable, printable_lines

LINE = 2000  # characters of one printed line (an error naming a few paths)
# verify's last line on a terminal (not with NO_COLOR, https://no-color.org)
VERDICT_COLOURS = {"MATCH": "green", "MISMATCH": "red", "INCONCLUSIVE": "yellow"}


def use_colour(stream: object) -> bool:
    """Colour for a terminal, unless NO_COLOR is set (to anything but the empty string)."""
    isatty = getattr(stream, "isatty", None)
    return not os.environ.get("NO_COLOR") and bool(isatty and isatty())


class Output:
    """What the commands print: results on stdout, progress and notes on stderr, both muted by -q."""

    def __init__(self, quiet_mode: bool, verbose: bool) -> None:
        self.quiet = quiet_mode
        self.verbose = verbose
        self.bar_open = False  # a progress bar is drawn on stderr's current line

    def result(self, text: str) -> None:
        """A result on stdout. A block keeps its lines; no other control character passes."""
        if not self.quiet:
            click.echo(printable_lines(text))

    def note(self, text: str) -> None:
        """One line on stderr (progress, warnings), escaped: it cannot forge a second line."""
        if not self.quiet:
            click.echo(printable(text, LINE), err=True)

    def verdict(self, word: str, always: bool = False) -> None:
        """verify's last line (MATCH, MISMATCH, INCONCLUSIVE), coloured on a terminal; `always`
        prints it under -q too (a mismatch must not pass in silence)."""
        if self.quiet and not always:
            return
        colour = VERDICT_COLOURS.get(word) if use_colour(sys.stdout) else None
        click.echo(click.style(word, fg=colour, bold=True) if colour else printable(word), color=bool(colour))

    def progress(self, items: list[Any], label: str) -> Iterator[Any]:
        """A progress bar on a terminal; nothing when piped or quiet."""
        if self.quiet or not sys.stderr.isatty():
            yield from items
            return
        self.bar_open = True
        try:
            with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
                yield from bar
        finally:
            self.bar_open = False

    def end_line(self) -> None:
        """End the progress bar's line, if one is drawn, so that what follows (an error, the
        interruption) starts a line of its own."""
        if self.bar_open:
            self.bar_open = False
            click.echo("", err=True)
