"""Small helpers shared by the dock widgets."""

from __future__ import annotations

import contextlib
import functools
import logging
import traceback
from collections.abc import Callable

from qtpy.QtWidgets import (
    QDialog,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..messages import MESSAGES, Message
from ..session import PickingSession, get_session
from ..messages import notify
from ..tasks import readable_error

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
        self.session.claim_keys(self)
        self.destroyed.connect(lambda *_, s=self.session, me=id(self): s.release_keys(me))
        self.setLayout(QVBoxLayout())
        self.layout().setContentsMargins(4, 4, 4, 4)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.messages = MessageBar()
        self.layout().addWidget(self.messages)

    def on(self, signal, slot: Callable) -> None:
        connect(self, signal, slot)

    def group(self, title: str) -> QVBoxLayout:
        box = QGroupBox(title)
        lay = QVBoxLayout(box)
        lay.setContentsMargins(6, 6, 6, 6)
        self.layout().insertWidget(self.layout().indexOf(self.messages), box)  # the messages stay last
        return lay


LEVEL_COLOURS = {"info": "#b0b0b0", "warning": "#e8b04a", "error": "#ff6b6b"}


class MessageBar(QWidget):
    """The last message of CryoPicker in full (napari's toasts show one short line), and a
    History button with every message of this session, selectable to copy."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 2, 0, 0)
        self.text = QLabel()
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(self.text.textInteractionFlags() | _selectable())
        self.text.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.history = QToolButton()
        self.history.setText("History")
        self.history.setToolTip("Every CryoPicker message of this session")
        self.history.clicked.connect(self.show_history)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.history, 0)
        self.dialog: QDialog | None = None
        connect(self, MESSAGES.added, self._on_message)
        self.show_message(MESSAGES.last)

    def _on_message(self, m: Message) -> None:
        from superqt.utils import ensure_main_thread

        ensure_main_thread(self.show_message)(m)

    def show_message(self, m: Message | None) -> None:
        self.setVisible(m is not None)
        if m is None:
            return
        self.text.setText(m.text)
        self.text.setToolTip(m.line())
        self.text.setStyleSheet(f"color: {LEVEL_COLOURS.get(m.level, LEVEL_COLOURS['info'])};")

    def show_history(self) -> QDialog:
        if self.dialog is None:
            self.dialog = QDialog(self)
            self.dialog.setWindowTitle("CryoPicker messages")
            box = QPlainTextEdit()
            box.setReadOnly(True)
            QVBoxLayout(self.dialog).addWidget(box)
            self.dialog.resize(640, 360)
            self.dialog.box = box
        self.dialog.box.setPlainText(MESSAGES.report())
        self.dialog.box.verticalScrollBar().setValue(self.dialog.box.verticalScrollBar().maximum())
        self.dialog.show()
        return self.dialog


def _selectable():
    from qtpy.QtCore import Qt

    return Qt.TextInteractionFlag.TextSelectableByMouse


def hint_label(text: str = "") -> QLabel:
    lab = QLabel(text)
    lab.setWordWrap(True)
    lab.setFrameShape(QFrame.Shape.NoFrame)
    lab.setStyleSheet("color: #b0b0b0;")
    return lab
