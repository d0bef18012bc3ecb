"""Plain logic behind the Tomogram, Weak labels and Model panels.

Widgets call these; tests can too. Long computations go through :mod:`.workers`. Export
is :mod:`.exporter`, the copick project :mod:`.copick_panel`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.classes import ClassTable
from ..core.errors import CryoPickerError
from . import filters
from .convert import META
from .workers import runs_for

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession


# ----------------------------------------------------------------------------- tomogram
class TomogramPanel:
    """Choose the session tomogram; compute display filters as new layers."""

    def __init__(self, session: PickingSession):
        self.session = session
        self.job = runs_for(session)["filter"]

    def choices(self) -> list[str]:
        return [lyr.name for lyr in self.session.image_layers()]

    def choose(self, name: str | None) -> None:
        if not name:
            self.session.set_tomogram(None)
            return
        self.session.set_tomogram(self.session.viewer.layers[name])

    def level_choices(self) -> list[str]:
        """One line per scale level of the session tomogram: voxel size and shape (x y z)."""
        return [f"{k}: {vs:.4g} A, {x} x {y} x {z}" for k, (vs, (z, y, x)) in enumerate(self.session.levels())]

    def filter(self, kind: str, **params) -> None:
        """Compute ``kind`` over the session tomogram in a thread; shown as a new layer."""
        s = self.session
        if s.image_layer is None:
            raise CryoPickerError("choose a tomogram first")
        src = s.image_layer
        data = src.data[0] if getattr(src, "multiscale", False) else src.data
        if kind == "bandpass" and params.get("coarse", 8.0) <= params.get("fine", 1.0):
            raise CryoPickerError("band-pass: the coarse sigma must be larger than the fine sigma")
        name = f"{src.name} [{filters.describe(kind, **params)}]"
        scale = tuple(src.scale)
        units = tuple(str(u) for u in src.units)

        def compute(progress):
            return filters.apply(kind, data, progress, **params)

        def show(vol: np.ndarray):
            from ..core.tomogram import percentile_stats

            lo, hi = percentile_stats(vol)
            viewer = s.viewer
            if name in viewer.layers:
                layer = viewer.layers[name]
                layer.data = vol
                layer.contrast_limits = (lo, hi)
            else:
                layer = viewer.add_image(
                    vol, name=name, scale=scale, units=units, contrast_limits=(lo, hi),
                    metadata={META: {"kind": "filtered", "tomogram": s.tomogram_name, "filter": kind}},
                )
            # keep the picks on top of the new image
            for lyr in s.session_layers().values():
                i = viewer.layers.index(lyr)
                viewer.layers.move(i, len(viewer.layers))
            return layer

        self.job.start(compute, show)


# ----------------------------------------------------------------------------- labels
class LabelsPreview:
    """Weak labels (Cubic / Ball / TBall) from the current picks, as a Labels layer."""

    LAYER = "weak labels"

    def __init__(self, session: PickingSession):
        self.session = session
        self.job = runs_for(session)["labels"]

    @property
    def mode(self) -> str:
        return self.session.label_mode

    @mode.setter
    def mode(self, value: str) -> None:
        value = str(value).lower()
        if value not in ("tball", "ball", "cubic"):
            raise CryoPickerError(f"unknown label shape {value!r}; choose tball, ball or cubic")
        self.session.label_mode = value

    @property
    def diameter(self) -> float | None:
        return self.session.label_diameter

    @diameter.setter
    def diameter(self, value: float | None) -> None:
        self.session.label_diameter = float(value) if value else None

    @property
    def scale(self) -> float | None:
        """Label diameter as a fraction of the particle diameter (None: the engine default)."""
        return self.session.label_scale

    @scale.setter
    def scale(self, value: float | None) -> None:
        self.session.label_scale = float(value) if value else None

    def _inputs(self):
        s = self.session
        tomo = s._require_tomogram()
        picks = s.training_picks()
        if not len(picks.exclude_source("rejected")):
            raise CryoPickerError("no picks yet: the weak labels are made from your picks")
        return tomo.shape, picks, ClassTable.from_dict(s.classes.to_dict()), runs_for(s)["train"].config_values()

    @staticmethod
    def _compute(shape, picks, classes, values) -> np.ndarray:
        """The labels training will use (worker thread: imports the engine, and torch)."""
        from ..core.labels import make_labels
        from ..core.train import TrainConfig
        from ..core.train_data import label_diameters
        from .tasks import _config

        cfg = _config(TrainConfig, values)
        return make_labels(shape, picks, classes, mode=cfg.label_mode, diameter=label_diameters(classes, cfg))

    def compute(self) -> np.ndarray:
        return self._compute(*self._inputs())

    def preview(self, *, background: bool = True):
        args = self._inputs()
        if background:
            self.job.start(lambda progress: self._compute(*args), self.show)
            return None
        return self.show(self._compute(*args))

    def show(self, labels: np.ndarray):
        from napari.utils.colormaps import DirectLabelColormap

        s = self.session
        colours = {0: "transparent", None: "transparent"}
        for k, c in enumerate(s.classes, start=1):
            colours[k] = c.colour
        cmap = DirectLabelColormap(color_dict=colours)
        viewer = s.viewer
        if self.LAYER in viewer.layers:
            layer = viewer.layers[self.LAYER]
            layer.data = labels
            layer.colormap = cmap
        else:
            layer = viewer.add_labels(
                labels, name=self.LAYER, **s.layer_kwargs(), opacity=0.4, colormap=cmap,
                metadata={META: {"kind": "labels", "tomogram": s.tomogram_name, "mode": self.mode}},
            )
            # below the picks
            for lyr in s.session_layers().values():
                viewer.layers.move(viewer.layers.index(lyr), len(viewer.layers))
        layer.metadata = {**layer.metadata, META: {"kind": "labels", "tomogram": s.tomogram_name,
                                                   "mode": self.mode}}
        # napari selects a new layer: give the selection back to the active class's picks, else
        # the number keys and the next click act on the Labels layer (1 = erase)
        if s.active_class is not None:
            s.set_active_class(s.active_class)
        return layer


# ----------------------------------------------------------------------------- model
def save_model(session: PickingSession, path: str | os.PathLike) -> Path:
    if session.checkpoint is None:
        raise CryoPickerError("no model to save yet: train one first")
    from ..core.model import save_checkpoint

    p = Path(path)
    if p.suffix == "":
        p = p.with_suffix(".pt")
    try:
        out = save_checkpoint(session.checkpoint, p)
    except OSError as e:
        raise CryoPickerError(f"{p}: cannot save the model ({e.strerror or e})") from None
    session.model_path = out
    session._autosave()  # the annotations now name this model file
    return out


def load_model(session: PickingSession, path: str | os.PathLike):
    from ..core.model import load_checkpoint

    ckpt = load_checkpoint(path)
    session.set_checkpoint(ckpt, path)
    return ckpt


def model_summary(session: PickingSession) -> str:
    ck = session.checkpoint
    if ck is None:
        return "No model yet."
    names = ", ".join(ck.classes.names)
    parts = [f"Model for {names}"]
    if ck.voxel_size:
        b = ck.binning
        parts.append(f"{ck.voxel_size:.3g} A/voxel" + (f", works at bin {b} ({ck.voxel_size * b:.3g} A)" if b > 1 else ""))
    n = getattr(ck, "n_members", 1)
    if ck.history:
        parts.append(f"{len(ck.history)} epoch(s)" + (f" over {n} networks" if n > 1 else ""))
    if ck.best_score is not None:
        parts.append(("mean " if n > 1 else "") + f"validation score {ck.best_score:.2f}")
    templates = getattr(ck, "templates", None) or {}
    if templates:
        parts.append("template of " + ", ".join(f"{k} ({int(t.get('n_particles', 0))} picks)"
                                                for k, t in templates.items()))
    if session.model_path is not None:
        parts.append(f"file {session.model_path.name}")
    return "; ".join(parts)
