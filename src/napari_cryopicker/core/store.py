"""The annotation store of one tomogram: picks, predictions, rejections, undo and counts.

Pure Python (numpy, pandas, psygnal): no Qt, no napari, so it is tested without a viewer.
The napari layer (``_napari/session.py``) binds it to Points layers: a click in napari
comes down as :meth:`AnnotationStore.record` (the layer already shows it), an action of
a panel calls a method here, and every state the store sets itself (an edit, undo, redo, a
restore) goes back up as the ``shown`` event for the binding to display.

The store keeps one :class:`State` (coordinates and per-point features) per :class:`Key`:

* ``Key("picks", c)``      the training set of class ``c``: manual, accepted, imported
* ``Key("predicted", c)``  the model's picks of ``c``, shown above the class's threshold
* ``REJECTED``             deleted predictions, kept as explicit background for retraining

Coordinates are voxels (z, y, x) of the tomogram at ``voxel_size``. The keys, states and
edits are in :mod:`.store_state`; the predictions, thresholds, accept and reject in
:mod:`.store_predictions`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from psygnal import Signal, SignalGroup

from .annotations import ANNOTATION_SOURCES, AUTOSAVE_FORMAT, payload_picks, payload_predictions
from .classes import ClassTable, ParticleClass
from .errors import CryoPickerError
from .picks import Picks
from .store_predictions import StorePredictions

from .store_state import (  # the sets and undo steps (re-exported: __all__)
    FEATURES,
    REJECTED,
    Edit,
    Key,
    State,
    _parts,
    empty_features,
    features_frame,
)

__all__ = [
    "FEATURES", "MAX_UNDO", "REJECTED", "AnnotationStore", "Edit", "Key", "State", "StoreEvents",
    "empty_features", "features_frame",
]

MAX_UNDO = 200


class StoreEvents(SignalGroup):
    shown = Signal(object, bool)    # {Key: State} the store set: display it; bool: a rejected layer may be made
    changed = Signal(bool)          # an edit, undo or redo happened; bool: autosave it
    classes = Signal()              # the class table changed (a class was added or removed)
    active_class = Signal(object)   # the new active class name (or None)
    threshold = Signal(str)         # a class's score threshold changed
    message = Signal(str, str)      # text, level ("info" / "warning"): something the user should know


class AnnotationStore(StorePredictions):
    """Picks, predictions and rejections of one tomogram, with undo and redo."""

    def __init__(self, classes: ClassTable | None = None):
        self.events = StoreEvents()
        self.classes = classes if classes is not None else ClassTable([])
        self.active_class: str | None = None
        self.thresholds: dict[str, float] = {}
        self.default_threshold = 0.0
        self.tomogram_name = ""
        self.voxel_size: float | None = None
        self.last_skipped = 0  # predictions left out by the last set_predictions (already known)
        self._states: dict[Key, State] = {}
        self._undo: list[Edit] = []
        self._redo: list[Edit] = []

    # ------------------------------------------------------------------ tomogram
    def reset(self, tomogram_name: str = "", voxel_size: float | None = None) -> None:
        """Forget every point and the history (another tomogram); the classes stay."""
        self._states.clear()
        self.clear_history()
        self.tomogram_name = tomogram_name
        self.voxel_size = voxel_size

    # ------------------------------------------------------------------ classes
    def add_class(self, name: str, diameter: float, colour: str = "") -> ParticleClass:
        """Add a class (ValueError if the name is taken); the first becomes the active one."""
        c = self.classes.add(name, diameter, colour)
        self.thresholds.setdefault(c.name, self.default_threshold)
        if self.active_class is None:
            self.set_active_class(c.name)
        self.events.classes.emit()
        return c

    def ensure_classes(self, table: ClassTable | Iterable[ParticleClass]) -> bool:
        """Add the classes of ``table`` the store does not know yet; True if any was."""
        changed = False
        for c in table:
            if c.name not in self.classes:
                self.classes.add(c.name, c.diameter, c.colour)
                self.thresholds.setdefault(c.name, self.default_threshold)
                changed = True
        if changed:
            if self.active_class is None and len(self.classes):
                self.set_active_class(self.classes.names[0])
            self.events.classes.emit()
        return changed

    def set_active_class(self, name: str | None) -> None:
        if name is not None and name not in self.classes:
            raise CryoPickerError(f"unknown class {name!r}")
        self.active_class = name
        self.events.active_class.emit(name)

    def remove_class(self, name: str) -> None:
        """Remove a class with no picks; its predictions go, and so does the history."""
        if name not in self.classes:
            raise CryoPickerError(f"unknown class {name!r}")
        n = self.counts().get(name, {}).get("annotated", 0)
        if n:
            raise CryoPickerError(f"class {name!r} still has {n} pick(s); delete them first "
                                  f"(select them in 'picks: {name}' and press Delete)")
        for key in [k for k in self._states if k.class_name == name]:
            del self._states[key]
        self.classes.classes = [c for c in self.classes if c.name != name]
        self.thresholds.pop(name, None)
        self.clear_history()  # older edits may refer to the removed class
        if self.active_class == name:
            self.set_active_class(self.classes.names[0] if len(self.classes) else None)
        self.events.classes.emit()

    def _ensure_named(self, names: Iterable[str]) -> None:
        self.ensure_classes([ParticleClass(n, 10.0) for n in names if n not in self.classes])

    # ------------------------------------------------------------------ states
    def state(self, key: Key) -> State:
        return self._states.get(key, State.empty())

    def states(self) -> dict[Key, State]:
        """Every set's state (a shallow copy of the mapping)."""
        return dict(self._states)

    def put(self, key: Key, state: State) -> None:
        """Set a state without an undo step or an event (the binding took a layer over)."""
        self._states[key] = state

    def __contains__(self, key: Key) -> bool:
        return key in self._states

    # ------------------------------------------------------------------ edits / undo
    def record(self, edit: Edit, *, show: Iterable[Key] = (), save: bool = True) -> None:
        """Commit ``edit`` (a layer already shows its after-states, but for ``show``)."""
        for key, _before, after in edit.changes:
            self._states[key] = after
        show = set(show)
        if show:
            self.events.shown.emit({k: self._states[k] for k in show}, True)
        self._undo.append(edit)
        del self._undo[:-MAX_UNDO]
        self._redo.clear()
        self.events.changed.emit(save)

    def edit(self, label: str, new_states: dict[Key, State]) -> Edit:
        """Set states as one undoable step, and show them."""
        edit = Edit(label, [(k, self.state(k), s) for k, s in new_states.items()])
        self.record(edit, show=new_states)
        return edit

    def forget(self, edit: Edit) -> None:
        """Take back a recorded edit without a trace (a teardown that was not the user's)."""
        for key, before, _after in edit.changes:
            self._states[key] = before
        if edit in self._undo:
            self._undo.remove(edit)

    def clear_history(self) -> None:
        self._undo.clear()
        self._redo.clear()

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

    @property
    def n_undo(self) -> int:
        return len(self._undo)

    def undo(self) -> bool:
        if not self._undo:
            return False
        edit = self._undo.pop()
        self._set({k: b for k, b, _a in reversed(edit.changes)})
        self._redo.append(edit)
        self.events.changed.emit(True)
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        edit = self._redo.pop()
        self._set({k: a for k, _b, a in edit.changes})
        self._undo.append(edit)
        self.events.changed.emit(True)
        return True

    def _set(self, states: dict[Key, State], *, make_rejected: bool = True) -> None:
        self._states.update(states)
        self.events.shown.emit(dict(states), make_rejected)

    # ------------------------------------------------------------------ picks
    def _to_voxels(self, picks: Picks, what: str = "picks") -> Picks:
        if picks.voxel_size is None:
            picks = picks.copy()
            picks.voxel_size = self.voxel_size
        elif self.voxel_size and not np.isclose(picks.voxel_size, self.voxel_size):
            if len(picks):
                self.events.message.emit(
                    f"The {what} were made at {picks.voxel_size:.4g} A per voxel; they were rescaled to "
                    f"{self.tomogram_name}'s {self.voxel_size:.4g} A voxels", "warning")
            picks = picks.rescaled(self.voxel_size)
        return picks

    def add_picks(self, picks: Picks, *, label: str | None = None, source: str | None = None) -> int:
        """Add picks (voxels of the tomogram; any other voxel size is rescaled) to the training set."""
        if not len(picks):
            return 0
        if picks.voxel_size is not None and self.voxel_size and not np.isclose(picks.voxel_size, self.voxel_size):
            picks = picks.rescaled(self.voxel_size)
        picks = picks.copy()
        if source is not None:
            picks.table["source"] = source
        picks.table.loc[~picks.table["source"].isin(ANNOTATION_SOURCES), "source"] = "manual"
        self._ensure_named(picks.class_names)
        new = {}
        for name in picks.class_names:
            key = Key("picks", name)
            new[key] = self.state(key).plus(*_parts(picks.select(class_name=name)))
        self.edit(label or f"add {len(picks)} pick(s)", new)
        return len(picks)

    def add_pick(self, zyx: Sequence[float], class_name: str | None = None, *, source: str = "manual",
                 score: float = 1.0) -> None:
        """Add one pick at voxel (z, y, x) to ``class_name`` (default: the active class)."""
        name = class_name or self.active_class
        if name is None:
            raise CryoPickerError("add a particle class first (name and diameter)")
        self.add_picks(Picks.from_zyx([zyx], class_name=name, score=score, source=source,
                                      tomogram=self.tomogram_name, voxel_size=self.voxel_size), label=f"add {name}")

    def import_picks(self, picks: Picks) -> int:
        """Add picks read from a file (source ``imported``); a file of several tomograms
        gives only this tomogram's."""
        names = [t for t in picks.tomograms if t]
        if len(names) > 1:
            if self.tomogram_name not in names:
                raise CryoPickerError(
                    f"the file holds picks of {len(names)} tomograms ({', '.join(names[:5])}), none named "
                    f"{self.tomogram_name!r}; split it or rename the tomogram")
            picks = picks.select(tomogram=self.tomogram_name)
        picks = self._to_voxels(picks)
        return self.add_picks(picks, source="imported", label=f"import {len(picks)} pick(s)")

    def delete_picks(self, class_name: str, indices: Iterable[int], *, kind: str = "picks") -> int:
        """Delete points of one set; deleted predictions become rejections."""
        key = Key(kind, class_name)
        cur = self.state(key)
        idx = sorted({int(i) for i in indices if 0 <= int(i) < len(cur)})
        if not idx:
            return 0
        new = {key: cur.without(idx)}
        label = f"delete {len(idx)} {class_name}"
        if kind == "predicted":
            new[REJECTED] = self.rejection_of(cur, idx)[2]
            label = f"reject {len(idx)} prediction(s) of {class_name}"
        self.edit(label, new)
        return len(idx)

    def move_pick(self, class_name: str, index: int, zyx: Sequence[float]) -> None:
        key = Key("picks", class_name)
        cur = self.state(key)
        data = cur.data.copy()
        data[int(index)] = np.asarray(zyx, dtype=float)
        self.edit(f"move {class_name}", {key: State(data, cur.features.copy())})

    # ------------------------------------------------------------------ reading
    def picks_of(self, key: Key, state: State | None = None, mask: np.ndarray | None = None) -> Picks:
        state = self.state(key) if state is None else state
        n = len(state)
        f = state.features
        whole = len(f) == n
        cls = f["class"].astype(str).tolist() if "class" in f and whole else [key.class_name or ""] * n
        if key.class_name is not None:
            cls = [key.class_name] * n
        score = f["score"].astype(float).tolist() if "score" in f and whole else [1.0] * n
        source = f["source"].astype(str).tolist() if "source" in f and whole else [key.default_source] * n
        if key.kind != "picks":
            source = [key.default_source] * n
        p = Picks.from_zyx(state.data.reshape(-1, 3), class_name=cls, score=score, source=source,
                           tomogram=self.tomogram_name, voxel_size=self.voxel_size)
        return p if mask is None else p.subset(mask)

    def _concat(self, parts: list[Picks]) -> Picks:
        out = Picks.concat(parts)
        if out.voxel_size is None:
            out.voxel_size = self.voxel_size
        return out

    def annotations(self, *, include_rejected: bool = False) -> Picks:
        """The training set as canonical picks (with the rejections, if asked)."""
        return self._concat([self.picks_of(k, s) for k, s in self._states.items()
                             if k.kind == "picks" or (include_rejected and k.kind == "rejected")])

    def rejected(self) -> Picks:
        return self.picks_of(REJECTED)

    def predictions(self, *, shown_only: bool = True) -> Picks:
        return self._concat([self.picks_of(k, s, self.shown_mask(k.class_name, s) if shown_only else None)
                             for k, s in self._states.items() if k.kind == "predicted"])

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
        out = {name: {"annotated": 0, "manual": 0, "accepted": 0, "imported": 0,
                      "predicted": 0, "predicted_total": 0, "rejected": 0} for name in self.classes.names}
        for key, state in self._states.items():
            d = out.get(key.class_name or "")
            if d is None:
                continue
            if key.kind == "picks":
                d["annotated"] = len(state)
                src = state.features["source"].astype(str) if "source" in state.features else pd.Series([], dtype=str)
                for s in ("manual", "accepted", "imported"):
                    d[s] = int((src == s).sum())
            elif key.kind == "predicted":
                d["predicted_total"] = len(state)
                d["predicted"] = int(self.shown_mask(key.class_name, state).sum())
        rej = self.state(REJECTED)
        if len(rej) and "class" in rej.features:
            for name, n in rej.features["class"].astype(str).value_counts().items():
                if name in out:
                    out[name]["rejected"] = int(n)
        return out

    # ------------------------------------------------------------------ the session file
    def payload(self) -> dict:
        """The store as an annotation payload (``core.annotations``): classes, active
        class, thresholds, picks with rejections, predictions. The caller adds where the
        tomogram and the model are."""
        t = self.annotations(include_rejected=True).table
        p = self.predictions(shown_only=False).table
        return {
            "format": AUTOSAVE_FORMAT, "version": 1, "tomogram": self.tomogram_name,
            "voxel_size": self.voxel_size, "classes": self.classes.to_dict(),
            "active_class": self.active_class, "thresholds": dict(self.thresholds),
            "picks": {**{a: t[a].round(3).tolist() for a in ("z", "y", "x")},
                      "class_name": t["class_name"].tolist(), "score": t["score"].round(5).tolist(),
                      "source": t["source"].tolist()},
            "predictions": {**{a: p[a].round(3).tolist() for a in ("z", "y", "x")},
                            "class_name": p["class_name"].tolist(), "score": p["score"].round(5).tolist()},
        }

    def load(self, payload: dict, *, undoable: bool) -> int:
        """Add a payload's classes, thresholds and picks (and, unless ``undoable``, its
        predictions: a restore); returns how many picks. An undoable load is one step."""
        self.ensure_classes(ClassTable.from_dict(payload.get("classes") or []))
        for k, v in (payload.get("thresholds") or {}).items():
            if k in self.classes:
                self.thresholds[k] = float(v)
        picks = self._to_voxels(payload_picks(payload), "saved picks")
        if payload.get("active_class") in self.classes:
            self.set_active_class(payload["active_class"])
        self._ensure_named(picks.class_names)
        new: dict[Key, State] = {}
        for name in picks.class_names:
            sub = picks.select(class_name=name)
            for key, part in ((Key("picks", name), sub.exclude_source("rejected")),
                              (REJECTED, sub.select(source="rejected"))):
                if len(part):
                    new[key] = new.get(key, self.state(key)).plus(*_parts(part))
        if undoable:
            if new:
                self.edit(f"load {len(picks)} pick(s)", new)
            return len(picks)
        preds = payload_predictions(payload)
        if len(preds):
            preds = self._to_voxels(preds, "saved predictions")
            self._ensure_named(preds.class_names)
            for name in preds.class_names:
                new[Key("predicted", name)] = State.of_picks(preds.select(class_name=name))
        if new:
            self._set(new, make_rejected=False)  # negatives are remembered without a layer
        return len(picks)

