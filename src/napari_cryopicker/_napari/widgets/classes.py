"""Classes & annotation panel: class table, active class, undo/redo, counts, autosave."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from ._common import PanelBase, hint_label, reports_errors

COLUMNS = ["key", "class", "colour", "diameter (vox)", "diameter (A)", "picks", "predicted", "rejected"]


class ClassesWidget(PanelBase):
    title = "Classes & annotation"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        lay = self.group("Particle classes")
        lay.addWidget(hint_label("Press 1-9 to switch class; click in the tomogram to pick."))
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.setMinimumHeight(110)
        lay.addWidget(self.table)

        row = QHBoxLayout()
        self.name = QLineEdit()
        self.name.setPlaceholderText("class name, e.g. ribosome")
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(1.0, 5000.0)
        self.diameter.setValue(12.0)
        self.diameter.setToolTip("Particle diameter, in voxels of this tomogram or in A")
        self.unit = QComboBox()
        self.unit.addItems(["vox", "A"])
        self.unit.setToolTip("A: the diameter in Angstrom, turned into voxels with the tomogram's voxel size "
                             "(and kept in A when a tomogram at another binning is opened)")
        self.btn_add = QPushButton("Add class")
        self.btn_remove = QPushButton("Remove")
        for w in (self.name, self.diameter, self.unit, self.btn_add, self.btn_remove):
            row.addWidget(w)
        lay.addLayout(row)

        edit = self.group("Annotation")
        row2, row3 = QHBoxLayout(), QHBoxLayout()  # two rows: the panel fits the dock's width
        self.btn_undo = QPushButton("Undo")
        self.btn_redo = QPushButton("Redo")
        self.btn_import = QPushButton("Import picks...")
        self.btn_import.setToolTip("Add picks from a RELION/Dynamo/copick/CSV file to the training set")
        self.btn_save = QPushButton("Save as...")
        for w in (self.btn_undo, self.btn_redo):
            row2.addWidget(w)
        for w in (self.btn_import, self.btn_save):
            row3.addWidget(w)
        edit.addLayout(row2)
        edit.addLayout(row3)
        self.btn_opened = QPushButton("Train on opened picks layers")
        self.btn_opened.setToolTip("Picks files opened with File > Open are shown but not trained on: add "
                                   "their picks to the training set (source 'imported'; undoable)")
        edit.addWidget(self.btn_opened)
        self.status = hint_label()
        edit.addWidget(self.status)

        self.btn_add.clicked.connect(self._add)
        self.name.returnPressed.connect(self._add)
        self.btn_remove.clicked.connect(self._remove)
        self.btn_undo.clicked.connect(self._undo)
        self.btn_redo.clicked.connect(self._redo)
        self.btn_import.clicked.connect(self._import)
        self.btn_save.clicked.connect(self._save_as)
        self.btn_opened.clicked.connect(self._train_on_opened)
        self.on(self.viewer.layers.events.inserted, self._refresh_opened)
        self.on(self.viewer.layers.events.removed, self._refresh_opened)
        self.table.itemSelectionChanged.connect(self._row_selected)
        self.table.cellDoubleClicked.connect(self._double_clicked)
        ev = self.session.events
        for sig in (ev.classes, ev.picks, ev.tomogram, ev.active_class):
            self.on(sig, self._refresh)
        self.on(ev.history, self._refresh_history)
        self._refresh()
        self._refresh_history()
        self._refresh_opened()

    # ------------------------------------------------------------------ view
    def _refresh(self, *_):
        s = self.session
        counts = s.counts()
        self.table.blockSignals(True)
        self.table.setRowCount(len(s.classes))
        for r, c in enumerate(s.classes):
            n = counts.get(c.name, {})
            da = s.diameter_angstrom(c.name)
            vals = [
                str(r + 1) if r < 9 else "",
                c.name,
                "",
                f"{c.diameter:g}",
                f"{da:.0f}" if da is not None else "-",
                str(n.get("annotated", 0)),
                f"{n.get('predicted', 0)}/{n.get('predicted_total', 0)}" if n.get("predicted_total") else "0",
                str(n.get("rejected", 0)),
            ]
            for col, v in enumerate(vals):
                item = QTableWidgetItem(v)
                if col == 2:
                    item.setData(Qt.ItemDataRole.DecorationRole, QColor(c.colour))
                    item.setText(c.colour)
                    item.setToolTip("double-click to change the colour")
                if col == 3:
                    item.setToolTip("double-click to change the diameter")
                self.table.setItem(r, col, item)
        active = s.classes.names.index(s.active_class) if s.active_class in s.classes else -1
        if active >= 0:
            self.table.selectRow(active)
        else:
            self.table.clearSelection()
        self.table.blockSignals(False)
        self._refresh_status()

    def _refresh_status(self):
        s = self.session
        if s.tomogram is None:
            self.status.setText("No tomogram yet.")
            return
        total = sum(v.get("annotated", 0) for v in s.counts().values())
        where = f"autosaved to {s.autosave_path}" if s.autosave_path else "not autosaved (tomogram has no file)"
        err = f"  {s.last_autosave_error}" if s.last_autosave_error else ""
        act = f"Adding {s.active_class}. " if s.active_class else "Add a class to start. "
        self.status.setText(f"{act}{total} pick(s) in the training set, {where}.{err}")

    def _refresh_history(self, *_):
        s = self.session
        self.btn_undo.setEnabled(s.can_undo)
        self.btn_redo.setEnabled(s.can_redo)
        self.btn_undo.setToolTip(f"Undo {s.undo_label} (Ctrl+Z)" if s.can_undo else "Nothing to undo")
        self.btn_redo.setToolTip(f"Redo {s.redo_label} (Ctrl+Shift+Z)" if s.can_redo else "Nothing to redo")

    # ------------------------------------------------------------------ actions
    @reports_errors
    def _add(self, *_):
        name = self.name.text().strip()
        if not name:
            raise ValueError("type a class name first")
        d = self.diameter.value()
        if self.unit.currentText() == "A":
            vs = self.session.voxel_size
            if not vs:
                raise ValueError("open a tomogram first: a diameter in A needs its voxel size")
            d = d / vs
        self.session.add_class(name, d)
        self.name.clear()
        if self.session.tomogram is not None:
            self.session.set_active_class(name)

    @reports_errors
    def _remove(self, *_):
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            raise ValueError("select a class row first")
        self.session.remove_class(self.session.classes.names[rows[0].row()])

    @reports_errors
    def _row_selected(self):
        rows = self.table.selectionModel().selectedRows()
        if rows:
            name = self.session.classes.names[rows[0].row()]
            if name != self.session.active_class:
                self.session.set_active_class(name)

    @reports_errors
    def _double_clicked(self, row: int, col: int):
        name = self.session.classes.names[row]
        if col == 2:
            colour = QColorDialog.getColor(QColor(self.session.classes[name].colour), self, f"Colour of {name}")
            if colour.isValid():
                self.session.set_colour(name, colour.name())
        elif col == 4 and self.session.voxel_size:
            from qtpy.QtWidgets import QInputDialog

            value, ok = QInputDialog.getDouble(self, f"Diameter of {name}", "diameter (A)",
                                               self.session.diameter_angstrom(name), 1.0, 50000.0, 1)
            if ok:
                self.session.set_diameter_angstrom(name, value)
        elif col in (3, 4):
            from qtpy.QtWidgets import QInputDialog

            value, ok = QInputDialog.getDouble(self, f"Diameter of {name}", "diameter (voxels)",
                                               self.session.classes[name].diameter, 1.0, 500.0, 1)
            if ok:
                self.session.set_diameter(name, value)

    def _refresh_opened(self, *_):
        layers = self.session.opened_picks_layers() if self.session.tomogram is not None else []
        n = sum(len(lyr.data) for lyr in layers)
        self.btn_opened.setEnabled(bool(layers))
        self.btn_opened.setText(f"Train on opened picks layers ({n} picks)" if layers
                                else "Train on opened picks layers")

    @reports_errors
    def _train_on_opened(self, *_):
        n = self.session.train_on_opened_picks()
        from ..messages import notify

        notify(f"Added {n} opened pick(s) to the training set")
        self._refresh_opened()

    @reports_errors
    def _undo(self, *_):
        self.session.undo()

    @reports_errors
    def _redo(self, *_):
        self.session.redo()

    @reports_errors
    def _import(self, *_):
        path, _ = QFileDialog.getOpenFileName(
            self, "Import picks", str(self._folder()),
            "Picks (*.star *.tbl *.json *.csv *.txt);;All files (*)")
        if path:
            self.import_file(path)

    def import_file(self, path: str):
        from ...core.formats import read_picks

        picks = read_picks(path, voxel_size=self.session.voxel_size)
        n = self.session.import_picks(picks)
        from ..messages import notify

        notify(f"Imported {n} pick(s) from {Path(path).name}")

    @reports_errors
    def _save_as(self, *_):
        path, _ = QFileDialog.getSaveFileName(self, "Save annotations", str(self._folder()),
                                              "CryoPicker annotations (*.cryopicker.json)")
        if path:
            self.session.save_annotations(path)

    def _folder(self) -> Path:
        t = self.session.tomogram
        return t.path.parent if t is not None and t.path is not None else Path.cwd()


__all__ = ["ClassesWidget"]
