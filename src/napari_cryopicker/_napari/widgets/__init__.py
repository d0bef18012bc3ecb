"""Dock widgets: each a thin Qt view over a logic class (session, workers, controllers)."""

from .all_panels import CryoPickerWidget, dock_all
from .classes import ClassesWidget
from .correct import CorrectWidget
from .export import ExportWidget
from .labels import LabelsWidget
from .picking import PickingWidget
from .tomogram import TomogramWidget
from .training import TrainingWidget

__all__ = [
    "ClassesWidget", "CorrectWidget", "CryoPickerWidget", "ExportWidget", "LabelsWidget",
    "PickingWidget", "TomogramWidget", "TrainingWidget", "dock_all",
]
