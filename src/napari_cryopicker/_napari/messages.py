"""Messages to the user: each one in full in the panels' message line (with a history),
a short one in napari's status bar, and warnings and errors also as a short toast.

napari's toasts are one elided line, 400 px wide, over the bottom right of the window,
where the activity dock and its progress bars are: a long message was cut off there, and
a stream of info toasts ("Picked 312 particles (...)") hid the progress of the next job.
So information goes to the panels and the status bar only, and a warning or an error
toasts its first sentence, with the whole text in the panels.

Qt-free: the panels' :class:`~.widgets._common.MessageBar` listens to :data:`MESSAGES`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

from psygnal import Signal

log = logging.getLogger("napari_cryopicker")

LEVELS = ("info", "warning", "error")
#: longest toast text, characters: about what napari's 400 px toast shows on one line
TOAST_CHARS = 60


@dataclass(frozen=True)
class Message:
    time: float
    level: str
    text: str

    def line(self) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(self.time))
        return f"{stamp} {self.level}: {self.text}"


class MessageLog:
    """The last ``maxlen`` messages of this napari process, oldest first."""

    added = Signal(object)

    def __init__(self, maxlen: int = 500):
        self.entries: deque[Message] = deque(maxlen=maxlen)

    def add(self, text: str, level: str = "info") -> Message:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, not {level!r}")
        m = Message(time.time(), level, str(text))
        self.entries.append(m)
        self.added.emit(m)
        return m

    @property
    def last(self) -> Message | None:
        return self.entries[-1] if self.entries else None

    def texts(self, level: str | None = None) -> list[str]:
        return [m.text for m in self.entries if level is None or m.level == level]

    def report(self) -> str:
        """Every message, one per line, to read or copy."""
        return "\n".join(m.line() for m in self.entries)


MESSAGES = MessageLog()


def short(text: str, limit: int = TOAST_CHARS) -> str:
    """The first sentence of ``text`` on one line, cut at a word and marked if longer than ``limit``."""
    one = " ".join(str(text).split())
    i = one.find(". ")
    if 0 < i < limit:
        one = one[: i + 1]
    if len(one) <= limit:
        return one
    cut = one[: limit - 1]
    if " " in cut[limit // 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:") + "…"


def notify(text: str, level: str = "info") -> Message:
    """Tell the user ``text``: in full in the panels, shortened in the status bar and, for a
    warning or an error, in a toast."""
    m = MESSAGES.add(text, level)
    log.log({"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[level], text)
    brief = short(text)
    try:
        import napari
        from napari.utils import notifications

        viewer = napari.current_viewer()
        if viewer is not None:
            viewer.status = brief
        if level != "info":
            if brief != " ".join(str(text).split()):
                brief += " (whole message in the CryoPicker panel)"
            getattr(notifications, f"show_{level}")(brief)
    except Exception:  # pragma: no cover - napari is there whenever the panels are
        pass
    return m
