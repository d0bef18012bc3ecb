"""Picking panel: run the model (Stop cancels), probability map, per-class score threshold."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import QCheckBox, QFormLayout, QHBoxLayout, QLabel, QPushButton, QWidget
from superqt import QLabeledDoubleSlider

from ..convert import SCORE_RAMP
from ..workers import LIVE_KEPT, runs_for
from ._common import PanelBase, hint_label, reports_errors


class ScoreHistogram(QWidget):
    """The scores of one class's predictions in 20 bins over 0..1: bars above the
    threshold in the class colour, below it grey, and the threshold as a line."""

    BINS = 20

    def __init__(self, colour: str = "#E69F00", parent=None):
        super().__init__(parent)
        self.colour = QColor(colour)
        self.counts = np.zeros(self.BINS, int)
        self.threshold = 0.0
        self.setFixedSize(84, 24)
        self.setToolTip("scores of this class's predictions (0 to 1); the line is the threshold")

    def set_data(self, scores, threshold: float, colour: str | None = None) -> None:
        s = np.clip(np.asarray(scores, dtype=float), 0.0, 1.0)
        self.counts = np.histogram(s, bins=self.BINS, range=(0.0, 1.0))[0]
        self.threshold = float(threshold)
        if colour:
            self.colour = QColor(colour)
        self.update()

    def paintEvent(self, event):  # noqa: N802 - Qt's name
        p = QPainter(self)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#1e2027"))
        top = max(1, int(self.counts.max()))
        bw = w / self.BINS
        for i, n in enumerate(self.counts):
            if n:
                bh = max(1.0, (h - 2) * np.sqrt(n / top))  # square root: a few strong picks stay visible
                above = (i + 0.5) / self.BINS >= self.threshold
                p.fillRect(QRectF(i * bw + 0.5, h - bh, bw - 1, bh), self.colour if above else QColor("#6b6b6b"))
        x = self.threshold * w
        p.setPen(QPen(QColor("#ffffff"), 1))
        p.drawLine(int(x), 0, int(x), h)
        p.end()


def score_legend() -> QLabel:
    """'score 0 [ramp] 1': the fill colours of the predictions."""
    stops = ", ".join(f"stop:{v} {c}" for v, c in SCORE_RAMP)
    lab = QLabel("0  prediction score (square's fill)  1")
    lab.setAlignment(Qt.AlignmentFlag.AlignCenter)
    lab.setStyleSheet(f"color: white; padding: 1px; background: qlineargradient(x1:0, y1:0, x2:1, y2:0, {stops});")
    return lab


class PickingWidget(PanelBase):
    title = "Picking"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.run = runs_for(self.session)["predict"]
        self.train = runs_for(self.session)["train"]
        lay = self.group("Pick particles with the current model")
        self.probability = QCheckBox("also show the probability map")
        lay.addWidget(self.probability)
        self.fiducials = QCheckBox("leave out gold fiducials (shown as a layer)")
        self.fiducials.setToolTip("Find the gold beads (the darkest compact blobs) and drop picks on or "
                                  "beside them; the beads found show as the 'gold fiducials' layer")
        self.fiducials.setChecked(self.session.predict_overrides.get("mask_fiducials", True))
        self.fiducials.toggled.connect(
            lambda on: self.session.predict_overrides.__setitem__("mask_fiducials", bool(on)))
        lay.addWidget(self.fiducials)
        row = QHBoxLayout()
        self.btn_pick = QPushButton("Pick")
        self.btn_stop = QPushButton("Stop")
        self.btn_stop.setEnabled(False)
        row.addWidget(self.btn_pick)
        row.addWidget(self.btn_stop)
        lay.addLayout(row)
        self.status = hint_label()
        lay.addWidget(self.status)

        t = self.group("Score threshold per class (filters the shown picks live)")
        t.addWidget(score_legend())
        self.sliders_box = QWidget()
        self.form = QFormLayout(self.sliders_box)
        self.form.setContentsMargins(0, 0, 0, 0)
        t.addWidget(self.sliders_box)
        self.sliders: dict[str, QLabeledDoubleSlider] = {}
        self.counts: dict[str, QLabel] = {}
        self.histograms: dict[str, ScoreHistogram] = {}

        self.btn_pick.clicked.connect(self.pick)
        self.btn_stop.clicked.connect(self.stop)
        self.on(self.run.started, self._started)
        self.on(self.run.finished, self._finished)
        self.on(self.session.events.classes, self._rebuild)
        self.on(self.session.events.picks, self._refresh_counts)
        self.on(self.session.events.model, self._model)
        self.on(self.train.best, self._model)
        self.on(self.train.started, self._model)
        self._rebuild()
        self._model()

    # ------------------------------------------------------------------ sliders
    def _rebuild(self, *_):
        names = self.session.classes.names
        if list(self.sliders) == names:
            self._refresh_counts()
            return
        while self.form.rowCount():
            self.form.removeRow(0)
        self.sliders.clear()
        self.counts.clear()
        self.histograms.clear()
        for name in names:
            s = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
            s.setRange(0.0, 1.0)
            s.setDecimals(2)
            s.setSingleStep(0.01)
            s.setValue(self.session.thresholds.get(name, self.session.default_threshold))
            s.valueChanged.connect(lambda v, n=name: self.set_threshold(n, v))
            cnt = QLabel("")
            cnt.setMinimumWidth(60)
            hist = ScoreHistogram(self.session.classes[name].colour)
            row = QWidget()
            h = QHBoxLayout(row)
            h.setContentsMargins(0, 0, 0, 0)
            h.addWidget(s, 1)
            h.addWidget(hist)
            h.addWidget(cnt)
            self.form.addRow(name, row)
            self.sliders[name] = s
            self.counts[name] = cnt
            self.histograms[name] = hist
        self._refresh_counts()

    @reports_errors
    def set_threshold(self, name: str, value: float):
        self.session.set_threshold(name, value)

    def _refresh_counts(self, *_):
        counts = self.session.counts()
        for name, lab in self.counts.items():
            c = counts.get(name, {})
            lab.setText(f"{c.get('predicted', 0)} / {c.get('predicted_total', 0)}")
            sl = self.sliders.get(name)
            want = self.session.thresholds.get(name, self.session.default_threshold)
            if name in self.histograms and name in self.session.classes:
                self.histograms[name].set_data(self.session.prediction_scores(name), want,
                                               self.session.classes[name].colour)
            if sl is not None and abs(sl.value() - want) > 1e-6:
                sl.blockSignals(True)
                sl.setValue(want)
                sl.blockSignals(False)

    # ------------------------------------------------------------------ run
    @reports_errors
    def pick(self, *_):
        model = self.train.pick_model()
        self.run.start(probability=self.probability.isChecked(), model=model)
        if model is not None and model is self.train.interim:
            self.status.setText(f"Picking with the training's {_which(model)} model (epoch {model.best_epoch}); "
                                "training goes on...")

    def stop(self, *_):
        self.run.stop()
        self.btn_stop.setEnabled(False)

    def _started(self):
        self.btn_pick.setEnabled(False)
        self.btn_stop.setEnabled(True)
        self.status.setText("Picking... (progress in the activity dock, bottom right)")

    def _finished(self, outcome):
        self.btn_pick.setEnabled(self.train.pick_model() is not None)
        self.btn_stop.setEnabled(False)
        self.status.setText({"ok": "Done: tune the thresholds, then correct the picks.",
                             "cancelled": "Stopped; earlier picks unchanged."}.get(outcome.status, ""))

    def _model(self, *_):
        model = self.train.pick_model()
        has = model is not None
        self.btn_pick.setEnabled(has and not self.run.running)
        if not has:
            self.status.setText("Train or load a model first (Training panel)." if not self.train.running else
                                "Pick becomes available once training has kept its first model.")
        elif not self.run.running:
            self.status.setText(f"Training runs: Pick uses its {_which(model)} model (epoch {model.best_epoch})."
                                if model is self.train.interim else "")


def _which(model) -> str:
    """How a running training's model is chosen: live training keeps its latest networks' mean."""
    return LIVE_KEPT if (model.train_config or {}).get("continuous") else "best-so-far"
