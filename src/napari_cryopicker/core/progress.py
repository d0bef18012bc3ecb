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
    """The CLI's progress bar: tqdm on stderr, only when stderr is a terminal (a batch job's
    log gets no carriage-return noise)."""

    def __init__(self, stream=None):
        import sys

        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self._bar is None or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total, file=self.stream, dynamic_ncols=True, leave=True,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")
        self._bar.n = min(done, total) if total > 0 else done
        self._bar.set_description_str(message[:60], refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
