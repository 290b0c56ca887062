"""Output for people and for scripts: colour and marks on a terminal, plain text elsewhere.

Only the standard library: the command line adds no dependency to the integration.
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Optional, Sequence, TextIO, Tuple

_RESET = "\033[0m"
_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}


class Style:
    """Colours and marks when ``stream`` is a terminal that takes them; plain ASCII otherwise.

    ``NO_COLOR`` (https://no-color.org) and ``TERM=dumb`` turn colour off on a terminal too.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.is_terminal = _is_terminal(stream)
        self.colour = self.is_terminal and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        unicode_ok = self.is_terminal and _can_encode(stream, "✓✗·")
        self.yes = "✓" if unicode_ok else "OK"
        self.no = "✗" if unicode_ok else "NO"
        self.neutral = "·" if unicode_ok else "--"

    def paint(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(_CODES[style] for style in styles)
        return f"\033[{codes}m{text}{_RESET}"

    def good(self, text: str) -> str:
        return self.paint(text, "green", "bold")

    def bad(self, text: str) -> str:
        return self.paint(text, "red", "bold")

    def warn(self, text: str) -> str:
        return self.paint(text, "yellow")

    def quiet(self, text: str) -> str:
        return self.paint(text, "dim")

    def strong(self, text: str) -> str:
        return self.paint(text, "bold")

    def line(self, text: str = "") -> None:
        print_line(text, self.stream)


def print_line(text: str, stream: TextIO) -> None:
    """``print(text, file=stream, flush=True)``, for any text: what the stream's encoding cannot
    take is written as a backslash escape instead of raising ``UnicodeEncodeError``.

    A lone surrogate (``"\\ud800"`` in a saved event's JSON, or a file name that is not UTF-8)
    cannot be encoded even as UTF-8; inside a JSON string its escape ``\\ud800`` is the same JSON.
    """
    try:
        print(text, file=stream, flush=True)
    except UnicodeEncodeError:
        # Nothing was written: a text stream encodes the whole text before writing any of it.
        print(printable(text, stream), file=stream, flush=True)


def printable(text: str, stream: TextIO) -> str:
    """``text`` with every character that ``stream``'s encoding cannot take as a backslash escape."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, errors="backslashreplace").decode(encoding)
    except LookupError:
        return text.encode("ascii", errors="backslashreplace").decode("ascii")


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (LookupError, UnicodeEncodeError):
        return False
    return True


def table(rows: Sequence[Tuple[str, str]], indent: str = "  ") -> List[str]:
    """Two columns, the first padded: a short summary that reads at a glance."""
    width = max((len(label) for label, _ in rows), default=0)
    return [f"{indent}{label.ljust(width)}  {value}" for label, value in rows]


def count(number: int) -> str:
    return f"{number:,}"


class Progress:
    """How far a long run has come: a redrawn line on a terminal; on anything else, a plain line
    every ``plain_every`` seconds, so a CI log shows the run is alive without filling up."""

    def __init__(self, stream: TextIO, plain_every: float = 10.0, redraw_every: float = 0.1) -> None:
        self._style = Style(stream)
        self._stream = stream
        self._interval = redraw_every if self._style.is_terminal else plain_every
        self._started = time.monotonic()
        self._last = self._started
        self._drawn = False

    def show(self, fraction: Optional[float], text: str) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        if self._style.is_terminal:
            bar = _bar(fraction, self._style) if fraction is not None else ""
            self._stream.write(printable(f"\r\033[K{bar}{text}", self._stream))
            self._stream.flush()
            self._drawn = True
        else:
            percent = f"{fraction:.0%} " if fraction is not None else ""
            print_line(f"progress: {percent}{text}", self._stream)

    def clear(self) -> None:
        """Before other output, and at the end: a terminal's progress line is not left behind."""
        if self._drawn:
            self._stream.write("\r\033[K")
            self._stream.flush()
            self._drawn = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started


def _bar(fraction: float, style: Style, width: int = 20) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    full, empty = ("█", "░") if _can_encode(style.stream, "█░") else ("#", ".")
    return f"{fraction:4.0%} {style.paint(full * filled, 'cyan')}{empty * (width - filled)}  "


def stderr_style() -> Style:
    return Style(sys.stderr)


def stdout_style() -> Style:
    return Style(sys.stdout)
