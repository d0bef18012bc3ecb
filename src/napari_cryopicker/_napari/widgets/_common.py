"""Small helpers shared by the dock widgets."""

from __future__ import annotations

import contextlib
import functools
import logging
import traceback
from collections.abc import Callable

from qtpy.QtWidgets import QFrame, QGroupBox, QLabel, QSizePolicy, QVBoxLayout, QWidget

from ..session import PickingSession, get_session
from ..workers import notify, readable_error

log = logging.getLogger(__name__)


def reports_errors(fn: Callable) -> Callable:
    """Turn any exception of a button handler into a readable napari notification."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            log.debug("%s failed:\n%s", fn.__name__, traceback.format_exc())
            notify(readable_error(e), "error")
            return None

    return wrapper


def connect(widget: QWidget, signal, slot: Callable) -> None:
    """Connect a psygnal/napari signal to a widget's slot; disconnect when the widget dies."""
    signal.connect(slot)

    def _drop(*_):
        with contextlib.suppress(Exception):
            signal.disconnect(slot)

    widget.destroyed.connect(_drop)


class PanelBase(QWidget):
    """A dock panel bound to the viewer's :class:`PickingSession`."""

    title = "CryoPicker"

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: PickingSession = get_session(napari_viewer)
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(4, 4, 4, 4)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

    def on(self, signal, slot: Callable) -> None:
        connect(self, signal, slot)

    def group(self, title: str) -> QVBoxLayout:
        box = QGroupBox(title)
        lay = QVBoxLayout(box)
        lay.setContentsMargins(6, 6, 6, 6)
        self.layout().addWidget(box)
        return lay


def hint_label(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setFrameShape(QFrame.Shape.NoFrame)
    lab.setStyleSheet("color: #b0b0b0;")
    return lab
