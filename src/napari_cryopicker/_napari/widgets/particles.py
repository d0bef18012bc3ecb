"""Particles panel: a sortable table of every pick, prediction and rejection; a click
centres the viewer on the particle, and keys walk through the candidates."""

from __future__ import annotations

import contextlib
import logging
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QImage, QPainter, QPen
from qtpy.QtWidgets import (QAbstractItemView, QComboBox, QHBoxLayout, QHeaderView, QPushButton, QTableView,
                            QWidget)

from ..review import COLUMNS, KEYS, ParticleReview, ortho_slices
from ..keys import bound_to
from ..messages import notify
from ._common import PanelBase, hint_label, reports_errors

HEADERS = {"kind": "kind", "class": "class", "score": "score", "z": "z", "y": "y", "x": "x",
           "z_A": "z (A)", "y_A": "y (A)", "x_A": "x (A)", "source": "source"}
SHOW = ("all", "prediction", "pick", "rejected")
log = logging.getLogger(__name__)


class ParticleModel(QAbstractTableModel):
    """A pandas frame of :meth:`ParticleReview.rows` as a Qt table model, sortable."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.frame = pd.DataFrame(columns=[*COLUMNS, "key", "index"])
        self._sort: tuple[int, Qt.SortOrder] | None = None

    def set_frame(self, frame: pd.DataFrame) -> None:
        self.beginResetModel()
        self.frame = frame.reset_index(drop=True)
        if self._sort is not None:
            self._sort_frame(*self._sort)
        self.endResetModel()

    def rowCount(self, parent=QModelIndex()):  # noqa: N802 - Qt's names
        return 0 if parent.isValid() else len(self.frame)

    def columnCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or role not in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.TextAlignmentRole):
            return None
        col = COLUMNS[index.column()]
        v = self.frame.iat[index.row(), index.column()]
        if role == Qt.ItemDataRole.TextAlignmentRole:
            right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
            return int(right) if col not in ("kind", "class", "source") else None
        if col == "score":
            return "" if not np.isfinite(v) else f"{v:.3f}"
        if col in ("z", "y", "x"):
            return f"{v:.1f}"
        if col.endswith("_A"):
            return f"{v:.0f}"
        return str(v)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if orientation == Qt.Orientation.Horizontal:
            return HEADERS[COLUMNS[section]]
        return str(section + 1)

    def sort(self, column, order=Qt.SortOrder.AscendingOrder):
        self.layoutAboutToBeChanged.emit()
        self._sort = (int(column), order)
        self._sort_frame(int(column), order)
        self.layoutChanged.emit()

    def _sort_frame(self, column: int, order) -> None:
        if not len(self.frame):
            return
        self.frame = self.frame.sort_values(COLUMNS[column], ascending=order == Qt.SortOrder.AscendingOrder,
                                            kind="stable", na_position="last").reset_index(drop=True)


class OrthoView(QWidget):
    """XY, XZ and YZ planes through the selected particle, side by side, with a circle of
    the class diameter: judge a candidate in 3D (and see the missing wedge) before answering."""

    SIDE = 120

    def __init__(self, parent=None):
        super().__init__(parent)
        self.images: list[QImage] = []
        self.radius = 0.0
        self.half = 1
        self.colour = QColor("#ffffff")
        self.setFixedHeight(self.SIDE + 16)
        self.setMinimumWidth(3 * self.SIDE + 8)
        self.setToolTip("the planes through the selected particle: XY (as in the viewer), XZ and YZ")

    def set_planes(self, planes, radius: float, colour: str = "#ffffff") -> None:
        finite = np.concatenate([p[np.isfinite(p)] for p in planes]) if planes else np.zeros(0)
        lo, hi = (np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0))
        scale = 255.0 / max(hi - lo, 1e-6)
        self.images = []
        for p in planes:
            g = np.where(np.isfinite(p), np.clip((p - lo) * scale, 0, 255), 0).astype(np.uint8)
            g = np.ascontiguousarray(g)
            self.images.append(QImage(g.data, g.shape[1], g.shape[0], g.shape[1], QImage.Format.Format_Grayscale8).copy())
        self.half = (planes[0].shape[0] - 1) // 2 if planes else 1
        self.radius = float(radius)
        self.colour = QColor(colour)
        self.update()

    def clear(self) -> None:
        self.images = []
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#1e2027"))
        for i, (img, name) in enumerate(zip(self.images, ("XY", "XZ", "YZ"))):
            box = QRectF(i * (self.SIDE + 4), 14, self.SIDE, self.SIDE)
            p.drawImage(box, img)
            p.setPen(QColor("#d0d0d0"))
            p.drawText(QPointF(box.left() + 2, 11), name)
            n = 2 * self.half + 1
            r = self.radius * self.SIDE / n
            p.setPen(QPen(self.colour, 1.5))
            p.drawEllipse(box.center(), r, r)
        p.end()


class PlaneReader:
    """Reads the ortho planes off the GUI thread and hands only the newest request's planes
    to ``on_ready`` (on the GUI thread). A plane of an OME-Zarr tomogram decompresses whole
    chunks (64 MB for 256^3 float32) and a network share answers slowly: read on the GUI
    thread, each step of a review froze the window for as long. Requests overtaken by a
    newer one before they start are skipped."""

    def __init__(self, on_ready):
        self.on_ready = on_ready
        self.latest = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cryopicker-ortho")

    def request(self, data, zyx, half: int, *extra) -> int:
        self.latest += 1
        n = self.latest
        fut = self._pool.submit(self._read, n, data, zyx, half)
        fut.add_done_callback(lambda f: self._done(n, f, extra))
        return n

    def _read(self, n, data, zyx, half):
        return None if n != self.latest else ortho_slices(data, zyx, half)

    def _done(self, n, fut, extra) -> None:
        if fut.cancelled():
            return
        if fut.exception() is not None:
            log.warning("could not read the planes at the particle: %s", fut.exception())
            return
        if fut.result() is not None and n == self.latest:
            from superqt.utils import ensure_main_thread

            ensure_main_thread(self._deliver)(n, fut.result(), extra)

    def _deliver(self, n, planes, extra) -> None:
        if n == self.latest:
            with contextlib.suppress(RuntimeError):  # the panel was closed meanwhile
                self.on_ready(planes, *extra)

    def close(self) -> None:
        self.latest += 1
        self._pool.shutdown(wait=False, cancel_futures=True)


class ParticlesWidget(PanelBase):
    title = "Particles"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.review = ParticleReview(self.session)
        lay = self.group("Every particle of this tomogram")
        top = QHBoxLayout()
        self.show_kind = QComboBox()
        self.show_kind.addItems(["all", "predictions", "picks", "rejected"])
        self.show_kind.setToolTip("which rows to list")
        top.addWidget(self.show_kind)
        self.count = hint_label()
        top.addWidget(self.count, 1)
        lay.addLayout(top)
        self.model = ParticleModel(self)
        self.table = QTableView()
        self.table.setModel(self.model)
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(220)
        lay.addWidget(self.table)
        self.model.sort(COLUMNS.index("score"), Qt.SortOrder.DescendingOrder)
        self.table.horizontalHeader().setSortIndicator(COLUMNS.index("score"), Qt.SortOrder.DescendingOrder)

        r = self.group("Review the candidates")
        self.order = QComboBox()
        self.order.addItems(list(ParticleReview.ORDERS))
        self.order.setToolTip("best first: the surest predictions first; doubtful first: those scoring nearest "
                              "their class's threshold, where an answer teaches the model most; unlike the clicks "
                              "first: those that look least like the particles you clicked of their class, where "
                              "the wrong picks are (to clean a list fast)")
        r.addWidget(self.order)
        row = QHBoxLayout()
        self.btn_prev = QPushButton("< Back (B)")
        self.btn_next = QPushButton("Next (N) >")
        self.btn_accept = QPushButton("Accept (G)")
        self.btn_reject = QPushButton("Reject (R)")
        self.btn_as = QPushButton("As active class (T)")
        for b in (self.btn_prev, self.btn_next, self.btn_accept, self.btn_reject):
            row.addWidget(b)
        r.addLayout(row)
        r.addWidget(self.btn_as)
        self.keys_help = hint_label("Keys (in the viewer): " + "; ".join(f"{k} {what}" for k, what in KEYS)
                                    + ". Each answer moves on to the next candidate; Ctrl+Z undoes it. "
                                    "Click a row to go to that particle.")
        r.addWidget(self.keys_help)
        self.where = hint_label()
        r.addWidget(self.where)
        self.ortho = OrthoView()
        r.addWidget(self.ortho)
        self.planes = PlaneReader(self.ortho.set_planes)
        self.destroyed.connect(lambda *_, p=self.planes: p.close())

        self.table.clicked.connect(self._row_clicked)
        self.show_kind.currentIndexChanged.connect(self._refresh)
        self.btn_prev.clicked.connect(self.previous)
        self.btn_next.clicked.connect(self.next)
        self.btn_accept.clicked.connect(self.accept)
        self.btn_reject.clicked.connect(self.reject)
        self.btn_as.clicked.connect(self.accept_as_active)
        self.order.currentTextChanged.connect(self._set_order)
        self._pending = False
        self.on(self.session.events.picks, self._refresh_soon)
        self.on(self.session.events.tomogram, self._new_tomogram)
        self._bind_keys()
        self._refresh()

    # ------------------------------------------------------------------ keys
    def _bind_keys(self) -> None:
        ref = weakref.ref(self)
        actions = {"N": "next", "B": "previous", "G": "accept", "R": "reject", "T": "accept_as_active"}
        self._bound = []

        def handler(name):
            def _run(viewer=None):
                w = ref()
                if w is not None:
                    getattr(w, name)()
            _run.__name__ = f"cryopicker_{name}"
            _run.__doc__ = f"CryoPicker particle table: {name.replace('_', ' ')}"
            return _run

        viewer = self.viewer
        mine, previous = {}, {}
        for key, name in actions.items():
            fn = handler(name)
            with contextlib.suppress(Exception):
                previous[key] = viewer.bind_key(key, fn, overwrite=True)
                mine[key] = fn
        self._bound = list(mine)

        def _unbind(*_):
            """Give each key back to what it did before, unless a later panel took it over."""
            for k, fn in mine.items():
                with contextlib.suppress(Exception):
                    if bound_to(viewer, k) is fn:
                        viewer.bind_key(k, previous.get(k), overwrite=True)

        self.destroyed.connect(_unbind)

    # ------------------------------------------------------------------ table
    def _refresh_soon(self, *_):
        """Coalesce bursts of edits (a threshold slider's ticks) into one rebuild."""
        if not self._pending:
            self._pending = True
            QTimer.singleShot(60, self._refresh)

    def _new_tomogram(self, *_):
        self.review.current = None
        self._refresh()

    def _refresh(self, *_):
        self._pending = False
        rows = self.review.rows()
        kind = SHOW[self.show_kind.currentIndex()]
        shown = rows if kind == "all" else rows[rows["kind"] == kind]
        self.model.set_frame(shown)
        n = rows["kind"].value_counts() if len(rows) else {}
        self.count.setText(f"{n.get('prediction', 0)} predictions shown, {n.get('pick', 0)} picks, "
                           f"{n.get('rejected', 0)} rejected")
        self._show_current()

    def _show_current(self) -> None:
        cur = self.review.current
        if cur is None:
            self.where.setText("")
            self.table.clearSelection()
            self.planes.latest += 1  # a read under way is no longer wanted
            self.ortho.clear()
            return
        self._show_ortho(cur)
        hit = self.review.find(self.model.frame)
        if hit is not None:
            self.table.selectRow(hit)
            self.table.scrollTo(self.model.index(hit, 0))
        z, y, x = cur.zyx
        self.where.setText(f"At {cur.key.name} #{cur.index + 1}: z {z:.0f}, y {y:.0f}, x {x:.0f} (voxels)")

    def _show_ortho(self, cur) -> None:
        s = self.session
        if s.tomogram is None:
            return
        d = s.classes[cur.class_name].diameter if cur.class_name in s.classes else 10.0
        half = int(np.clip(round(1.5 * d), 8, 64))
        colour = s.classes[cur.class_name].colour if cur.class_name in s.classes else "#ffffff"
        self.planes.request(s.tomogram.data, cur.zyx, half, d / 2, colour)

    @reports_errors
    def _row_clicked(self, index):
        self.review.go_to(self.review.row_of(self.model.frame, index.row()))
        self._show_current()

    def _set_order(self, text: str) -> None:
        self.review.order = text

    # ------------------------------------------------------------------ actions
    @reports_errors
    def next(self, *_):
        if self.review.step(+1) is None:
            notify("No candidates: run Picking first, or lower a class's threshold")
        self._show_current()

    @reports_errors
    def previous(self, *_):
        self.review.step(-1)
        self._show_current()

    @reports_errors
    def accept(self, *_):
        self.review.accept()
        self._show_current()

    @reports_errors
    def reject(self, *_):
        self.review.reject()
        self._show_current()

    @reports_errors
    def accept_as_active(self, *_):
        self.review.accept_as()
        self._show_current()
