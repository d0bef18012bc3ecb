"""All panels at once: one tabbed dock widget, or every panel docked on its own."""

from __future__ import annotations

from qtpy.QtWidgets import QScrollArea, QTabWidget, QVBoxLayout, QWidget

from .classes import ClassesWidget
from .correct import CorrectWidget
from .export import ExportWidget
from .labels import LabelsWidget
from .particles import ParticlesWidget
from .picking import PickingWidget
from .project import ProjectWidget
from .tomogram import TomogramWidget
from .training import TrainingWidget

PANELS = [TomogramWidget, ClassesWidget, LabelsWidget, TrainingWidget, PickingWidget, CorrectWidget,
          ParticlesWidget, ExportWidget, ProjectWidget]
SHORT = {"Classes & annotation": "Classes", "Correct & retrain": "Correct", "Weak labels": "Labels"}


def _scrolled(w: QWidget) -> QScrollArea:
    sa = QScrollArea()
    sa.setWidgetResizable(True)
    sa.setWidget(w)
    return sa


class CryoPickerWidget(QWidget):
    """Every CryoPicker panel in one dock, one tab per step of the loop."""

    title = "CryoPicker"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tabs = QTabWidget()
        self.panels: dict[str, QWidget] = {}
        for cls in PANELS:
            w = cls(napari_viewer)
            self.panels[cls.title] = w
            self.tabs.addTab(_scrolled(w), SHORT.get(cls.title, cls.title))
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.tabs)
        self.setMinimumWidth(430)

    def panel(self, cls):
        return self.panels[cls.title]

    def show_panel(self, cls) -> None:
        self.tabs.setCurrentIndex(list(self.panels).index(cls.title))


def dock_all(viewer, *, tabbed: bool = True) -> CryoPickerWidget | dict:
    """Dock every panel: one tabbed dock (default) or one dock per panel."""
    if tabbed:
        w = CryoPickerWidget(viewer)
        viewer.window.add_dock_widget(w, name="CryoPicker", area="right")
        return w
    out = {}
    for cls in PANELS:
        w = cls(viewer)
        viewer.window.add_dock_widget(_scrolled(w), name=cls.title, area="right", tabify=True)
        out[cls.title] = w
    return out
