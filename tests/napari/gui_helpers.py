"""Constants and helpers shared by the GUI tests (imported as a plain module)."""

from __future__ import annotations

VOXEL = 7.5
SHAPE = (32, 64, 64)
PLUGIN = "napari-cryopicker"


def dock(viewer, widget_cls):
    """Create a panel and dock it (docked widgets are closed with the viewer)."""
    w = widget_cls(viewer)
    viewer.window.add_dock_widget(w, name=widget_cls.title)
    return w
