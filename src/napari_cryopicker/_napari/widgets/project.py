"""Project panel: the tomograms of a job in a table with their counts; double-click one to
show it, tick some to train on or pick them all in the background."""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor, QFont
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
)

from ...core.project import PROJECT_SUFFIX
from ..messages import notify
from ..project import project_for
from ..workers import runs_for
from ._common import PanelBase, hint_label, reports_errors

COLUMNS = ("use", "tomogram", "picks", "predicted", "rejected")


class ProjectWidget(PanelBase):
    title = "Project"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.logic = project_for(self.session)
        lay = self.group("Tomograms of this job")
        row = QHBoxLayout()
        self.btn_add = QPushButton("Add tomograms...")
        self.btn_folder = QPushButton("Add folder...")
        self.btn_remove = QPushButton("Remove")
        for b in (self.btn_add, self.btn_folder, self.btn_remove):
            row.addWidget(b)
        lay.addLayout(row)
        row = QHBoxLayout()
        self.btn_open = QPushButton("Open project...")
        self.btn_save = QPushButton("Save project...")
        self.btn_last = QPushButton("Reopen last")
        self.btn_last.setToolTip("The tomograms of the last job without a project file")
        for b in (self.btn_open, self.btn_save, self.btn_last):
            row.addWidget(b)
        lay.addLayout(row)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        h = self.table.horizontalHeader()
        h.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        h.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(160)
        lay.addWidget(self.table)
        lay.addWidget(hint_label("Double-click a tomogram to show it: the one shown is saved first, and this "
                                 "one's picks, predictions and thresholds come back. Hover a row for its "
                                 "counts per class."))
        lay = self.group("The ticked tomograms")
        row = QHBoxLayout()
        self.btn_train = QPushButton("Train on ticked")
        self.btn_train.setToolTip("Train one model on the picks of every ticked tomogram (Training panel "
                                  "settings; the loss curve is there)")
        self.btn_pick = QPushButton("Pick ticked")
        self.btn_pick.setToolTip("Pick every ticked tomogram with the current model, in the background")
        self.btn_stop = QPushButton("Stop")
        self.btn_stop.setEnabled(False)
        for b in (self.btn_train, self.btn_pick, self.btn_stop):
            row.addWidget(b)
        lay.addLayout(row)
        self.status = hint_label()
        lay.addWidget(self.status)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self.refresh)
        self.btn_add.clicked.connect(self._add_files)
        self.btn_folder.clicked.connect(self._add_folder)
        self.btn_remove.clicked.connect(self.remove_selected)
        self.btn_open.clicked.connect(self._open)
        self.btn_save.clicked.connect(self._save)
        self.btn_last.clicked.connect(self.reopen_last)
        self.btn_train.clicked.connect(self.train)
        self.btn_pick.clicked.connect(self.pick)
        self.btn_stop.clicked.connect(self.stop)
        self.table.cellDoubleClicked.connect(self._double_clicked)
        self.table.itemChanged.connect(self._item_changed)
        self.on(self.logic.changed, self._schedule)
        self.on(self.session.events.busy, self._busy)
        self.refresh()

    # ------------------------------------------------------------------ table
    def _schedule(self, *_) -> None:
        self._timer.start()

    def refresh(self) -> None:
        df = self.logic.table()
        self._filling = True
        try:
            self.table.setRowCount(len(df))
            bold = QFont()
            bold.setBold(True)
            for i, r in enumerate(df.itertuples(index=False)):
                use = QTableWidgetItem()
                use.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                use.setCheckState(Qt.CheckState.Checked if r.use else Qt.CheckState.Unchecked)
                self.table.setItem(i, 0, use)
                cells = [r.tomogram, r.picks, r.predicted, r.rejected]
                for j, v in enumerate(cells, start=1):
                    it = QTableWidgetItem(str(v))
                    it.setToolTip(r.problem or r.detail)
                    if j > 1:
                        it.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                    if r.current:
                        it.setFont(bold)
                    if r.problem:
                        it.setForeground(QColor("#ff6b6b"))
                    self.table.setItem(i, j, it)
        finally:
            self._filling = False
        ticked = int(df["use"].sum()) if len(df) else 0
        self.status.setText(f"{len(df)} tomogram(s), {ticked} ticked; shown: {self.logic.current_name() or 'none'}")

    def names(self) -> list[str]:
        return [self.table.item(i, 1).text() for i in range(self.table.rowCount())]

    def _item_changed(self, item) -> None:
        if getattr(self, "_filling", False) or item.column() != 0:
            return
        self.logic.set_use(self.table.item(item.row(), 1).text(), item.checkState() == Qt.CheckState.Checked)

    @reports_errors
    def _double_clicked(self, row: int, _col: int) -> None:
        self.show_tomogram(self.table.item(row, 1).text())

    @reports_errors
    def show_tomogram(self, name: str) -> None:
        self.logic.switch_to(name)

    # ------------------------------------------------------------------ buttons
    @reports_errors
    def _add_files(self, *_) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add tomograms", "",
                                                "Tomograms (*.mrc *.rec *.map *.st *.ali);;All files (*)")
        if paths:
            self.add(paths)

    @reports_errors
    def _add_folder(self, *_) -> None:
        d = QFileDialog.getExistingDirectory(self, "Add the tomograms of a folder")
        if d:
            self.add([d])

    @reports_errors
    def add(self, specs) -> int:
        n = self.logic.add(specs)
        notify(f"Added {n} tomogram(s) to the project" if n else "Those tomograms are in the project already")
        return n

    @reports_errors
    def remove_selected(self, *_) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.logic.remove(self.table.item(rows[0].row(), 1).text())

    @reports_errors
    def _open(self, *_) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", "", f"Projects (*{PROJECT_SUFFIX});;All files (*)")
        if path:
            self.logic.open(path)

    @reports_errors
    def _save(self, *_) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save project", f"picking{PROJECT_SUFFIX}",
                                              f"Projects (*{PROJECT_SUFFIX})")
        if path:
            out = self.logic.save(path if path.endswith(PROJECT_SUFFIX) else path + PROJECT_SUFFIX)
            notify(f"Saved the project to {out}")

    @reports_errors
    def reopen_last(self, *_) -> int:
        return self.logic.reopen_last()

    @reports_errors
    def train(self, *_) -> None:
        self.logic.train()
        self.btn_stop.setEnabled(True)

    @reports_errors
    def pick(self, *_) -> None:
        self.logic.pick()
        self.btn_stop.setEnabled(True)

    def stop(self, *_) -> None:
        self.logic.stop()
        runs_for(self.session)["train"].stop()

    def _busy(self, task: str, running: bool) -> None:
        busy = self.session.is_busy()
        self.btn_stop.setEnabled(busy)
        self.btn_train.setEnabled(not self.session.is_busy("train"))
        self.btn_pick.setEnabled(not self.session.is_busy("predict"))
        if not running:
            self._schedule()
