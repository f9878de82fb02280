"""A one-line progress display for long imports: which layer, how many bytes of it.

Drawn on stderr and only when stderr is a terminal; redrawn in place with a carriage return at
most ten times a second, and erased when done. In a pipe, a log or a test, it prints nothing.
"""
import sys
import time

from minirun.units import format_size

REDRAW_EVERY = 0.1      # seconds


class Progress:
    def __init__(self, title: str, stream=None):
        self.title = title
        self.stream = stream or sys.stderr
        self.shown = self.stream.isatty()
        self.where, self.size, self.done_bytes, self.drawn_at = "", None, 0, 0.0

    def layer(self, number: int, total: int, size: int | None) -> None:
        self.where, self.size, self.done_bytes = f"layer {number}/{total}", size, 0
        self._draw(force=True)

    def advance(self, count: int) -> None:
        self.done_bytes += count
        self._draw()

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\033[K")     # back to the line's start, erase to its end
            self.stream.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.shown or (not force and time.monotonic() - self.drawn_at < REDRAW_EVERY):
            return
        amount = format_size(self.done_bytes)
        if self.size:
            amount += f" / {format_size(self.size)}"
        self.stream.write(f"\r\033[K{self.title}: {self.where}  {amount}")
        self.stream.flush()
        self.drawn_at = time.monotonic()
