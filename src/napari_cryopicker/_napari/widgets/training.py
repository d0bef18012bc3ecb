"""Training panel: settings, Train / Stop, live loss and F1 plot, save / load model."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ...core.binning import DEFAULT_BINNING
from ..controllers import model_summary, save_model
from ..session import overfitting_hint
from ..messages import notify
from ..workers import LIVE_KEPT, runs_for
from ._common import PanelBase, hint_label, reports_errors


class LossPlot:
    """Train/val loss and validation F1 per epoch (matplotlib in Qt; a label if unavailable)."""

    def __init__(self):
        self.widget = None
        self.figure = None
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure

            self.figure = Figure(figsize=(4, 2.4), tight_layout=True, facecolor="#262930")
            self.canvas = FigureCanvasQTAgg(self.figure)
            self.canvas.setMinimumHeight(170)
            self.ax = self.figure.add_subplot(111)
            self.ax2 = self.ax.twinx()
            self.widget = self.canvas
        except Exception:  # pragma: no cover - matplotlib is a dependency of the gui extra
            self.widget = QLabel("")
        self.update([])

    def _style(self) -> None:
        ax, ax2 = self.ax, self.ax2
        for a in (ax, ax2):
            a.set_facecolor("#262930")
            a.tick_params(colors="#d0d0d0", labelsize=7)
            for sp in a.spines.values():
                sp.set_color("#808080")
        ax.set_xlabel("epoch", color="#d0d0d0", fontsize=7)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: never a tick at 30.75
        ax.set_ylabel("loss", color="#d0d0d0", fontsize=7)
        ax2.set_ylabel("F3", color="#d0d0d0", fontsize=7)
        ax2.set_ylim(0, 1)
        (self.l_train,) = ax.plot([], [], "-o", ms=2, color="#56B4E9", label="train loss")
        (self.l_val,) = ax.plot([], [], "-o", ms=2, color="#E69F00", label="val loss")
        # the validation score is F3 (recall-weighted); markers so that one epoch shows
        (self.l_f1,) = ax2.plot([], [], "--o", ms=3, color="#009E73", label="val F3")
        leg = ax.legend([self.l_train, self.l_val, self.l_f1], ["train loss", "val loss", "val F3"],
                        fontsize=6, loc="upper right", framealpha=0.3)
        for t in leg.get_texts():
            t.set_color("#d0d0d0")
        self.empty_text = ax.text(0.5, 0.5, "losses appear here during training", ha="center", va="center",
                                  color="#909090", fontsize=8, transform=ax.transAxes)

    def update(self, history: list[dict]) -> None:
        if self.figure is None:
            last = history[-1] if history else {}
            self.widget.setText(", ".join(f"{k}={v:.3g}" for k, v in last.items()
                                          if isinstance(v, (int, float))))
            return
        # the artists are made once and only their data changes: clearing twinned axes on
        # every epoch is slow and has hit matplotlib recursion errors
        if not hasattr(self, "l_train"):
            self._style()
        ep = [h.get("epoch", i + 1) for i, h in enumerate(history)]

        def series(key):
            pts = [(e, h[key]) for e, h in zip(ep, history) if h.get(key) is not None]
            return ([p[0] for p in pts], [p[1] for p in pts])

        self.l_train.set_data(*series("train_loss"))
        self.l_val.set_data(*series("val_loss"))
        self.l_f1.set_data(*series("val_f1"))
        self.empty_text.set_visible(not history)
        self.ax.relim()
        self.ax.autoscale_view()
        if ep:
            lo, hi = min(ep), max(ep)
            self.ax.set_xlim(lo - 0.5, hi + 0.5)
        self.canvas.draw_idle()


BINNING_CHOICES = {"auto binning": "auto", "full resolution": 1, "bin 2": 2, "bin 3": 3, "bin 4": 4}


def _binning_text(value) -> str:
    for text, v in BINNING_CHOICES.items():
        if str(v) == str(value):
            return text
    return "auto binning"


class TrainingWidget(PanelBase):
    title = "Training"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.run = runs_for(self.session)["train"]
        st = self.session.train_settings
        lay = self.group("Train a picker on your picks")
        form = QFormLayout()
        lay.addLayout(form)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        self.epochs.setValue(int(st.get("epochs", 40)))
        form.addRow("epochs", self.epochs)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.0, 24 * 60.0)
        self.minutes.setDecimals(1)
        self.minutes.setSpecialValueText("no limit")
        self.minutes.setSuffix(" min")
        self.minutes.setValue((st.get("time_limit") or 0) / 60.0)
        form.addRow("time budget", self.minutes)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setCurrentText(st.get("device", "auto"))
        form.addRow("device", self.device)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setValue(int(st.get("seed", 0)))
        form.addRow("seed", self.seed)
        self.binning = QComboBox()
        self.binning.addItems(list(BINNING_CHOICES))
        self.binning.setToolTip(
            "Train and pick on the tomogram block-mean binned by this factor. auto: the largest factor "
            "that keeps your smallest class at least 7 voxels across (8x less work per bin of 2, and "
            "measured more accurate on realistic tomograms). Fine-tuning keeps the model's own factor."
        )
        self.binning.setCurrentText(_binning_text(st.get("binning", DEFAULT_BINNING)))
        form.addRow("work at", self.binning)
        self.sparse = QCheckBox("only some particles are picked")
        self.sparse.setToolTip(
            "On: particles you have not picked are not taught as background (blobs the network finds "
            "away from every pick are left out of the loss). Off (the default): everything not picked "
            "is background; measured to do as well or better even with a third of the particles picked."
        )
        self.sparse.setChecked(bool(st.get("sparse", False)))
        lay.addWidget(self.sparse)
        self.snap = QCheckBox("learn from picks moved onto their particles' centres")
        self.snap.setToolTip(
            "On (the default): for each class of 20 voxels across or more, the network learns from your "
            "picks moved to the centre of the particle's density around them (a click is seldom on the "
            "centre). Your picks themselves stay where you put them. Measured on realistic tomograms with "
            "clicks up to half a radius off: they came to within a tenth of a radius of the centres, and "
            "the ribosome's mean F1 over three seeds went from 0.93 to 0.97 (a change within the spread "
            "of repeated runs).")
        self.snap.setChecked(bool(st.get("snap_clicks", True)))
        lay.addWidget(self.snap)
        self.template = QCheckBox("match small classes with a template of their picks")
        self.template.setToolTip(
            "On (the default): each class under 10 voxels across on the binned grid the network works on "
            "(and under 20 at full resolution) "
            "gets a template averaged from its picks (aligned to each other, no map needed), and its "
            "candidates are scored by matching it at full resolution: the score is a cross-correlation. "
            "Measured on realistic tomograms: the 14-nm chaperonin from F1 0.64-0.69 to 0.87-0.90. "
            "Made before the network trains (~35 s for 40 picks, within the time budget). "
            "Live training makes one once the class has 8 "
            "picks, and again each time they grow by half. Adds a few seconds per picking.")
        self.template.setChecked(str(st.get("template", "auto")) != "off")
        lay.addWidget(self.template)
        self.tilt = QDoubleSpinBox()
        self.tilt.setRange(1.0, 90.0)
        self.tilt.setDecimals(0)
        self.tilt.setPrefix("+/- ")
        self.tilt.setSuffix(" degrees")
        self.tilt.setToolTip("The tilt range of your tilt series (about y): the templates are compared with the "
                             "data through this missing wedge")
        self.tilt.setValue(float(st.get("template_tilt_range", 60.0)))
        tilt_row = QFormLayout()
        tilt_row.addRow("tilt range", self.tilt)
        lay.addLayout(tilt_row)
        self.fine_tune = QCheckBox("fine-tune the current model (else from scratch)")
        lay.addWidget(self.fine_tune)
        self.live = QCheckBox("live suggestions while training")
        self.live.setToolTip(
            "After each epoch the network as it is then picks the slab around the slice you look at "
            "(about three particle diameters deep) and shows its picks as hollow diamonds "
            "('suggestions: <class>' layers). They are not picks: click the particles they point at, "
            "or run Picking once training ends. Costs a second or two of training per epoch.")
        self.live.setChecked(bool(self.run.live))
        lay.addWidget(self.live)
        self.continuous = QCheckBox("keep training until Stop")
        self.continuous.setToolTip(
            "Train with no planned end (epochs and time budget are not used): the learning rate runs in "
            "cycles (10 epochs, then each twice as long from half the peak), and with live suggestions each "
            "epoch's network shows what it finds. Clicks, "
            "deletions and answers you make while it trains are used from the next epoch on, in any "
            "run. Stop keeps the best model; tick 'fine-tune' and Train again to resume.")
        self.continuous.setChecked(bool(self.run.continuous))
        lay.addWidget(self.continuous)
        self.live_info = hint_label()
        lay.addWidget(self.live_info)
        row = QHBoxLayout()
        self.btn_train = QPushButton("Train")
        self.btn_stop = QPushButton("Stop")
        self.btn_stop.setEnabled(False)
        self.btn_stop.setToolTip("Stop after the current batch; the best model so far is kept "
                                 "(keep training until Stop: the latest, averaged over its last epochs)")
        row.addWidget(self.btn_train)
        row.addWidget(self.btn_stop)
        lay.addLayout(row)
        self.plot = LossPlot()
        lay.addWidget(self.plot.widget)
        self.hint = hint_label()
        self.hint.setStyleSheet("color: #E69F00;")
        lay.addWidget(self.hint)

        m = self.group("Model")
        self.summary = hint_label()
        m.addWidget(self.summary)
        row2 = QHBoxLayout()
        self.btn_save = QPushButton("Save model...")
        self.btn_load = QPushButton("Load model...")
        row2.addWidget(self.btn_save)
        row2.addWidget(self.btn_load)
        m.addLayout(row2)

        for w in (self.epochs, self.seed):
            w.valueChanged.connect(self._settings)
        self.minutes.valueChanged.connect(self._settings)
        self.device.currentTextChanged.connect(self._settings)
        self.binning.currentTextChanged.connect(self._settings)
        self.sparse.toggled.connect(self._settings)
        self.snap.toggled.connect(self._settings)
        self.template.toggled.connect(self._settings)
        self.tilt.valueChanged.connect(self._settings)
        self.live.toggled.connect(self._settings)
        self.continuous.toggled.connect(self._settings)
        self.on(self.run.suggested, self._suggested)
        self.btn_train.clicked.connect(self.train)
        self.btn_stop.clicked.connect(self.stop)
        self.btn_save.clicked.connect(self._save)
        self.btn_load.clicked.connect(self._load)
        self.on(self.run.epoch, self._epoch)
        self.on(self.run.started, self._started)
        self.on(self.run.finished, self._finished)
        self.on(self.session.events.model, self._model)
        self._model()

    def _settings(self, *_):
        st = self.session.train_settings
        st["epochs"] = self.epochs.value()
        st["time_limit"] = self.minutes.value() * 60.0 or None
        st["device"] = self.device.currentText()
        st["seed"] = self.seed.value()
        st["sparse"] = self.sparse.isChecked()
        st["snap_clicks"] = self.snap.isChecked()
        st["template"] = "auto" if self.template.isChecked() else "off"
        st["template_tilt_range"] = self.tilt.value()
        self.tilt.setEnabled(self.template.isChecked())
        st["binning"] = BINNING_CHOICES[self.binning.currentText()]
        self.run.live = self.live.isChecked()
        self.run.continuous = self.continuous.isChecked()
        for w in (self.epochs, self.minutes):
            w.setEnabled(not self.run.continuous)

    @reports_errors
    def train(self, *_):
        self._settings()
        self.run.start(fine_tune=self.fine_tune.isChecked())

    def stop(self, *_):
        self.run.stop()
        self.btn_stop.setEnabled(False)
        self.hint.setText("Stopping after the current batch; the "
                          + (LIVE_KEPT if self.run.continuous else "best") + " model so far is kept.")

    def _started(self):
        self.btn_train.setEnabled(False)
        self.btn_stop.setEnabled(True)
        self.hint.setText("")
        self.plot.update([])

    def _epoch(self, info: dict):
        self.plot.update(self.run.history)
        self.hint.setText(overfitting_hint(self.run.history))

    def _suggested(self, n: int, epoch: int) -> None:
        text = f"Live: {n} suggestion(s) around this slice from epoch {epoch}'s network"
        # a class the network proposes nothing of yet needs more clicks, not answers
        none = [c for c in self.session.training_classes().names if not self.run.live_counts.get(c)]
        if none:
            text += f"; none yet of {', '.join(none)}: click a few more of {'them' if len(none) > 1 else 'those'}"
        self.live_info.setText(text)

    def _finished(self, outcome):
        self.btn_train.setEnabled(True)
        self.btn_stop.setEnabled(False)
        if outcome.status == "cancelled":
            self.hint.setText("Stopped before the first epoch ended; the previous model is unchanged.")

    def _model(self, *_):
        self.summary.setText(model_summary(self.session))
        has = self.session.checkpoint is not None
        self.btn_save.setEnabled(has)
        self.fine_tune.setEnabled(has)
        if not has:
            self.fine_tune.setChecked(False)

    def _folder(self) -> Path:
        t = self.session.tomogram
        return t.path.parent if t is not None and t.path is not None else Path.cwd()

    @reports_errors
    def _save(self, *_):
        default = self._folder() / f"{self.session.tomogram_name or 'cryopicker'}_model.pt"
        path, _ = QFileDialog.getSaveFileName(self, "Save model", str(default), "PyTorch model (*.pt)")
        if path:
            out = save_model(self.session, path)
            notify(f"Model saved to {out}")

    @reports_errors
    def _load(self, *_):
        path, _ = QFileDialog.getOpenFileName(self, "Load model", str(self._folder()),
                                              "PyTorch model (*.pt);;All files (*)")
        if path:
            self.load(path)

    def load(self, path: str) -> None:
        """Load a model file in the background (the result shows in the summary)."""
        runs_for(self.session)["model"].start(path)
