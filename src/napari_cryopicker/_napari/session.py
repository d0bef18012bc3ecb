"""The picking session: one tomogram, its class table, annotation layers, undo and autosave.

This is the logic every dock widget is a thin view over. It talks to napari layers but not
to Qt widgets, so it is driven the same way by a click in the viewer, a button in a
widget, or a test.

Layers (one set per session tomogram, all sharing the tomogram's scale):

* ``picks: <class>``     the training set: manual, accepted and imported picks
* ``predicted: <class>`` the model's picks, filtered live by a per-class score threshold
  (``layer.shown``); deleting one remembers it as a negative
* ``rejected``           deleted predictions, kept as explicit background for retraining
  (hidden by default, drawn faintly when shown)

The layers hold the state; the session keeps a snapshot of each (``_committed``) and turns
every change - a click in napari (``layer.events.data`` with action added / removed /
changed) or a call such as :meth:`add_pick` - into an undoable :class:`Edit` of
before/after snapshots. After each edit the annotations are saved atomically next to
the tomogram (``<stem>.cryopicker.json``) and restored when the tomogram is reopened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from psygnal import Signal, SignalGroup

from ..core.annotations import (
    ANNOTATION_SOURCES,
    AUTOSAVE_FORMAT,
    AUTOSAVE_SUFFIX,
    backup_path,
    default_autosave_path,
    fallback_autosave_path,
    read_annotation_file,
    set_aside,
    write_bytes_atomic,
    write_json_atomic,
)
from ..core.classes import ClassTable, ParticleClass
from ..core.errors import CryoPickerError
from ..core.picks import Picks
from ..core.tomogram import Tomogram
from .convert import (
    META,
    class_from_name,
    cp_meta,
    empty_features,
    feature_defaults,
    features_frame,
    layer_name,
    picks_from_layer,
    points_layer_kwargs,
    score_colormap,
)
from .messages import notify

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Points

    from ..core.model import Checkpoint

log = logging.getLogger(__name__)

MODEL_SUFFIX = ".cryopicker.pt"  # the model trained in a session, beside its annotations
REJECTED_COLOUR = "#ff4d4d"  # rejected predictions: a red x, plainly visible when shown
MAX_UNDO = 200


# ----------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Key:
    """Identifies one session layer: kind ``picks``/``predicted`` + class, or ``rejected``."""

    kind: str
    class_name: str | None = None

    @property
    def name(self) -> str:
        return "rejected" if self.kind == "rejected" else layer_name(self.kind, self.class_name or "")


REJECTED = Key("rejected")


@dataclass
class State:
    """A snapshot of a Points layer: coordinates and features."""

    data: np.ndarray
    features: pd.DataFrame

    @classmethod
    def empty(cls) -> State:
        return cls(np.zeros((0, 3)), empty_features())

    @classmethod
    def of(cls, layer: Points) -> State:
        return cls(np.array(layer.data, dtype=float, copy=True).reshape(-1, 3),
                   layer.features.copy().reset_index(drop=True))

    def __len__(self) -> int:
        return len(self.data)


@dataclass
class Edit:
    """One undoable action: before/after snapshots of every layer it touched."""

    label: str
    changes: list[tuple[Key, State, State]] = field(default_factory=list)


def tomogram_from_layer(layer: Image) -> Tomogram:
    """A core :class:`Tomogram` view of a napari Image layer (no copy of the data)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if getattr(data, "ndim", 0) != 3 or getattr(layer, "rgb", False):
        raise CryoPickerError(
            f"layer {layer.name!r} is not a 3D greyscale volume (shape {getattr(data, 'shape', '?')}); "
            "choose a tomogram layer"
        )
    cm = cp_meta(layer)
    scale = tuple(float(s) for s in layer.scale[-3:])
    vs = float(cm.get("voxel_size") or scale[-1])
    path = cm.get("path") or getattr(getattr(layer, "source", None), "path", None)
    label = cm.get("tomogram") or (Path(path).stem if path else layer.name)
    return Tomogram(
        data=data,
        voxel_size=vs,
        path=Path(path) if path else None,
        voxel_size_xyz=(scale[2], scale[1], scale[0]),
        label=label,
    )


def _call_soon(fn: Callable[[], None]) -> None:
    """Run ``fn`` once Qt's event loop runs again (at once where there is no Qt)."""
    try:
        from qtpy.QtCore import QTimer
        from qtpy.QtWidgets import QApplication
    except Exception:  # pragma: no cover - napari always brings Qt
        fn()
        return
    if QApplication.instance() is None:  # pragma: no cover
        fn()
    else:
        QTimer.singleShot(0, fn)


def overfitting_hint(history: Sequence[dict], window: int = 3) -> str:
    """A plain-words warning when validation loss rises while training loss falls."""
    rows = [h for h in history if h.get("val_loss") is not None and h.get("train_loss") is not None]
    if len(rows) < window + 1:
        return ""
    recent = rows[-(window + 1):]
    val = [float(h["val_loss"]) for h in recent]
    train = [float(h["train_loss"]) for h in recent]
    best_val = min(float(h["val_loss"]) for h in rows)
    val_rising = val[-1] > val[0] and val[-1] > best_val * 1.02
    train_falling = train[-1] < train[0]
    if val_rising and train_falling:
        return (
            "Validation loss is rising while training loss keeps falling: the model has started "
            "to memorise your picks instead of learning the particles. You can stop now - the "
            "best model so far is kept - or add more picks and retrain."
        )
    return ""


class SessionEvents(SignalGroup):
    classes = Signal()            # class table or styles changed
    active_class = Signal(object)  # new active class name (or None)
    picks = Signal()              # annotations / predictions / thresholds changed
    tomogram = Signal()           # session tomogram changed
    model = Signal()              # checkpoint changed
    history = Signal()            # undo/redo availability changed
    busy = Signal(str, bool)      # task name, running


