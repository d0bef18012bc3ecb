"""Weak labels panel: label shape (Cubic / Ball / TBall) and diameter; preview as Labels."""

from __future__ import annotations

from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QPushButton

from ..controllers import LabelsPreview
from ._common import PanelBase, hint_label, reports_errors

MODES = [("TBall (truncated ball, DeepETPicker)", "tball"), ("Ball", "ball"), ("Cubic", "cubic")]


class LabelsWidget(PanelBase):
    title = "Weak labels"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.logic = LabelsPreview(self.session)
        lay = self.group("Weak labels used for training")
        form = QFormLayout()
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)  # fits the dock's width
        lay.addLayout(form)
        self.mode = QComboBox()
        self.mode.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.mode.setMinimumContentsLength(16)
        for text, value in MODES:
            self.mode.addItem(text, value)
        self.mode.setCurrentIndex([v for _, v in MODES].index(self.session.label_mode))
        form.addRow("shape", self.mode)
        self.scale = QDoubleSpinBox()
        self.scale.setRange(0.1, 1.0)
        self.scale.setSingleStep(0.05)
        self.scale.setValue(self.session.label_scale or 0.5)
        self.scale.setPrefix("x ")
        self.scale.setToolTip("Label diameter as a fraction of each class's particle diameter "
                              "(at least 7 voxels, at most the particle)")
        form.addRow("size", self.scale)
        self.override = QCheckBox("one diameter for all classes")
        self.diameter = QDoubleSpinBox()
        self.diameter.setRange(1.0, 200.0)
        self.diameter.setValue(7.0)
        self.diameter.setSuffix(" vox")
        self.diameter.setEnabled(False)
        form.addRow(self.override, self.diameter)
        self.btn = QPushButton("Preview labels")
        lay.addWidget(self.btn)
        lay.addWidget(hint_label(
            "Each pick becomes a small blob of its class (by default half the particle diameter, "
            "at least 7 voxels); everything else is background. Rejected predictions are painted "
            "as background. Training uses these settings."))
        self.mode.currentIndexChanged.connect(self._mode)
        self.override.toggled.connect(self._diam)
        self.diameter.valueChanged.connect(self._diam)
        self.scale.valueChanged.connect(self._scale)
        self.btn.clicked.connect(self.preview)
        self.on(self.session.events.busy, self._busy)

    @reports_errors
    def _mode(self, *_):
        self.logic.mode = self.mode.currentData()

    @reports_errors
    def _scale(self, *_):
        self.logic.scale = self.scale.value()

    @reports_errors
    def _diam(self, *_):
        self.diameter.setEnabled(self.override.isChecked())
        self.scale.setEnabled(not self.override.isChecked())
        self.logic.diameter = self.diameter.value() if self.override.isChecked() else None

    @reports_errors
    def preview(self, *_):
        self.logic.preview()

    def _busy(self, task: str, running: bool):
        if task == "labels":
            self.btn.setEnabled(not running)
