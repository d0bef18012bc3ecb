"""The progress/cancel protocol shared by the CLI and the GUI.

Long operations take a :class:`Progress` and call ``progress.update(done, total, msg)``
and ``progress.check()`` (which raises :class:`Cancelled` when the user asked to stop).
They never print. The CLI wraps it in a terminal bar, the GUI in napari's ``progress``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import Cancelled

Callback = Callable[[int, int, str], None]


@dataclass
class Progress:
    callback: Callback | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def update(self, done: int, total: int, message: str = "") -> None:
        if self.callback is not None:
            self.callback(int(done), int(total), message)

    def cancel(self) -> None:
        self.cancel_event.set()

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if a stop was requested."""
        if self.cancel_event.is_set():
            raise Cancelled("cancelled by the user")


def ensure(progress: Progress | None) -> Progress:
    return progress if progress is not None else Progress()


class TerminalBar:
    """A minimal progress bar for the CLI (stderr, only on a terminal)."""

    def __init__(self, stream=None, width: int = 30):
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = ""

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        n = int(frac * self.width)
        line = f"\r[{'#' * n}{'.' * (self.width - n)}] {done}/{total} {message}"[:120]
        if line != self._last:
            self.stream.write(line.ljust(len(self._last)))
            self.stream.flush()
            self._last = line

    def close(self) -> None:
        if self.enabled and self._last:
            self.stream.write("\n")
            self.stream.flush()
            self._last = ""
