"""A background job off the GUI thread: a cancellable task with progress in napari's
activity dock, whose end is an :class:`Outcome` (ok / cancelled / error) and never an
exception in napari. The runs of ``workers.py`` are built on it."""

from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psygnal import Signal

from ..core.errors import Cancelled, CryoPickerError
from ..core.progress import Progress
from .messages import notify

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- outcome
@dataclass
class Outcome:
    status: str  # "ok" | "cancelled" | "error"
    value: Any = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def readable_error(e: BaseException) -> str:
    """A message for a notification: the core's own words, or the gist of anything else."""
    if isinstance(e, CryoPickerError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory; try a smaller tomogram, a smaller batch or patch size, or the GPU"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "out of memory" in text.lower():
        return "the GPU ran out of memory; lower the batch or patch size, or use the CPU"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def guarded(job: Callable[..., Any], *args, **kwargs) -> Outcome:
    """Run ``job`` and turn every exception into an :class:`Outcome` (worker thread)."""
    try:
        return Outcome("ok", job(*args, **kwargs))
    except Cancelled as e:
        return Outcome("cancelled", None, str(e) or "cancelled")
    except Exception as e:
        log.debug("background job failed:\n%s", traceback.format_exc())
        return Outcome("error", None, readable_error(e))


def _on_main(fn: Callable, *args) -> None:
    """Call ``fn(*args)`` on the GUI thread (directly if already there)."""
    from superqt.utils import ensure_main_thread

    ensure_main_thread(fn)(*args)


# ----------------------------------------------------------------------------- task
REPORT_INTERVAL = 1.0  # seconds between progress updates in the GUI
BUSY_ANIMATION_SPEED = 10  # percent of normal speed for animated "busy" labels


def calm_busy_animations() -> int:
    """Slow napari's animated "in progress" indicator (a QMovie in the status bar) to a
    tenth of its speed; called when one of our jobs starts, and it stays slow. Every frame
    repaints the window; with a software OpenGL (a VNC session or remote X on a cluster
    node, Xvfb) napari then composites the whole window each time: measured, the indicator's 27 frames/s took the
    GUI thread and llvmpipe ~1.9 of 2 cores and made training 3-5x slower. Only public Qt
    calls; returns how many animations were slowed."""
    from qtpy.QtWidgets import QApplication, QLabel

    app = QApplication.instance()
    n = 0
    if app is None:
        return 0
    for top in app.topLevelWidgets():
        for label in top.findChildren(QLabel):
            movie = label.movie()
            if movie is not None and movie.speed() > BUSY_ANIMATION_SPEED:
                movie.setSpeed(BUSY_ANIMATION_SPEED)
                n += 1
    return n


class BackgroundTask:
    """One cancellable background job with a progress bar in napari's activity dock."""

    started = Signal()
    finished = Signal(object)  # Outcome

    def __init__(self, title: str, session: PickingSession | None = None, busy_name: str | None = None):
        self.title = title
        self.session = session
        self.busy_name = busy_name
        self.progress: Progress | None = None
        self.worker = None
        self._pbar = None
        self._last_report = 0.0
        self._warned_texts: set[str] = set()
        self.last_outcome: Outcome | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job: Callable[[Progress], Any], on_result: Callable[[Any], None] | None = None,
              *, total: int = 0) -> None:
        """Run ``job(progress)`` in a thread; ``on_result(value)`` on success (GUI thread)."""
        from napari.qt.threading import create_worker

        if self.running:
            raise CryoPickerError(f"{self.title} is already running; stop it first")
        self.progress = Progress(callback=self._report)
        self._pbar = _make_pbar(self.title, total, self.stop)
        calm_busy_animations()
        self._on_result = on_result
        self.worker = create_worker(guarded, job, self.progress, _start_thread=False)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)  # only if guarded itself failed
        # napari's own relay of a worker's warnings to its notifications is not connected in
        # napari 0.9 (its mixin's __init__ comes after superqt's in the MRO), so the core's
        # warnings (picks left out, no validation split, a class holding the grid back) would
        # be lost in the GUI: shown here, each once per run
        self._warned_texts = set()
        self.worker.warned.connect(self._warned)
        if self.session is not None and self.busy_name:
            self.session.set_busy(self.busy_name, True)
        self.worker.start()
        self.started.emit()

    def stop(self) -> None:
        """Ask the job to stop at its next check (training keeps the best model so far)."""
        if self.progress is not None:
            self.progress.cancel()
            if self._pbar is not None:
                self._pbar.set_description(f"{self.title}: stopping...")

    # worker thread
    def _report(self, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        # at most once a second: each update repaints the window, and with a software
        # OpenGL (no GPU, Xvfb) napari's main thread then composites the whole window,
        # which at 10 updates/s took most of a 2-core CPU away from training
        if done < total and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        _on_main(self._show_progress, done, total, message)

    # GUI thread
    def _show_progress(self, done: int, total: int, message: str) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        if total and pbar.total != total:
            pbar.total = total
        if done != pbar.n:
            pbar.update(done - pbar.n)
        desc = f"{self.title}: {message}" if message else self.title
        if self.progress is not None and self.progress.cancelled:
            desc = f"{self.title}: stopping..."
        if desc != pbar.desc:
            pbar.set_description(desc)

    def _warned(self, show_args: tuple) -> None:
        """A warning raised in the job: the core's own (CryoPickerWarning) for the user,
        anything else (a library's) to the log."""
        from ..core.errors import CryoPickerWarning

        message, category = show_args[0], show_args[1]
        text = str(message)
        if not (isinstance(category, type) and issubclass(category, CryoPickerWarning)):
            log.debug("%s: %s", getattr(category, "__name__", category), text)
        elif text not in self._warned_texts:
            self._warned_texts.add(text)
            notify(text, "warning")

    def _returned(self, outcome: Outcome) -> None:
        self._finish(outcome)

    def _errored(self, exc: BaseException) -> None:  # pragma: no cover - guarded catches all
        self._finish(Outcome("error", None, readable_error(exc)))

    def _finish(self, outcome: Outcome) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.session is not None and self.busy_name:
            self.session.set_busy(self.busy_name, False)
        if outcome.ok and self._on_result is not None:
            try:
                self._on_result(outcome.value)
            except Exception as e:  # showing a result must not crash the GUI
                log.debug("showing result failed:\n%s", traceback.format_exc())
                outcome = Outcome("error", None, readable_error(e))
        if outcome.status == "error":
            notify(f"{self.title} failed: {outcome.message}", "error")
        self.last_outcome = outcome
        self.finished.emit(outcome)


def _make_pbar(title: str, total: int, on_cancel: Callable[[], None]):
    from napari.utils import cancelable_progress

    class _TaskProgress(cancelable_progress):
        def cancel(self) -> None:  # the activity dock's cancel button
            super().cancel()
            on_cancel()

    return _TaskProgress(total=total, desc=title)


def _config(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})
