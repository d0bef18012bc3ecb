"""The picking session: one tomogram, its class table, annotation layers, undo and autosave.

This is the logic every dock widget is a thin view over. It talks to napari layers but not
to Qt widgets, so it is driven the same way by a click in the viewer, a button in a
widget, or a test. The state itself is the core's :class:`~..core.store.AnnotationStore`
(``session.store``): picks, predictions, rejections, thresholds, undo. The session binds
it to napari:

* ``binding.py``   the store <-> Points layers (one per class and kind), viewer events
* ``autosave.py``  the annotation file beside the tomogram, restore, the model file
* ``keys.py``      class-number and undo keys while a panel is open
* ``predictions.py`` the model's predictions: thresholds, accept and reject

Layers (one set per session tomogram, all sharing the tomogram's scale):

* ``picks: <class>``     the training set: manual, accepted and imported picks
* ``predicted: <class>`` the model's picks, filtered live by a per-class score threshold
  (``layer.shown``); deleting one remembers it as a negative
* ``rejected``           deleted predictions, kept as explicit background for retraining
  (hidden by default, drawn faintly when shown)

After each edit the annotations are saved atomically next to the tomogram
(``<stem>.cryopicker.json``) and restored when the tomogram is reopened.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psygnal import Signal, SignalGroup

from ..core.classes import ClassTable, ParticleClass
from ..core.errors import CryoPickerError
from ..core.picks import Picks
from ..core.store import REJECTED, AnnotationStore, Edit, Key, State
from ..core.tomogram import Tomogram
from .autosave import SessionFiles
from .binding import LayerBinding
from .convert import META, cp_meta, picks_from_layer
from .image import SessionTomogram, level_factors, n_levels, tomogram_from_layer
from .keys import SessionKeys
from .messages import notify
from .predictions import SessionPredictions

if TYPE_CHECKING:  # pragma: no cover
    import napari
    from napari.layers import Image, Points

    from ..core.model import Checkpoint

log = logging.getLogger(__name__)

__all__ = ["REJECTED", "Edit", "Key", "PickingSession", "State", "get_session", "overfitting_hint",
           "tomogram_from_layer", "level_factors", "n_levels"]


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
class PickingSession(SessionTomogram, LayerBinding, SessionFiles, SessionKeys, SessionPredictions):
    """Everything the picker knows about the tomogram being picked in one viewer."""

    def __init__(self, viewer: napari.Viewer, *, autosave: bool = True):
        # a weak reference: the registry keys sessions by viewer, so a strong one would
        # keep every closed viewer alive
        self._viewer_ref = weakref.ref(viewer)
        self.events = SessionEvents()
        self.store = AnnotationStore()
        st = self.store.events
        st.shown.connect(self._on_store_shown)
        st.changed.connect(self._on_store_changed)
        st.classes.connect(self._on_store_classes)
        st.active_class.connect(self.events.active_class.emit)
        st.threshold.connect(self._on_threshold)
        st.message.connect(notify)
        self.image_layer: Image | None = None
        self.level = 0  # the scale level of a multiscale tomogram the session works on
        self.tomogram: Tomogram | None = None
        self.checkpoint: Checkpoint | None = None
        self.model_path: Path | None = None
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
        self._callbacks: dict = {}
        self._mute = 0
        self._memory: dict[str, dict] = {}  # tomogram name -> annotations (no autosave path)
        self._busy: set[str] = set()
        # layer removals not yet autosaved: napari's Viewer.close() removes every layer
        # (picks first, the tomogram last); such an emptying must never reach the autosave
        self._pending_removals: list[Edit] = []
        self._saved_counts: dict[Path, int] = {}  # autosave file -> picks it holds
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        viewer.dims.events.ndisplay.connect(self._on_ndisplay)
        self._make_key_handlers()

    @property
    def viewer(self) -> napari.Viewer:
        v = self._viewer_ref()
        if v is None:
            raise CryoPickerError("the napari window of this session was closed")
        return v

    # ------------------------------------------------------------------ the store's state
    @property
    def classes(self) -> ClassTable:
        return self.store.classes

    @property
    def active_class(self) -> str | None:
        return self.store.active_class

    @property
    def thresholds(self) -> dict[str, float]:
        return self.store.thresholds

    @property
    def default_threshold(self) -> float:
        return self.store.default_threshold

    @default_threshold.setter
    def default_threshold(self, value: float) -> None:
        self.store.default_threshold = float(value)

    @property
    def last_skipped(self) -> int:
        return self.store.last_skipped

    def _on_store_changed(self, save: bool) -> None:
        if save:
            self._autosave()
        self.events.picks.emit()
        self.events.history.emit()

    def _on_store_classes(self) -> None:
        self._update_slice_thickness()
        self.events.classes.emit()

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

    # ------------------------------------------------------------------ classes
    def add_class(self, name: str, diameter: float, colour: str = "") -> ParticleClass:
        c = self.store.add_class(name, diameter, colour)
        self.events.picks.emit()
        self._autosave()
        return c

    def ensure_classes(self, table: ClassTable | Iterable[ParticleClass]) -> None:
        """Add the classes of ``table`` this session does not know yet."""
        self.store.ensure_classes(table)

    def remove_class(self, name: str) -> None:
        self.store.remove_class(name)  # raises while the class has picks
        self._drop_class_layers(name)
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
        if name is not None and activate_layer and self.tomogram is not None:
            self.store.active_class = name  # before the layer switch reports it
            layer = self.layer_for(Key("picks", name))
            self.viewer.layers.selection.active = layer
            with contextlib.suppress(Exception):
                layer.mode = "add" if self.viewer.dims.ndisplay == 2 else "pan_zoom"
        self.store.set_active_class(name)

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

    # ------------------------------------------------------------------ undo
    @property
    def can_undo(self) -> bool:
        return self.store.can_undo

    @property
    def can_redo(self) -> bool:
        return self.store.can_redo

    @property
    def undo_label(self) -> str:
        return self.store.undo_label

    @property
    def redo_label(self) -> str:
        return self.store.redo_label

    def undo(self) -> bool:
        return self.tomogram is not None and self.store.undo()

    def redo(self) -> bool:
        return self.tomogram is not None and self.store.redo()

    # ------------------------------------------------------------------ annotations
    def states(self) -> dict[Key, State]:
        """Every set's committed state (a shallow copy of the mapping)."""
        return self.store.states()

    def add_pick(self, zyx: Sequence[float], class_name: str | None = None, *, source: str = "manual",
                 score: float = 1.0) -> None:
        """Add one pick at voxel (z, y, x) to ``class_name`` (default: the active class)."""
        self._require_tomogram()
        self.store.add_pick(zyx, class_name, source=source, score=score)

    def add_picks(self, picks: Picks, *, label: str | None = None, source: str | None = None) -> int:
        """Add picks (voxel coordinates of the session tomogram) to the annotation layers."""
        self._require_tomogram()
        return self.store.add_picks(picks, label=label, source=source)

    def import_picks(self, picks: Picks) -> int:
        """Add picks read from a file (source ``imported``), rescaled to the tomogram."""
        self._require_tomogram()
        return self.store.import_picks(picks)

    def delete_picks(self, class_name: str, indices: Iterable[int], *, kind: str = "picks") -> int:
        return self.store.delete_picks(class_name, indices, kind=kind)

    def move_pick(self, class_name: str, index: int, zyx: Sequence[float]) -> None:
        self.store.move_pick(class_name, index, zyx)

    def annotations(self, *, include_rejected: bool = False) -> Picks:
        """The training set of the session tomogram as canonical picks."""
        return self.store.annotations(include_rejected=include_rejected)

    def rejected(self) -> Picks:
        return self.store.rejected()

    def predictions(self, *, shown_only: bool = True) -> Picks:
        return self.store.predictions(shown_only=shown_only)

    def training_picks(self) -> Picks:
        """Positives (manual, accepted, imported) plus rejected negatives."""
        return self.store.training_picks()

    def training_classes(self) -> ClassTable:
        """The classes that have at least one positive pick (training needs picks of each)."""
        return self.store.training_classes()

    def counts(self) -> dict[str, dict[str, int]]:
        """Per class: annotated (and its split by source), predicted shown/total, rejected."""
        return self.store.counts()

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