# ----------------------------------------------------------------------------- session
class PickingSession:
    """Everything the picker knows about the tomogram being picked in one viewer."""

    def __init__(self, viewer: napari.Viewer, *, autosave: bool = True):
        # a weak reference: the registry keys sessions by viewer, so a strong one would
        # keep every closed viewer alive
        self._viewer_ref = weakref.ref(viewer)
        self.events = SessionEvents()
        self.classes = ClassTable([])
        self.active_class: str | None = None
        self.image_layer: Image | None = None
        self.tomogram: Tomogram | None = None
        self.checkpoint: Checkpoint | None = None
        self.model_path: Path | None = None
        self.thresholds: dict[str, float] = {}
        self.default_threshold = 0.0
        self.autosave_enabled = autosave
        self.autosave_path: Path | None = None
        self.last_autosave_error: str | None = None
        # settings shared by the Training and Correct & retrain widgets
        # sparse off: measured, plain training did as well or better even with 40 of 113 picked
        self.train_settings: dict[str, Any] = {"epochs": 40, "time_limit": None, "device": "auto", "seed": 0,
                                               "sparse": False}
        self.train_overrides: dict[str, Any] = {}
        self.label_mode = "tball"
        self.label_diameter: float | None = None  # one label diameter for all classes
        self.label_scale: float | None = None  # else label = scale x class diameter (engine default)
        self.predict_overrides: dict[str, Any] = {}
        self._layers: dict[Key, Points] = {}
        self._committed: dict[Key, State] = {}
        self._callbacks: dict[Key, Callable] = {}
        self._undo: list[Edit] = []
        self._redo: list[Edit] = []
        self._mute = 0
        self._memory: dict[str, dict] = {}  # tomogram name -> annotations (no autosave path)
        self._busy: set[str] = set()
        # layer removals not yet autosaved: napari's Viewer.close() removes every layer
        # (picks first, the tomogram last); such an emptying must never reach the autosave
        self._pending_removals: list[Edit] = []
        self._saved_counts: dict[Path, int] = {}  # autosave file -> picks it holds
        self.last_skipped = 0  # predictions left out by the last set_predictions (already known)
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        self._make_key_handlers()
        self._key_owners: set[int] = set()  # the panels in use (see claim_keys)
        self._previous_keys: dict[str, Any] = {}

    @property
    def viewer(self) -> napari.Viewer:
        v = self._viewer_ref()
        if v is None:
            raise CryoPickerError("the napari window of this session was closed")
        return v

    # ------------------------------------------------------------------ mute / busy
    @contextlib.contextmanager
    def _muted(self):
        self._mute += 1
        try:
            yield
        finally:
            self._mute -= 1

    def set_busy(self, task: str, running: bool) -> None:
        (self._busy.add if running else self._busy.discard)(task)
        self.events.busy.emit(task, running)

    def stop_all(self) -> None:
        """Ask every background run of this session to stop (the viewer is closing)."""
        for run in (getattr(self, "_runs", None) or {}).values():
            with contextlib.suppress(Exception):
                run.stop() if hasattr(run, "stop") else run.task.stop()

    def is_busy(self, task: str | None = None) -> bool:
        return bool(self._busy) if task is None else task in self._busy

    # ------------------------------------------------------------------ tomogram
    @property
    def scale(self) -> tuple[float, float, float]:
        if self.image_layer is not None:
            return tuple(float(s) for s in self.image_layer.scale[-3:])  # type: ignore[return-value]
        return (1.0, 1.0, 1.0)

    @property
    def units(self) -> tuple | None:
        """The tomogram layer's units (Angstrom from the reader), for derived layers."""
        if self.image_layer is None:
            return None
        return tuple(str(u) for u in self.image_layer.units[-3:])

    def layer_kwargs(self) -> dict:
        """scale (and units) shared by every layer derived from the tomogram."""
        kw = {"scale": self.scale}
        if self.units is not None:
            kw["units"] = self.units
        return kw

    @property
    def voxel_size(self) -> float | None:
        return self.tomogram.voxel_size if self.tomogram is not None else None

    @property
    def tomogram_name(self) -> str:
        return self.tomogram.name if self.tomogram is not None else ""

    def image_layers(self) -> list[Image]:
        from napari.layers import Image

        return [
            lyr for lyr in self.viewer.layers
            if isinstance(lyr, Image) and lyr.ndim >= 3 and not getattr(lyr, "rgb", False)
            and cp_meta(lyr).get("kind") not in ("probability", "filtered")
        ]

    def set_tomogram(self, layer: Image | None) -> None:
        """Make ``layer`` the session tomogram; saves and clears the previous one's layers."""
        if layer is self.image_layer:
            return
        tomo = tomogram_from_layer(layer) if layer is not None else None
        old_vs = self.voxel_size
        self._stash_current()
        self._drop_session_layers()
        self._undo.clear()
        self._redo.clear()
        self.image_layer = layer
        self._projection_set = False
        self.tomogram = tomo
        if tomo is not None and old_vs and tomo.voxel_size and not np.isclose(old_vs, tomo.voxel_size, rtol=1e-3):
            # a class is a size in A: at another binning its diameter in voxels changes
            for c in self.classes:
                c.diameter = c.diameter * old_vs / tomo.voxel_size
        self.autosave_path = default_autosave_path(tomo) if tomo is not None else None
        self.last_autosave_error = None
        if tomo is not None:
            self._bind_layer_keys(layer)
            self._restore_annotations()
            for lyr in list(self.viewer.layers):
                self._maybe_adopt(lyr)
            self._update_slice_thickness()
            # restored picks: their layer, not the tomogram napari selects, takes the clicks
            _call_soon(self._select_restored_picks)
        self.events.tomogram.emit()
        self.events.classes.emit()
        self.events.picks.emit()
        self.events.history.emit()

    def _select_restored_picks(self) -> None:
        name = self.active_class
        if self._viewer_ref() is None or name is None or name not in self.classes:
            return
        layer = self._layers.get(Key("picks", name))
        if layer is not None and layer in self.viewer.layers:
            self.set_active_class(name)

    def _stash_current(self) -> None:
        if self.tomogram is None:
            return
        if self.autosave_path is not None:
            self.save_annotations()
        else:
            self._memory[self.tomogram_name] = self.annotation_payload()

    def _drop_session_layers(self) -> None:
        with self._muted():
            for key in list(self._layers):
                layer = self._layers[key]
                self._untrack(key)
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
            self._committed.clear()

    def _require_tomogram(self) -> Tomogram:
        if self.tomogram is None:
            raise CryoPickerError("open a tomogram first (File > Open, or the Tomogram panel)")
        return self.tomogram

    def _update_slice_thickness(self) -> None:
        """Thick z-slice so that each particle's ring shows on every slice its sphere cuts.

        The thickness is napari's (it applies to every layer), so the tomogram is shown as
        a plain slice (``projection_mode='none'``): napari 0.9 would otherwise average it
        over a particle diameter and wash it out. A thickness the user set by hand is left
        alone; averaging slices is the Tomogram panel's *slab average* filter.
        """
        if self.image_layer is None or not len(self.classes):
            return
        dims = self.viewer.dims
        axis = dims.ndim - 3
        if axis < 0:
            return
        half = max(self.classes.diameters) / 2.0 * self.scale[0]
        left, right = list(dims.margin_left), list(dims.margin_right)
        ours = getattr(self, "_margin_set", None)
        if (left[axis], right[axis]) not in ((0.0, 0.0), (ours, ours)):
            return  # the user's own slice thickness
        with contextlib.suppress(Exception):
            if self.image_layer.projection_mode == "mean" and not getattr(self, "_projection_set", False):
                self.image_layer.projection_mode = "none"
                self._projection_set = True
        left[axis], right[axis] = half, half
        with contextlib.suppress(Exception):
            dims.margin_left, dims.margin_right = tuple(left), tuple(right)
            self._margin_set = half

    # ------------------------------------------------------------------ classes
    def add_class(self, name: str, diameter: float, colour: str = "") -> ParticleClass:
        c = self.classes.add(name, diameter, colour)
        self.thresholds.setdefault(c.name, self.default_threshold)
        if self.active_class is None:
            self.active_class = c.name
            self.events.active_class.emit(c.name)
        self._update_slice_thickness()
        self.events.classes.emit()
        self.events.picks.emit()
        self._autosave()
        return c

    def ensure_classes(self, table: ClassTable | Iterable[ParticleClass]) -> None:
        """Add the classes of ``table`` this session does not know yet."""
        changed = False
        for c in table:
            if c.name not in self.classes:
                self.classes.add(c.name, c.diameter, c.colour)
                self.thresholds.setdefault(c.name, self.default_threshold)
                changed = True
        if changed:
            if self.active_class is None and len(self.classes):
                self.active_class = self.classes.names[0]
                self.events.active_class.emit(self.active_class)
            self._update_slice_thickness()
            self.events.classes.emit()

    def remove_class(self, name: str) -> None:
        if name not in self.classes:
            raise CryoPickerError(f"unknown class {name!r}")
        n = self.counts().get(name, {})
        if n.get("annotated", 0):
            raise CryoPickerError(
                f"class {name!r} still has {n['annotated']} pick(s); delete them first "
                "(select them in 'picks: {name}' and press Delete)".replace("{name}", name)
            )
        with self._muted():
            for key in [k for k in self._layers if k.class_name == name]:
                layer = self._layers[key]
                self._untrack(key)
                self._committed.pop(key, None)
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
        self.classes.classes = [c for c in self.classes if c.name != name]
        self.thresholds.pop(name, None)
        # older edits may refer to the removed class
        self._undo.clear()
        self._redo.clear()
        if self.active_class == name:
            self.active_class = self.classes.names[0] if len(self.classes) else None
            self.events.active_class.emit(self.active_class)
        self._update_slice_thickness()
        self.events.classes.emit()
        self.events.picks.emit()
        self.events.history.emit()
        self._autosave()

    def set_diameter(self, name: str, diameter: float) -> None:
        c = self.classes[name]
        c.diameter = float(ParticleClass(name, diameter).diameter)
        self._restyle(name)
        self._update_slice_thickness()
        self.events.classes.emit()
        self._autosave()

    def set_colour(self, name: str, colour: str) -> None:
        self.classes[name].colour = str(colour)
        self._restyle(name)
        self.events.classes.emit()
        self._autosave()

    def set_active_class(self, name: str | None, *, activate_layer: bool = True) -> None:
        """Choose the class new clicks add to; selects its picks layer in add mode."""
        if name is not None and name not in self.classes:
            raise CryoPickerError(f"unknown class {name!r}")
        self.active_class = name
        if name is not None and activate_layer and self.tomogram is not None:
            layer = self.layer_for(Key("picks", name))
            self.viewer.layers.selection.active = layer
            with contextlib.suppress(Exception):
                layer.mode = "add" if self.viewer.dims.ndisplay == 2 else "pan_zoom"
        self.events.active_class.emit(name)

    def select_class_number(self, k: int) -> None:
        """Number key ``k`` (1-based) -> active class."""
        names = self.classes.names
        if 1 <= k <= len(names):
            self.set_active_class(names[k - 1])

    def set_diameter_angstrom(self, name: str, angstrom: float) -> None:
        """Set a class diameter in A (needs a tomogram, for its voxel size)."""
        vs = self.voxel_size
        if not vs:
            raise CryoPickerError("open a tomogram first: a diameter in A needs its voxel size")
        self.set_diameter(name, float(angstrom) / vs)

    def diameter_angstrom(self, name: str) -> float | None:
        vs = self.voxel_size
        return None if vs is None else self.classes[name].diameter * vs

    # ------------------------------------------------------------------ layers
    def layer_for(self, key: Key, *, create: bool = True) -> Points | None:
        layer = self._layers.get(key)
        if layer is not None and layer in self.viewer.layers:
            return layer
        if layer is not None:  # removed behind our back
            self._untrack(key)
        if not create:
            return None
        tomo = self._require_tomogram()
        if key.class_name is not None and key.class_name not in self.classes:
            self.ensure_classes([ParticleClass(key.class_name, 10.0)])
        state = self._committed.get(key) or State.empty()
        layer = self._new_layer(key, state, tomo)
        with self._muted():
            self.viewer.layers.append(layer)
        self._track(key, layer)
        if key in (REJECTED,):
            layer.visible = False
        # keep the tomogram the selected (active) layer's neighbour, picks on top
        return layer

    def _style(self, key: Key) -> tuple[str, float]:
        if key.kind == "rejected":
            return REJECTED_COLOUR, max(self.classes.diameters, default=10.0)
        c = self.classes[key.class_name]
        return c.colour, c.diameter

    def _new_layer(self, key: Key, state: State, tomo: Tomogram) -> Points:
        from napari.layers import Points

        colour, diameter = self._style(key)
        source = {"picks": "manual", "predicted": "predicted", "rejected": "rejected"}[key.kind]
        kw = points_layer_kwargs(
            Picks(voxel_size=tomo.voxel_size), kind=key.kind, class_name=key.class_name or "",
            colour=colour, diameter=diameter, scale=self.scale, tomogram=tomo.name,
            shape=tomo.shape, name=key.name, source=source,
        )
        kw["metadata"][META]["session"] = id(self)
        kw.update(self.layer_kwargs())
        kw["features"] = empty_features()
        layer = Points(np.zeros((0, 3)), **kw)
        with self._muted():
            self._apply_state(key, layer, state)
        self._bind_layer_keys(layer)
        return layer

    def _restyle(self, name: str) -> None:
        for key, layer in self._layers.items():
            if key.class_name == name or key.kind == "rejected":
                colour, diameter = self._style(key)
                with self._muted():
                    if len(layer.data):
                        layer.size = diameter
                        if key.kind != "rejected":
                            layer.border_color = colour
                    layer.current_size = diameter
                    if key.kind != "rejected":
                        layer.current_border_color = colour

    def _apply_state(self, key: Key, layer: Points, state: State) -> None:
        """Set a layer to a snapshot (muted by the caller)."""
        colour, diameter = self._style(key)
        layer.selected_data = set()
        layer.data = state.data.reshape(-1, 3)
        feats = state.features.reset_index(drop=True)
        if len(feats) != len(state.data):
            feats = empty_features() if not len(state.data) else feats.reindex(range(len(state.data)))
        layer.features = feats
        # assigning features resets napari's defaults to the first row: restore them so a
        # click always adds a manual pick of this layer's class
        layer.feature_defaults = feature_defaults(layer.features.columns, self._defaults(key))
        if len(layer.data):
            layer.size = diameter
            layer.border_color = colour
            if key.kind == "rejected":
                layer.face_color = colour
        layer.current_size = diameter
        layer.current_border_color = colour
        if key.kind == "predicted":
            if len(layer.data) and "score" in layer.features:
                layer.face_colormap = score_colormap()
                layer.face_contrast_limits = (0.0, 1.0)
                layer.face_color = "score"
            self._apply_threshold(key.class_name, layer)

    def _track(self, key: Key, layer: Points) -> None:
        self._layers[key] = layer
        self._committed[key] = State.of(layer)
        cb = partial(self._on_layer_data, key)
        self._callbacks[key] = cb
        layer.events.data.connect(cb)

    def _untrack(self, key: Key) -> None:
        layer = self._layers.pop(key, None)
        cb = self._callbacks.pop(key, None)
        if layer is not None and cb is not None:
            with contextlib.suppress(Exception):
                layer.events.data.disconnect(cb)

    def session_layers(self) -> dict[Key, Points]:
        return {k: v for k, v in self._layers.items() if v in self.viewer.layers}

    def _key_of(self, layer) -> Key | None:
        for k, v in self._layers.items():
            if v is layer:
                return k
        return None

    def _maybe_adopt(self, layer) -> bool:
        """Take over a Points layer made for this tomogram (sample data, a reopened session)."""
        from napari.layers import Points

        if not isinstance(layer, Points) or self.tomogram is None or self._key_of(layer) is not None:
            return False
        cm = cp_meta(layer)
        if cm.get("kind") != "picks" or cm.get("session") not in (None, id(self)):
            return False
        if cm.get("tomogram") not in (None, "", self.tomogram.name):
            return False
        name = cm.get("class") or class_from_name(layer.name)
        if not name:
            return False
        if name not in self.classes:
            diameter = float(cm.get("diameter") or (np.mean(layer.size) if len(layer.size) else 10.0))
            colour = cm.get("colour") or ""
            if not colour and len(layer.data):
                from napari.utils.colormaps.standardize_color import rgb_to_hex

                colour = str(rgb_to_hex(layer.border_color[:1])[0])[:7]
            self.ensure_classes([ParticleClass(name, diameter, colour)])
        key = Key("picks", name)
        picks = picks_from_layer(layer)
        picks.table["class_name"] = name
        if picks.voxel_size is not None and self.tomogram.voxel_size and not np.isclose(
            picks.voxel_size, self.tomogram.voxel_size
        ):
            picks = picks.rescaled(self.tomogram.voxel_size)
        base = self._committed.get(key, State.empty())
        merged = State(np.vstack([base.data, picks.zyx]),
                       pd.concat([base.features, features_frame(picks)[["class", "score", "source"]]],
                                 ignore_index=True))
        with self._muted():
            old = self._layers.get(key)
            if old is not None:  # e.g. restored from the autosave: the adopted layer replaces it
                self._untrack(key)
                if old in self.viewer.layers:
                    self.viewer.layers.remove(old)
            meta = dict(layer.metadata)
            meta[META] = {**cm, "session": id(self), "class": name, "tomogram": self.tomogram.name,
                          "shape": list(self.tomogram.shape), "voxel_size": self.tomogram.voxel_size}
            layer.metadata = meta
            layer.name = key.name
            layer.projection_mode = "rescale_spherical"
            self._apply_state(key, layer, merged)
        self._bind_layer_keys(layer)
        self._track(key, layer)
        self.events.picks.emit()
        self._autosave()
        return True

    # ------------------------------------------------------------------ viewer events
    def _on_layer_inserted(self, event) -> None:
        if self._mute:
            return
        layer = event.value
        try:
            from napari.layers import Image

            if self.image_layer is None and isinstance(layer, Image) and layer in self.image_layers():
                self.set_tomogram(layer)
                return
            self._maybe_adopt(layer)
        except CryoPickerError as e:
            notify(str(e), "warning")
        except Exception as e:  # an event handler must never pop up a traceback
            log.warning("could not take over layer %s: %s", getattr(layer, "name", layer), e)
            notify(f"CryoPicker could not use layer {getattr(layer, 'name', layer)!r}: {e}", "warning")

    THREE_D_HINT = ("Picking works in the 2D view only: a click in the 3D view has no depth to put a "
                    "pick at. The picks layers were switched from add to pan/zoom mode; go back to 2D "
                    "with the 2D/3D button (bottom left of the canvas) to pick.")

    def _on_ndisplay(self, event=None) -> None:
        """In the 3D view, a click in add mode would put a pick at a depth napari guesses:
        switch the session's layers out of add mode and say so."""
        try:
            if self.viewer.dims.ndisplay != 3 or self.tomogram is None:
                return
            switched = False
            for layer in self.session_layers().values():
                if getattr(layer, "mode", None) == "add":
                    layer.mode = "pan_zoom"
                    switched = True
            if switched or self.active_class is not None:
                notify(self.THREE_D_HINT, "info")
        except Exception as e:  # an event handler must never pop up a traceback
            log.warning("3D view: %s", e)

    def _on_active_layer(self, event) -> None:
        """Selecting a class's picks (or predicted) layer makes that class the active one."""
        key = self._key_of(event.value)
        if key is None or key.class_name is None or key.class_name == self.active_class:
            return
        if key.class_name in self.classes:
            self.active_class = key.class_name
            self.events.active_class.emit(key.class_name)

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.image_layer:
            if not self._mute:
                # the tomogram goes too: the picks layers just removed went with it (a
                # viewer closing or cleared), so they were not deleted by the user
                self._revert_pending_removals()
                self._stash_current()
                self.image_layer = None
                # the picks are saved (or kept in memory): their layers go with the tomogram
                self._drop_session_layers()
                self.tomogram = None
                self._undo.clear()
                self._redo.clear()
                self.events.tomogram.emit()
                self.events.picks.emit()
                self.events.history.emit()
            return
        key = self._key_of(layer)
        if key is None or self._mute:
            return
        before = self._committed.get(key, State.of(layer))
        self._untrack(key)
        if len(before):
            # removing a layer deletes its picks: undoable like any other deletion, but
            # autosaved only once napari is back in its event loop and the tomogram is
            # still there (Viewer.close() removes the picks layers first, then the tomogram)
            edit = Edit(f"remove layer {key.name}", [(key, before, State.empty())])
            self._commit(edit, save=False)
            self._pending_removals.append(edit)
            _call_soon(self._flush_pending_removals)
        else:
            self._committed[key] = State.empty()

    def _revert_pending_removals(self) -> None:
        """Forget layer removals that were part of a teardown: their picks stay saved."""
        while self._pending_removals:
            edit = self._pending_removals.pop()
            for key, before, _after in edit.changes:
                self._committed[key] = before
            with contextlib.suppress(ValueError):
                self._undo.remove(edit)

    def _flush_pending_removals(self) -> None:
        if not self._pending_removals:
            return
        self._pending_removals.clear()
        if self.tomogram is not None and self._viewer_ref() is not None:
            self._autosave()

    def _on_layer_data(self, key: Key, event) -> None:
        if self._mute:
            return
        action = str(getattr(event, "action", ""))
        if action not in ("added", "removed", "changed"):
            return
        layer = self._layers.get(key)
        if layer is None:
            return
        before = self._committed.get(key, State.empty())
        after = State.of(layer)
        if action == "added" and key.kind == "picks":
            after = self._fix_new_features(key, layer, before, after)
        edit = Edit({"added": "add", "removed": "delete", "changed": "move"}[action] + f" in {key.name}",
                    [(key, before, after)])
        if action == "removed" and key.kind == "predicted":
            idx = [i if i >= 0 else len(before) + i for i in getattr(event, "data_indices", ())]
            idx = [i for i in idx if 0 <= i < len(before)]
            if idx:
                edit.changes.append(self._append_rejected(before, idx))
                edit.label = f"reject {len(idx)} prediction(s) of {key.class_name}"
        self._commit(edit)

    def _defaults(self, key: Key) -> dict:
        source = {"picks": "manual", "predicted": "predicted", "rejected": "rejected"}[key.kind]
        return {"class": key.class_name or "", "score": 1.0, "source": source}

    def _fix_new_features(self, key: Key, layer: Points, before: State, after: State) -> State:
        """Points added in the viewer (click, paste) are manual picks of their layer's class."""
        n_new = len(after) - len(before)
        if n_new <= 0:
            return after
        f = after.features.copy()
        for col, val in self._defaults(key).items():
            if col not in f:
                f[col] = val
            f.loc[f.index[-n_new:], col] = val
        with self._muted():
            layer.features = f
            layer.feature_defaults = feature_defaults(f.columns, self._defaults(key))
        return State(after.data, f.copy())

    def _append_rejected(self, pred_before: State, idx: Sequence[int]) -> tuple[Key, State, State]:
        """Add predictions ``idx`` of a snapshot to the rejected layer; returns the change."""
        rej_before = self._committed.get(REJECTED, State.empty())
        feats = pred_before.features.iloc[list(idx)].reset_index(drop=True).copy()
        feats["source"] = "rejected"
        new = State(
            np.vstack([rej_before.data, pred_before.data[list(idx)]]),
            pd.concat([rej_before.features, feats[["class", "score", "source"]]], ignore_index=True),
        )
        self._set_state(REJECTED, new)
        return (REJECTED, rej_before, new)

    # ------------------------------------------------------------------ edits / undo
    def _set_state(self, key: Key, state: State) -> None:
        layer = self.layer_for(key)
        with self._muted():
            self._apply_state(key, layer, state)
        self._committed[key] = State.of(layer)

    def _commit(self, edit: Edit, *, save: bool = True) -> None:
        for key, _before, after in edit.changes:
            self._committed[key] = after
        self._undo.append(edit)
        del self._undo[:-MAX_UNDO]
        self._redo.clear()
        self._after_change(save=save)

    def _after_change(self, *, save: bool = True) -> None:
        if save:
            self._autosave()
        self.events.picks.emit()
        self.events.history.emit()

    def _edit(self, label: str, new_states: dict[Key, State]) -> Edit:
        changes = []
        for key, state in new_states.items():
            before = self._committed.get(key, State.empty())
            self._set_state(key, state)
            changes.append((key, before, self._committed[key]))
        edit = Edit(label, changes)
        self._commit(edit)
        return edit

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    @property
    def undo_label(self) -> str:
        return self._undo[-1].label if self._undo else ""

    @property
    def redo_label(self) -> str:
        return self._redo[-1].label if self._redo else ""

    def undo(self) -> bool:
        if not self._undo or self.tomogram is None:
            return False
        edit = self._undo.pop()
        for key, before, _after in reversed(edit.changes):
            self._set_state(key, before)
        self._redo.append(edit)
        self._after_change()
        return True

    def redo(self) -> bool:
        if not self._redo or self.tomogram is None:
            return False
        edit = self._redo.pop()
        for key, _before, after in edit.changes:
            self._set_state(key, after)
        self._undo.append(edit)
        self._after_change()
        return True

    # ------------------------------------------------------------------ annotation API
    def states(self) -> dict[Key, State]:
        """Every session layer's committed state (a shallow copy of the mapping)."""
        return dict(self._committed)

    def _state(self, key: Key) -> State:
        return self._committed.get(key, State.empty())

    def add_pick(self, zyx: Sequence[float], class_name: str | None = None, *, source: str = "manual",
                 score: float = 1.0) -> None:
        """Add one pick at voxel (z, y, x) to ``class_name`` (default: the active class)."""
        name = class_name or self.active_class
        if name is None:
            raise CryoPickerError("add a particle class first (name and diameter)")
        p = Picks.from_zyx([zyx], class_name=name, score=score, source=source,
                           tomogram=self.tomogram_name, voxel_size=self.voxel_size)
        self.add_picks(p, label=f"add {name}")

    def add_picks(self, picks: Picks, *, label: str | None = None, source: str | None = None) -> int:
        """Add picks (voxel coordinates of the session tomogram) to the annotation layers."""
        tomo = self._require_tomogram()
        if not len(picks):
            return 0
        if picks.voxel_size is not None and tomo.voxel_size and not np.isclose(picks.voxel_size, tomo.voxel_size):
            picks = picks.rescaled(tomo.voxel_size)
        picks = picks.copy()
        if source is not None:
            picks.table["source"] = source
        picks.table.loc[~picks.table["source"].isin(ANNOTATION_SOURCES), "source"] = "manual"
        self.ensure_classes([ParticleClass(n, 10.0) for n in picks.class_names if n not in self.classes])
        new_states = {}
        for name in picks.class_names:
            sub = picks.select(class_name=name)
            key = Key("picks", name)
            cur = self._state(key)
            new_states[key] = State(np.vstack([cur.data, sub.zyx]),
                                    pd.concat([cur.features, features_frame(sub)[["class", "score", "source"]]],
                                              ignore_index=True))
        self._edit(label or f"add {len(picks)} pick(s)", new_states)
        return len(picks)

    def opened_picks_layers(self) -> list:
        """Points layers opened from picks files (File > Open) that are not in the training
        set: the reader marks them ``imported``; this tomogram's or unnamed ones."""
        from napari.layers import Points

        out = []
        for layer in self.viewer.layers:
            cm = cp_meta(layer)
            if isinstance(layer, Points) and cm.get("kind") == "imported" and len(layer.data) and \
                    cm.get("tomogram") in (None, "", self.tomogram_name):
                out.append(layer)
        return out

    def train_on_opened_picks(self) -> int:
        """Add the picks of every opened picks layer (:meth:`opened_picks_layers`) to the
        training set (source ``imported``, one undo step each) and hide those layers."""
        self._require_tomogram()
        n = 0
        for layer in self.opened_picks_layers():
            picks = picks_from_layer(layer)
            if picks.voxel_size is None:
                picks.voxel_size = float(cp_meta(layer).get("voxel_size") or self.voxel_size or 1.0)
            n += self.import_picks(picks if picks.tomograms else picks.with_tomogram(self.tomogram_name))
            layer.visible = False
            meta = dict(layer.metadata)
            meta[META] = {**cp_meta(layer), "kind": "imported-used"}
            layer.metadata = meta
        return n

    def import_picks(self, picks: Picks) -> int:
        """Add picks read from a file (source ``imported``), rescaled to the tomogram."""
        tomo = self._require_tomogram()
        mine = picks
        names = [t for t in picks.tomograms if t]
        if len(names) > 1:
            if tomo.name in names:
                mine = picks.select(tomogram=tomo.name)
            else:
                raise CryoPickerError(
                    f"the file holds picks of {len(names)} tomograms ({', '.join(names[:5])}), none named "
                    f"{tomo.name!r}; split it or rename the tomogram"
                )
        if mine.voxel_size is None:
            mine = mine.copy()
            mine.voxel_size = tomo.voxel_size
        elif tomo.voxel_size and len(mine) and not np.isclose(mine.voxel_size, tomo.voxel_size):
            notify(f"The picks were made at {mine.voxel_size:.4g} A per voxel; they were rescaled to "
                    f"{tomo.name}'s {tomo.voxel_size:.4g} A voxels", "warning")
        return self.add_picks(mine, source="imported", label=f"import {len(mine)} pick(s)")

    def delete_picks(self, class_name: str, indices: Iterable[int], *, kind: str = "picks") -> int:
        key = Key(kind, class_name)
        cur = self._state(key)
        idx = sorted({int(i) for i in indices if 0 <= int(i) < len(cur)})
        if not idx:
            return 0
        keep = np.setdiff1d(np.arange(len(cur)), idx)
        new = {key: State(cur.data[keep], cur.features.iloc[keep].reset_index(drop=True))}
        label = f"delete {len(idx)} {class_name}"
        if kind == "predicted":
            rej_before = self._state(REJECTED)
            feats = cur.features.iloc[idx].reset_index(drop=True).copy()
            feats["source"] = "rejected"
            new[REJECTED] = State(np.vstack([rej_before.data, cur.data[idx]]),
                                  pd.concat([rej_before.features, feats[["class", "score", "source"]]],
                                            ignore_index=True))
            label = f"reject {len(idx)} prediction(s) of {class_name}"
        self._edit(label, new)
        return len(idx)

    def move_pick(self, class_name: str, index: int, zyx: Sequence[float]) -> None:
        key = Key("picks", class_name)
        cur = self._state(key)
        data = cur.data.copy()
        data[int(index)] = np.asarray(zyx, dtype=float)
        self._edit(f"move {class_name}", {key: State(data, cur.features.copy())})

    def annotations(self, *, include_rejected: bool = False) -> Picks:
        """The training set of the session tomogram as canonical picks."""
        parts = []
        for key, state in self._committed.items():
            if key.kind == "picks" or (include_rejected and key.kind == "rejected"):
                parts.append(self._picks_of(key, state))
        out = Picks.concat(parts)
        if out.voxel_size is None:
            out.voxel_size = self.voxel_size
        return out

    def _picks_of(self, key: Key, state: State, mask: np.ndarray | None = None) -> Picks:
        n = len(state)
        f = state.features
        cls = f["class"].astype(str).tolist() if "class" in f and len(f) == n else [key.class_name or ""] * n
        if key.class_name is not None:
            cls = [key.class_name] * n
        score = f["score"].astype(float).tolist() if "score" in f and len(f) == n else [1.0] * n
        default_source = {"picks": "manual", "predicted": "predicted", "rejected": "rejected"}[key.kind]
        source = f["source"].astype(str).tolist() if "source" in f and len(f) == n else [default_source] * n
        if key.kind != "picks":
            source = [default_source] * n
        p = Picks.from_zyx(state.data.reshape(-1, 3), class_name=cls, score=score, source=source,
                           tomogram=self.tomogram_name, voxel_size=self.voxel_size)
        return p if mask is None else p.subset(mask)

    def rejected(self) -> Picks:
        return self._picks_of(REJECTED, self._state(REJECTED))

    def predictions(self, *, shown_only: bool = True) -> Picks:
        parts = []
        for key, state in self._committed.items():
            if key.kind == "predicted":
                mask = self._shown_mask(key.class_name, state) if shown_only else None
                parts.append(self._picks_of(key, state, mask))
        out = Picks.concat(parts)
        if out.voxel_size is None:
            out.voxel_size = self.voxel_size
        return out

    def training_picks(self) -> Picks:
        """Positives (manual, accepted, imported) plus rejected negatives."""
        return self.annotations(include_rejected=True)

    def training_classes(self) -> ClassTable:
        """The classes that have at least one positive pick (training needs picks of each)."""
        counts = self.annotations().counts()
        return ClassTable([ParticleClass(c.name, c.diameter, c.colour) for c in self.classes
                           if counts.get(c.name, 0) > 0])

    def counts(self) -> dict[str, dict[str, int]]:
        """Per class: annotated (and its split by source), predicted shown/total, rejected."""
        out: dict[str, dict[str, int]] = {}
        for name in self.classes.names:
            out[name] = {"annotated": 0, "manual": 0, "accepted": 0, "imported": 0,
                         "predicted": 0, "predicted_total": 0, "rejected": 0}
        for key, state in self._committed.items():
            if key.kind == "picks" and key.class_name in out:
                d = out[key.class_name]
                d["annotated"] = len(state)
                src = state.features["source"].astype(str) if "source" in state.features else pd.Series([], dtype=str)
                for s in ("manual", "accepted", "imported"):
                    d[s] = int((src == s).sum())
            elif key.kind == "predicted" and key.class_name in out:
                out[key.class_name]["predicted_total"] = len(state)
                out[key.class_name]["predicted"] = int(self._shown_mask(key.class_name, state).sum())
        rej = self._state(REJECTED)
        if len(rej) and "class" in rej.features:
            for name, n in rej.features["class"].astype(str).value_counts().items():
                if name in out:
                    out[name]["rejected"] = int(n)
        return out

    # ------------------------------------------------------------------ predictions
    def set_predictions(self, picks: Picks, *, checkpoint_classes: ClassTable | None = None,
                        skip_known: bool = True) -> int:
        """Replace the predicted layers with ``picks`` (undoable); returns how many are shown.

        With ``skip_known``, predictions within one particle radius of a pick already in the
        training set (or of a rejected one) are left out: they need no decision again.
        """
        tomo = self._require_tomogram()
        if checkpoint_classes is not None:
            self.ensure_classes(checkpoint_classes)
        if picks.voxel_size is not None and tomo.voxel_size and not np.isclose(picks.voxel_size, tomo.voxel_size):
            picks = picks.rescaled(tomo.voxel_size)
        self.ensure_classes([ParticleClass(n, 10.0) for n in picks.class_names if n not in self.classes])
        picks = picks.copy()
        picks.table["source"] = "predicted"
        self.last_skipped = 0
        if skip_known and len(picks):
            known = self.training_picks()
            keep = np.ones(len(picks), dtype=bool)
            for name in picks.class_names:
                ref = known.select(class_name=name)
                if not len(ref):
                    continue
                from scipy.spatial import cKDTree

                rows = np.flatnonzero((picks.table["class_name"] == name).to_numpy())
                d, _ = cKDTree(ref.zyx).query(picks.zyx[rows], k=1)
                keep[rows[d <= self.classes[name].radius]] = False
            self.last_skipped = int((~keep).sum())
            picks = picks.subset(keep)
        new = {}
        for name in self.classes.names:
            key = Key("predicted", name)
            sub = picks.select(class_name=name)
            if not len(sub) and key not in self._committed:
                continue
            new[key] = State(sub.zyx, features_frame(sub)[["class", "score", "source"]])
        self._edit(f"pick {len(picks)} particle(s)", new)
        return len(picks)

    def prediction_scores(self, class_name: str) -> np.ndarray:
        """Scores of every prediction of ``class_name`` (shown or below the threshold)."""
        state = self._state(Key("predicted", class_name))
        if not len(state) or "score" not in state.features:
            return np.zeros(0)
        return state.features["score"].to_numpy(dtype=float)

    def _shown_mask(self, class_name: str | None, state: State) -> np.ndarray:
        t = self.thresholds.get(class_name or "", self.default_threshold)
        if not len(state):
            return np.zeros(0, dtype=bool)
        score = state.features["score"].to_numpy(dtype=float) if "score" in state.features else np.ones(len(state))
        return score >= t

    def _apply_threshold(self, class_name: str | None, layer: Points) -> None:
        state = State(np.asarray(layer.data), layer.features)
        if len(state):
            layer.shown = self._shown_mask(class_name, state)

    def set_threshold(self, class_name: str, value: float) -> None:
        """Show only predictions of ``class_name`` scoring >= ``value`` (no re-inference)."""
        self.thresholds[class_name] = float(value)
        layer = self._layers.get(Key("predicted", class_name))
        if layer is not None and layer in self.viewer.layers:
            with self._muted():
                self._apply_threshold(class_name, layer)
                sel = {i for i in layer.selected_data if layer.shown[i]}
                layer.selected_data = sel
        self.events.picks.emit()

    def selected_predictions(self) -> dict[str, list[int]]:
        out = {}
        for key, layer in self.session_layers().items():
            if key.kind == "predicted" and layer.selected_data:
                shown = np.asarray(layer.shown, dtype=bool)
                idx = sorted(i for i in layer.selected_data if i < len(shown) and shown[i])
                if idx:
                    out[key.class_name] = idx
        return out

    def _take_predictions(self, name: str, idx: Sequence[int], source: str):
        """Split one class's predictions: (remaining state, taken points, taken features with
        ``source``), or None when ``idx`` selects nothing."""
        cur = self._state(Key("predicted", name))
        idx = sorted({int(i) for i in idx if 0 <= int(i) < len(cur)})
        if not idx:
            return None
        keep = np.setdiff1d(np.arange(len(cur)), idx)
        rest = State(cur.data[keep], cur.features.iloc[keep].reset_index(drop=True))
        f = cur.features.iloc[idx].reset_index(drop=True).copy()
        f["source"] = source
        f["class"] = name
        return rest, cur.data[idx], f[["class", "score", "source"]]

    def accept(self, selection: dict[str, Sequence[int]], *, as_class: str | None = None) -> int:
        """Move predictions into the training set (source ``accepted``, score kept), as
        their own class or, with ``as_class``, as that class (a candidate of the wrong class)."""
        if as_class is not None and as_class not in self.classes:
            raise CryoPickerError(f"unknown class {as_class!r}")
        new: dict[Key, State] = {}
        n = 0
        for name, idx in selection.items():
            taken = self._take_predictions(name, idx, "accepted")
            if taken is None:
                continue
            rest, data, feats = taken
            new[Key("predicted", name)] = rest
            target = as_class or name
            feats["class"] = target
            key = Key("picks", target)
            acc = new[key] if key in new else self._state(key)
            new[key] = State(np.vstack([acc.data, data]), pd.concat([acc.features, feats], ignore_index=True))
            n += len(data)
        if n:
            label = f"accept {n} prediction(s)" + (f" as {as_class}" if as_class else "")
            self._edit(label, new)
        return n

    def reject(self, selection: dict[str, Sequence[int]]) -> int:
        """Delete predictions and remember them as negatives (source ``rejected``)."""
        new: dict[Key, State] = {}
        rej = self._state(REJECTED)
        rej_data, rej_feats = [rej.data], [rej.features]
        n = 0
        for name, idx in selection.items():
            taken = self._take_predictions(name, idx, "rejected")
            if taken is None:
                continue
            rest, data, feats = taken
            new[Key("predicted", name)] = rest
            rej_data.append(data)
            rej_feats.append(feats)
            n += len(data)
        if n:
            new[REJECTED] = State(np.vstack(rej_data), pd.concat(rej_feats, ignore_index=True))
            self._edit(f"reject {n} prediction(s)", new)
        return n

    def accept_selected(self) -> int:
        return self.accept(self.selected_predictions())

    def reject_selected(self) -> int:
        return self.reject(self.selected_predictions())

    def accept_shown(self, class_name: str | None = None) -> int:
        """Accept every shown (above-threshold) prediction of one or all classes."""
        sel = {}
        for key, state in self._committed.items():
            if key.kind == "predicted" and (class_name is None or key.class_name == class_name):
                idx = np.flatnonzero(self._shown_mask(key.class_name, state)).tolist()
                if idx:
                    sel[key.class_name] = idx
        return self.accept(sel)

    def clear_predictions(self) -> None:
        new = {k: State.empty() for k in self._committed if k.kind == "predicted" and len(self._committed[k])}
        if new:
            self._edit("clear predictions", new)

    def set_rejected_visible(self, visible: bool) -> None:
        layer = self.layer_for(REJECTED, create=visible)
        if layer is not None:
            layer.visible = bool(visible)

    # ------------------------------------------------------------------ model
    def set_checkpoint(self, ckpt: Checkpoint | None, path: str | os.PathLike | None = None) -> None:
        """Make ``ckpt`` the session's model. A model trained here (no ``path``) is saved
        beside the annotations (``<tomogram>.cryopicker.pt``), so a restart keeps it."""
        self.checkpoint = ckpt
        self.model_path = Path(path) if path else None
        if ckpt is not None:
            self.ensure_classes(ckpt.classes)
            if path is None:
                self._save_model(ckpt)
        self.events.model.emit()
        self._autosave()

    def model_autosave_path(self) -> Path | None:
        if self.autosave_path is None:
            return None
        name = self.autosave_path.name
        stem = name[: -len(AUTOSAVE_SUFFIX)] if name.endswith(AUTOSAVE_SUFFIX) else self.autosave_path.stem
        return self.autosave_path.with_name(stem + MODEL_SUFFIX)

    def _save_model(self, ckpt) -> None:
        target = self.model_autosave_path()
        if target is None or not self.autosave_enabled or not hasattr(ckpt, "to_payload"):
            return
        from ..core.model import save_checkpoint

        try:
            save_checkpoint(ckpt, target)
            self.model_path = target
        except OSError as e:
            self.last_autosave_error = f"{target}: cannot save the model ({e.strerror or e})"
            notify(self.last_autosave_error + "; save it with Save model... before closing napari", "warning")

    # ------------------------------------------------------------------ autosave
    def annotation_payload(self) -> dict:
        picks = self.annotations(include_rejected=True)
        t = picks.table
        p = self.predictions(shown_only=False).table
        return {
            "format": AUTOSAVE_FORMAT,
            "version": 1,
            "tomogram": self.tomogram_name,
            "tomogram_path": str(self.tomogram.path) if self.tomogram is not None and self.tomogram.path else None,
            "voxel_size": self.voxel_size,
            "shape": list(self.tomogram.shape) if self.tomogram is not None else None,
            "classes": self.classes.to_dict(),
            "active_class": self.active_class,
            "thresholds": dict(self.thresholds),
            "picks": {
                "z": t["z"].round(3).tolist(), "y": t["y"].round(3).tolist(), "x": t["x"].round(3).tolist(),
                "class_name": t["class_name"].tolist(), "score": t["score"].round(5).tolist(),
                "source": t["source"].tolist(),
            },
            # the model's picks and the model itself, so that a restart loses neither
            "predictions": {
                "z": p["z"].round(3).tolist(), "y": p["y"].round(3).tolist(), "x": p["x"].round(3).tolist(),
                "class_name": p["class_name"].tolist(), "score": p["score"].round(5).tolist(),
            },
            "model": str(self.model_path) if self.model_path is not None else None,
        }

    def save_annotations(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write the annotations (and class table) atomically; returns the file or None."""
        target = Path(path) if path is not None else self.autosave_path
        if target is None or self.tomogram is None:
            return None
        payload = self.annotation_payload()
        if path is None:
            self._backup_before_shrinking(target, len(payload["picks"]["z"]))
        try:
            return write_json_atomic(target, payload)
        except OSError as e:
            if path is not None:
                raise CryoPickerError(f"{target}: cannot save annotations ({e.strerror or e})") from None
            fb = fallback_autosave_path(self.tomogram)
            if fb is None or fb == target:
                self.last_autosave_error = f"{target}: cannot autosave ({e.strerror or e})"
                return None
            self.autosave_path = fb
            self.last_autosave_error = (
                f"{target.parent} is not writable; annotations are autosaved to {fb} instead"
            )
            notify(self.last_autosave_error, "warning")
            return write_json_atomic(fb, payload)

    def _backup_before_shrinking(self, target: Path, n_new: int) -> None:
        """Before an autosave that holds fewer picks than the file it replaces, keep that
        file as ``<name>.bak`` (one generation), so no deletion is beyond recovery."""
        n_old = self._saved_counts.get(target)
        if n_old is None and target.exists():
            with contextlib.suppress(CryoPickerError):
                n_old = len(read_annotation_file(target)["picks"].get("z", []))
        if n_old is not None and n_new < n_old:
            try:
                write_bytes_atomic(backup_path(target), target.read_bytes())
            except OSError as e:
                log.warning("could not keep a backup of %s: %s", target, e)
        self._saved_counts[target] = n_new

    def _autosave(self) -> None:
        if self.autosave_enabled and self.tomogram is not None and self.autosave_path is not None:
            try:
                self.save_annotations()
            except Exception as e:  # never break an edit because the disk is full
                self.last_autosave_error = str(e)
                log.warning("autosave failed: %s", e)

    def load_annotations(self, path: str | os.PathLike) -> int:
        """Add the picks of a saved annotation file (undoable); returns how many."""
        payload = read_annotation_file(path)
        return self._load_payload(payload, undoable=True)

    def _restore_annotations(self) -> None:
        payload = None
        tomo = self.tomogram
        assert tomo is not None
        candidates = [self.autosave_path, fallback_autosave_path(tomo)]
        for cand in candidates:
            if cand is not None and cand.exists():
                try:
                    payload = read_annotation_file(cand)
                    self.autosave_path = cand
                    break
                except CryoPickerError as e:
                    # keep the damaged file (the next autosave would overwrite it) and say where
                    kept = set_aside(cand)
                    where = f"; it was kept as {kept.name}" if kept is not None else ""
                    notify(f"Ignoring autosaved annotations: {e}{where}", "warning")
        if payload is None:
            payload = self._memory.pop(tomo.name, None)
        if payload is not None:
            n = self._load_payload(payload, undoable=False)
            if n:
                notify(f"Restored {n} saved pick(s) for {tomo.name}", "info")

    def _load_payload(self, payload: dict, *, undoable: bool) -> int:
        tomo = self._require_tomogram()
        self.ensure_classes(ClassTable.from_dict(payload.get("classes") or []))
        for k, v in (payload.get("thresholds") or {}).items():
            if k in self.classes:
                self.thresholds[k] = float(v)
        p = payload.get("picks") or {}
        df = pd.DataFrame({k: p.get(k, []) for k in ("z", "y", "x", "class_name", "score", "source")})
        picks = Picks(df, payload.get("voxel_size"))
        if picks.voxel_size is not None and tomo.voxel_size and not np.isclose(picks.voxel_size, tomo.voxel_size):
            if len(picks):
                notify(f"The saved picks were made at {picks.voxel_size:.4g} A per voxel; they were rescaled to "
                        f"{tomo.name}'s {tomo.voxel_size:.4g} A voxels", "warning")
            picks = picks.rescaled(tomo.voxel_size)
        active = payload.get("active_class")
        if active in self.classes:
            self.active_class = active
            self.events.active_class.emit(active)
        if not len(picks):
            if not undoable:
                self._restore_predictions(payload)
                self._restore_model(payload)
            return 0
        self.ensure_classes([ParticleClass(n, 10.0) for n in picks.class_names if n not in self.classes])
        new: dict[Key, State] = {}
        for name in picks.class_names:
            sub = picks.select(class_name=name)
            neg = sub.select(source="rejected")
            pos = sub.exclude_source("rejected")
            if len(pos):
                key = Key("picks", name)
                cur = new.get(key, self._state(key))
                new[key] = State(np.vstack([cur.data, pos.zyx]),
                                 pd.concat([cur.features, features_frame(pos)[["class", "score", "source"]]],
                                           ignore_index=True))
            if len(neg):
                cur = new.get(REJECTED, self._state(REJECTED))
                new[REJECTED] = State(np.vstack([cur.data, neg.zyx]),
                                      pd.concat([cur.features, features_frame(neg)[["class", "score", "source"]]],
                                                ignore_index=True))
        if undoable:
            self._edit(f"load {len(picks)} pick(s)", new)
        else:
            for key, state in new.items():
                if key.kind == "rejected":
                    # negatives are remembered without creating a layer
                    self._committed[key] = state
                else:
                    self._set_state(key, state)
            self._restore_predictions(payload)
            self._restore_model(payload)
            self.events.picks.emit()
        return len(picks)

    def _restore_predictions(self, payload: dict) -> None:
        p = payload.get("predictions") or {}
        if not isinstance(p, dict) or not p.get("z"):
            return
        df = pd.DataFrame({k: p.get(k, []) for k in ("z", "y", "x", "class_name", "score")})
        df["source"] = "predicted"
        preds = Picks(df, payload.get("voxel_size"))
        tomo = self._require_tomogram()
        if preds.voxel_size is not None and tomo.voxel_size and not np.isclose(preds.voxel_size, tomo.voxel_size):
            preds = preds.rescaled(tomo.voxel_size)
        self.ensure_classes([ParticleClass(n, 10.0) for n in preds.class_names if n not in self.classes])
        for name in preds.class_names:
            sub = preds.select(class_name=name)
            self._set_state(Key("predicted", name), State(sub.zyx, features_frame(sub)[["class", "score", "source"]]))

    def _restore_model(self, payload: dict) -> None:
        """Load the session's model in the background, unless one is in use already."""
        path = payload.get("model")
        if not path or self.checkpoint is not None:
            return
        p = Path(path)
        if not p.is_absolute() and self.autosave_path is not None:
            p = self.autosave_path.parent / p
        if not p.exists():
            notify(f"The model saved with these annotations ({p}) is missing; train again or load a model",
                    "warning")
            return
        from .workers import runs_for

        with contextlib.suppress(CryoPickerError):
            runs_for(self)["model"].start(p)

    # ------------------------------------------------------------------ keys
    def _make_key_handlers(self) -> None:
        ref = weakref.ref(self)

        def number(k):
            def _select(viewer=None):
                s = ref()
                if s is not None:
                    s.select_class_number(k)
            _select.__name__ = f"cryopicker_class_{k}"
            _select.__doc__ = f"CryoPicker: make class {k} the active class"
            return _select

        def _undo(viewer=None):
            s = ref()
            if s is not None:
                s.undo()

        def _redo(viewer=None):
            s = ref()
            if s is not None:
                s.redo()

        self._key_handlers = {str(k): number(k) for k in range(1, 10)}
        self._key_handlers["Control-Z"] = _undo
        self._key_handlers["Control-Shift-Z"] = _redo
        self._key_handlers["Control-Y"] = _redo

    def claim_keys(self, owner: object) -> None:
        """The class-number and undo keys work viewer-wide while a panel (``owner``) is open:
        bound when the first one opens, given back to what they did before when the last
        one closes (:meth:`release_keys`), as napari-threedee's annotators do. The
        session's own layers keep them in any case (:meth:`_bind_layer_keys`)."""
        first = not self._key_owners
        self._key_owners.add(id(owner))
        if not first:
            return
        for key, fn in self._key_handlers.items():
            with contextlib.suppress(Exception):
                self._previous_keys[key] = self.viewer.bind_key(key, fn, overwrite=True)

    def release_keys(self, owner_id: int) -> None:
        self._key_owners.discard(owner_id)
        if self._key_owners or self._viewer_ref() is None:
            return
        for key, fn in self._key_handlers.items():
            with contextlib.suppress(Exception):
                if bound_to(self.viewer, key) is fn:  # unless something else took the key since
                    self.viewer.bind_key(key, self._previous_keys.get(key), overwrite=True)
        self._previous_keys.clear()

    def _bind_layer_keys(self, layer) -> None:
        """Number keys on our layers too (the active layer's keymap wins over the viewer's).

        This replaces napari's number shortcuts on the session's layers (Points: 1 delete,
        2-5 modes; Image: 1-2 modes); P / S / Z and Delete / Backspace still switch to add /
        select / pan-zoom mode and delete.
        """
        for key, fn in self._key_handlers.items():
            with contextlib.suppress(Exception):
                layer.bind_key(key, (lambda f: (lambda _layer=None: f()))(fn), overwrite=True)


def bound_to(viewer, key: str):
    """The function bound to ``key`` on the viewer (napari normalises key names)."""
    from napari.utils.key_bindings import coerce_keybinding

    with contextlib.suppress(Exception):
        return viewer.keymap.get(coerce_keybinding(key))
    return None


# ----------------------------------------------------------------------------- registry
_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_session(viewer: napari.Viewer, *, create: bool = True) -> PickingSession | None:
    """The one session of ``viewer`` (created on first use, shared by all widgets)."""
    s = _SESSIONS.get(viewer)
    if s is None and create:
        s = PickingSession(viewer)
        _SESSIONS[viewer] = s
        ref = weakref.ref(s)

        def _closing(*_):  # stop background work when the window goes
            sess = ref()
            if sess is not None:
                sess.stop_all()

        with contextlib.suppress(Exception):
            viewer.window._qt_window.destroyed.connect(_closing)
        # adopt a tomogram that is already open
        if s.image_layer is None:
            layers = s.image_layers()
            if layers:
                with contextlib.suppress(CryoPickerError):
                    s.set_tomogram(layers[0])
    return s
