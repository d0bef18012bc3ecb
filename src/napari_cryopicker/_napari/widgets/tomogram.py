"""Tomogram panel: choose the tomogram to pick; display filters and slab averaging."""

from __future__ import annotations

from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
)

from ..controllers import TomogramPanel
from ..copick_panel import CopickPanel
from ..messages import notify
from ._common import PanelBase, hint_label, reports_errors


class TomogramWidget(PanelBase):
    title = "Tomogram"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.logic = TomogramPanel(self.session)
        lay = self.group("Tomogram to pick")
        self.combo = QComboBox()
        self.combo.setToolTip("The image layer you annotate, train on and pick")
        self.info = hint_label()
        self.level = QComboBox()
        self.level.setToolTip("the scale level of a multiscale (OME-Zarr) tomogram to work on: picks, training and "
                              "picking use its voxels (0: the finest; each next level is binned by 2). "
                              "The picks are saved first and come back at the new level.")
        self.level_row = _row(QLabel("scale level"), self.level)
        lay.addWidget(self.combo)
        lay.addWidget(self.level_row)
        lay.addWidget(self.info)

        f = self.group("Display filters (new layers; picking uses the original)")
        form = QFormLayout()
        f.addLayout(form)
        self.sigma = _dspin(1.5, 0.1, 20.0, 0.5)
        self.btn_gauss = QPushButton("Gaussian")
        form.addRow("sigma (voxels)", _row(self.sigma, self.btn_gauss))
        self.fine = _dspin(1.0, 0.0, 20.0, 0.5)
        self.coarse = _dspin(8.0, 0.5, 200.0, 1.0)
        self.btn_band = QPushButton("Band-pass")
        form.addRow("fine / coarse", _row(self.fine, self.coarse, self.btn_band))
        self.btn_eq = QPushButton("Histogram equalisation")
        form.addRow("", self.btn_eq)
        self.slab = QSpinBox()
        self.slab.setRange(2, 101)
        self.slab.setValue(5)
        self.btn_slab = QPushButton("Slab average")
        form.addRow("z-slices", _row(self.slab, self.btn_slab))
        self.btn_stop = QPushButton("Stop")
        self.btn_stop.setToolTip("stop the filter being computed (no layer is added)")
        self.btn_stop.setEnabled(False)
        self.status = hint_label()
        f.addWidget(_row(self.status, self.btn_stop))

        c = self.group("copick project")
        self.copick = CopickPanel(self.session)
        self.btn_copick = QPushButton("Open copick project...")
        self.btn_copick.setToolTip("a copick config (.json): its runs, tomograms (OME-Zarr or MRC) and "
                                   "particle objects (the classes)")
        self.types = QComboBox()
        self.types.setToolTip("the tomogram type to open of each run (wbp, denoised, ...), where runs have several")
        self.spacings = QComboBox()
        self.spacings.setToolTip("the voxel spacing to open, where runs have several")
        self.runs = QComboBox()
        self.runs.setToolTip("the run to open")
        self.user = QLineEdit()
        self.user.setPlaceholderText("user id")
        self.user.setToolTip("read this user's picks when opening a run; store picks as this user")
        self.session_id = QLineEdit()
        self.session_id.setPlaceholderText("session id")
        self.btn_run = QPushButton("Open run")
        self.store_what = QComboBox()
        for label, data in (("picks", "annotations"), ("predictions", "predictions"), ("both", "both")):
            self.store_what.addItem(label, data)
        self.store_what.setToolTip("what to store: your picks (manual, accepted, imported), the model's predictions "
                                   "at or above each class's threshold, or both")
        self.btn_store_all = QPushButton("Store ticked runs")
        self.btn_store_all.setToolTip("write the picks of every run ticked in the Project panel into the project "
                                      "as user/session (from their saved annotations)")
        self.btn_store = QPushButton("Store picks in project")
        self.btn_store.setToolTip("write this tomogram's picks into the project as user/session, where copick "
                                  "and napari-copick read them (replaces that user's and session's picks)")
        c.addWidget(self.btn_copick)
        self.kind_row = _row(QLabel("tomogram"), self.types, self.spacings)
        c.addWidget(self.kind_row)
        self.kind_row.setVisible(False)
        c.addWidget(_row(self.runs, self.btn_run))
        c.addWidget(_row(self.user, self.session_id, self.store_what))
        c.addWidget(_row(self.btn_store, self.btn_store_all))
        self.copick_info = hint_label("No project open.")
        c.addWidget(self.copick_info)
        self.btn_copick.clicked.connect(self._open_project)
        self.types.activated.connect(self._kind_chosen)
        self.spacings.activated.connect(self._kind_chosen)
        self.btn_run.clicked.connect(self._open_run)
        self.btn_store.clicked.connect(self._store)
        self.btn_store_all.clicked.connect(self._store_ticked)
        for b in (self.btn_run, self.btn_store, self.btn_store_all):
            b.setEnabled(False)

        self.combo.currentTextChanged.connect(self._chosen)
        self.level.activated.connect(self._level_chosen)
        self.btn_gauss.clicked.connect(lambda: self._filter("gaussian", sigma=self.sigma.value()))
        self.btn_band.clicked.connect(
            lambda: self._filter("bandpass", fine=self.fine.value(), coarse=self.coarse.value()))
        self.btn_eq.clicked.connect(lambda: self._filter("equalise"))
        self.btn_slab.clicked.connect(lambda: self._filter("slab", n=self.slab.value()))
        self.btn_stop.clicked.connect(self.logic.job.stop)
        self.on(self.viewer.layers.events.inserted, self._refresh)
        self.on(self.viewer.layers.events.removed, self._refresh)
        self.on(self.session.events.tomogram, self._refresh)
        self.on(self.session.events.busy, self._busy)
        self._refresh()

    def _refresh(self, *_):
        names = self.logic.choices()
        cur = self.session.image_layer.name if self.session.image_layer is not None else ""
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItems(names)
        if cur in names:
            self.combo.setCurrentText(cur)
        else:
            self.combo.setCurrentIndex(-1)
        self.combo.blockSignals(False)
        levels = self.logic.level_choices()
        self.level.blockSignals(True)
        self.level.clear()
        self.level.addItems(levels)
        self.level.setCurrentIndex(self.session.level if levels else -1)
        self.level.blockSignals(False)
        self.level_row.setVisible(len(levels) > 1)
        t = self.session.tomogram
        if t is None:
            self.info.setText("Open a tomogram (File > Open, .mrc/.rec) or File > Open Sample.")
        else:
            z, y, x = t.shape
            where = f"; annotations autosaved to {self.session.autosave_path.name}" \
                if self.session.autosave_path else "; not autosaved (no file)"
            self.info.setText(f"{t.name}: {x} x {y} x {z} voxels, {t.voxel_size:.4g} A/voxel{where}")

    @reports_errors
    def _level_chosen(self, index: int):
        try:
            self.session.set_level(int(index))
        finally:
            self._refresh()

    @reports_errors
    def _open_project(self, *_):
        path, _ = QFileDialog.getOpenFileName(self, "Open copick project", "", "copick config (*.json);;All (*)")
        if path:
            self.open_project(path)

    def open_project(self, path: str) -> None:
        runs = self.copick.load(path)
        cp = self.copick
        for combo, items, current in ((self.types, ["any type", *cp.types], cp.tomo_type),
                                      (self.spacings, ["any spacing", *[f"{v:g} A" for v in cp.spacings]],
                                       None if cp.voxel_size is None else f"{cp.voxel_size:g} A")):
            combo.clear()
            combo.addItems(items)
            combo.setCurrentText(current or items[0])
        self.kind_row.setVisible(len(cp.types) > 1 or len(cp.spacings) > 1)
        self._show_runs(runs)

    def _show_runs(self, runs: list[str]) -> None:
        self.runs.clear()
        self.runs.addItems(runs)
        for b in (self.btn_run, self.btn_store, self.btn_store_all):
            b.setEnabled(bool(runs))
        objects = ", ".join(o.name for o in self.copick.root.pickable_objects)
        ready = sum(1 for r in runs if self.copick._inputs[r].problem is None)
        self.copick_info.setText(f"{len(runs)} run(s), {ready} with a tomogram of this type; "
                                 f"objects: {objects or 'none'}")

    @reports_errors
    def _kind_chosen(self, *_):
        t, v = self.types.currentIndex(), self.spacings.currentIndex()
        runs = self.copick.choose(self.copick.types[t - 1] if t > 0 else None,
                                  self.copick.spacings[v - 1] if v > 0 else None)
        self._show_runs(runs)

    @reports_errors
    def _open_run(self, *_):
        run = self.runs.currentText()
        n = self.copick.open_run(run, user_id=self.user.text().strip(), session_id=self.session_id.text().strip())
        notify(f"Opened run {run}" + (f" with {n} pick(s)" if n else ""))

    @reports_errors
    def _store(self, *_):
        done = self.copick.save(user_id=self.user.text().strip(), session_id=self.session_id.text().strip(),
                                what=self.store_what.currentData())
        notify(f"Stored the picks of {', '.join(done)} in the copick project")

    @reports_errors
    def _store_ticked(self, *_):
        done = self.copick.save_ticked(user_id=self.user.text().strip(), session_id=self.session_id.text().strip(),
                                       what=self.store_what.currentData())
        runs = sorted({d.split("/")[0] for d in done})
        notify(f"Stored the picks of {len(runs)} run(s) ({', '.join(runs)}) in the copick project")

    @reports_errors
    def _chosen(self, name: str):
        self.logic.choose(name or None)

    @reports_errors
    def _filter(self, kind: str, **params):
        self.logic.filter(kind, **params)
        self.status.setText(f"Computing {kind}...")

    def _busy(self, task: str, running: bool):
        if task != "filter":
            return
        for b in (self.btn_gauss, self.btn_band, self.btn_eq, self.btn_slab):
            b.setEnabled(not running)
        self.btn_stop.setEnabled(running)
        if not running:
            self.status.setText("")


def _dspin(value, lo, hi, step):
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setSingleStep(step)
    s.setDecimals(2)
    s.setValue(value)
    return s


def _row(*widgets):
    from qtpy.QtWidgets import QWidget

    w = QWidget()
    h = QHBoxLayout(w)
    h.setContentsMargins(0, 0, 0, 0)
    for x in widgets:
        h.addWidget(x)
    return w


__all__ = ["TomogramWidget"]
