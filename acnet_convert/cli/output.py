"""What the commands print: results on stdout, progress and notes on stderr, both muted by -q.
The worker's notes and progress come here as they arrive (`supervise.child.Listener`)."""
from __future__ import annotations

import os
import sys
from typing import Any

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
        self._bar: Any = None
        self.bar_open = False  # a progress bar is drawn on stderr's current line

    def result(self, text: str) -> None:
        """A result on stdout. A block keeps its lines; no other control character passes."""
        if not self.quiet:
            click.echo(printable_lines(text))

    def note(self, text: str) -> None:
        """One line on stderr (progress, warnings), escaped: it cannot forge a second line."""
        self.finish()
        if not self.quiet:
            click.echo(printable(text, LINE), err=True)

    def warning(self, text: str) -> None:
        self.note(f"warning: {text}")

    def verdict(self, word: str, always: bool = False) -> None:
        """verify's last line (MATCH, MISMATCH, INCONCLUSIVE), coloured on a terminal; `always`
        prints it under -q too (a mismatch must not pass in silence)."""
        if self.quiet and not always:
            return
        colour = VERDICT_COLOURS.get(word) if use_colour(sys.stdout) else None
        click.echo(click.style(word, fg=colour, bold=True) if colour else printable(word), color=bool(colour))

    def progress(self, label: str, total: int) -> None:
        """A progress bar of `total` steps on a terminal; nothing when piped or quiet."""
        self.finish()
        if self.quiet or not sys.stderr.isatty():
            return
        self._bar = click.progressbar(length=max(total, 0) or None, label=printable(label, 60), file=sys.stderr,
                                      show_pos=True)
        self._bar.__enter__()
        self.bar_open = True

    def advance(self, steps: int) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def phase(self, doing: str, file: str, native: str | None) -> None:
        """With -v, what the work does now: where a slow or hung run is."""
        if self.verbose:
            self.note(f"[{native or 'acnet-convert'}] {doing} {file}")

    def resources(self, peak: int, limit: int) -> None:
        """With -v, how much memory the work held at most, against its limit."""
        if self.verbose:
            self.note(f"[acnet-convert] the work held at most {peak / (1 << 20):,.0f} MiB of its "
                      f"{limit / (1 << 20):,.0f} MiB limit")

    def finish(self) -> None:
        """End the progress bar on screen, if one is showing (click ends its line)."""
        bar, self._bar = self._bar, None
        self.bar_open = False
        if bar is not None:
            bar.__exit__(None, None, None)

    def end_line(self) -> None:
        """End the progress bar's line, if one is drawn, so that what follows (an error, the
        interruption) starts a line of its own."""
        drawn = self.bar_open
        if self._bar is not None:
            self.finish()
        elif drawn:
            self.bar_open = False
            click.echo("", err=True)
