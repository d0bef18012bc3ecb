"""Export panel: every write format, tomogram name and voxel size filled in."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QWidget,
)

from ..exporter import FORMAT_LABELS, Exporter, write_formats
from ..messages import notify
from ._common import PanelBase, hint_label, reports_errors

WHAT = [("picks (manual + accepted + imported)", "annotations"), ("shown predictions", "predictions"),
        ("both", "both")]


class ExportWidget(PanelBase):
    title = "Export"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.logic = Exporter(self.session)
        lay = self.group("Write picks for RELION, Dynamo, copick, ...")
        grid = QGridLayout()
        self.formats: dict[str, QCheckBox] = {}
        for i, fmt in enumerate(write_formats()):
            cb = QCheckBox(FORMAT_LABELS.get(fmt, fmt))
            cb.setChecked(fmt == "relion4")
            self.formats[fmt] = cb
            grid.addWidget(cb, i // 2, i % 2)
        lay.addLayout(grid)
        form = QFormLayout()
        lay.addLayout(form)
        self.what = QComboBox()
        for text, value in WHAT:
            self.what.addItem(text, value)
        form.addRow("export", self.what)
        self.which = QComboBox()
        self.which.addItem("the tomogram shown", "current")
        self.which.addItem("every ticked tomogram (Project panel)", "ticked")
        self.which.setToolTip("Every ticked tomogram: one file per tomogram and format, from its saved picks")
        form.addRow("of", self.which)
        self.per_class = QCheckBox("one file per class")
        form.addRow("", self.per_class)
        self.tomo_name = QLineEdit()
        self.tomo_name.setToolTip("Tomogram name written into the files (rlnTomoName, run name, ...)")
        form.addRow("tomogram name", self.tomo_name)
        self.voxel = QDoubleSpinBox()
        self.voxel.setRange(0.01, 1000.0)
        self.voxel.setDecimals(3)
        self.voxel.setSuffix(" A")
        form.addRow("voxel size", self.voxel)
        self.binning = QDoubleSpinBox()
        self.binning.setRange(1.0, 64.0)
        self.binning.setDecimals(1)
        self.binning.setToolTip("Binning of this tomogram relative to the tilt series (RELION 4/5)")
        form.addRow("binning", self.binning)
        self.folder = QLineEdit()
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        row = QWidget()
        h = QHBoxLayout(row)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(self.folder, 1)
        h.addWidget(browse)
        form.addRow("folder", row)
        self.btn = QPushButton("Export")
        lay.addWidget(self.btn)
        self.result = hint_label()
        lay.addWidget(self.result)

        browse.clicked.connect(self._browse)
        self.btn.clicked.connect(self.export)
        self.on(self.session.events.tomogram, self._fill)
        self._fill()

    def _fill(self, *_):
        s = self.session
        self.tomo_name.setText(s.tomogram_name)
        self.voxel.setValue(s.voxel_size or 1.0)
        self.folder.setText(str(self.logic.default_folder()))

    def _browse(self, *_):
        d = QFileDialog.getExistingDirectory(self, "Export folder", self.folder.text())
        if d:
            self.folder.setText(d)

    @reports_errors
    def export(self, *_) -> list[Path]:
        fmts = [f for f, cb in self.formats.items() if cb.isChecked()]
        if self.which.currentData() == "ticked":
            from ..project import project_for

            paths = project_for(self.session).export(
                fmts, self.folder.text() or ".", what=self.what.currentData(), per_class=self.per_class.isChecked(),
                binning=self.binning.value())
        else:
            paths = self.logic.export(
                fmts, self.folder.text() or ".", what=self.what.currentData(),
                per_class=self.per_class.isChecked(), tomogram_name=self.tomo_name.text(),
                voxel_size=self.voxel.value(), binning=self.binning.value(),
            )
        names = ", ".join(p.name for p in paths[:6]) + (" ..." if len(paths) > 6 else "")
        self.result.setText(f"Wrote {len(paths)} file(s) to {paths[0].parent}: {names}" if paths else "")
        notify(f"Exported {len(paths)} file(s) to {paths[0].parent}" if paths else "Nothing written")
        return paths
