"""The binding between a session's :class:`~..core.store.AnnotationStore` and napari
Points layers: one layer per store key, made when first needed.

A click in napari goes down: the layer's data event becomes an :class:`Edit` the store
records (the layer already shows it). What the store sets itself (an edit from a panel,
undo, redo, a restore) comes back up as its ``shown`` event, and is applied to the layers
here with their events muted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..core.classes import ParticleClass
from ..core.errors import CryoPickerError
from ..core.picks import Picks
from ..core.store import REJECTED, Edit, Key, State
from .convert import (
    META,
    class_from_name,
    cp_meta,
    empty_features,
    feature_defaults,
    features_frame,
    picks_from_layer,
    points_layer_kwargs,
    score_colormap,
)
from .messages import notify

if TYPE_CHECKING:  # pragma: no cover
    from napari.layers import Points

    from ..core.tomogram import Tomogram

log = logging.getLogger(__name__)

REJECTED_COLOUR = "#ff4d4d"  # rejected predictions: a red x, plainly visible when shown


def state_of(layer: Points) -> State:
    """A snapshot of a Points layer."""
    return State(np.array(layer.data, dtype=float, copy=True).reshape(-1, 3),
                 layer.features.copy().reset_index(drop=True))


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


class LayerBinding:
    """Mixin of :class:`~.session.PickingSession`: the store's sets as Points layers."""

    _layers: dict[Key, Points]
    _callbacks: dict[Key, Callable]

    # ------------------------------------------------------------------ store -> layers
    def _on_store_shown(self, states: dict, make_rejected: bool) -> None:
        """Display states the store set (muted: they are no user edit)."""
        if self.tomogram is None:
            return
        for key, state in states.items():
            if key == REJECTED and not make_rejected and self.layer_for(key, create=False) is None:
                continue  # negatives are remembered without a layer
            layer = self.layer_for(key)
            with self._muted():
                self._apply_state(key, layer, state)

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
        layer = self._new_layer(key, self.store.state(key), tomo)
        with self._muted():
            self.viewer.layers.append(layer)
        self._track(key, layer)
        if key == REJECTED:
            layer.visible = False
        return layer

    def _style(self, key: Key) -> tuple[str, float]:
        if key.kind == "rejected":
            return REJECTED_COLOUR, max(self.classes.diameters, default=10.0)
        c = self.classes[key.class_name]
        return c.colour, c.diameter

    def _new_layer(self, key: Key, state: State, tomo: Tomogram) -> Points:
        from napari.layers import Points

        colour, diameter = self._style(key)
        kw = points_layer_kwargs(
            Picks(voxel_size=tomo.voxel_size), kind=key.kind, class_name=key.class_name or "",
            colour=colour, diameter=diameter, scale=self.scale, tomogram=tomo.name,
            shape=tomo.shape, name=key.name, source=key.default_source,
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

    def _defaults(self, key: Key) -> dict:
        return {"class": key.class_name or "", "score": 1.0, "source": key.default_source}

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

    def _apply_threshold(self, class_name: str | None, layer: Points) -> None:
        if len(layer.data):
            layer.shown = self.store.shown_mask(class_name, State(np.asarray(layer.data), layer.features))

    def _on_threshold(self, class_name: str) -> None:
        layer = self._layers.get(Key("predicted", class_name))
        if layer is not None and layer in self.viewer.layers:
            with self._muted():
                self._apply_threshold(class_name, layer)
                layer.selected_data = {i for i in layer.selected_data if layer.shown[i]}
        self.events.picks.emit()

    def _track(self, key: Key, layer: Points) -> None:
        self._layers[key] = layer
        self.store.put(key, state_of(layer))
        cb = partial(self._on_layer_data, key)
        self._callbacks[key] = cb
        layer.events.data.connect(cb)

    def _untrack(self, key: Key) -> None:
        layer = self._layers.pop(key, None)
        cb = self._callbacks.pop(key, None)
        if layer is not None and cb is not None:
            with contextlib.suppress(Exception):
                layer.events.data.disconnect(cb)

    def _drop_session_layers(self) -> None:
        with self._muted():
            for key in list(self._layers):
                layer = self._layers[key]
                self._untrack(key)
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)

    def _drop_class_layers(self, name: str) -> None:
        with self._muted():
            for key in [k for k in self._layers if k.class_name == name]:
                layer = self._layers[key]
                self._untrack(key)
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)

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
        merged = self.store.state(key).plus(picks.zyx, features_frame(picks))
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

    # ------------------------------------------------------------------ viewer -> store
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
            self.store.set_active_class(key.class_name)

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
                self.store.reset()
                self.events.tomogram.emit()
                self.events.picks.emit()
                self.events.history.emit()
            return
        key = self._key_of(layer)
        if key is None or self._mute:
            return
        before = self.store.state(key) if key in self.store else state_of(layer)
        self._untrack(key)
        if len(before):
            # removing a layer deletes its picks: undoable like any other deletion, but
            # autosaved only once napari is back in its event loop and the tomogram is
            # still there (Viewer.close() removes the picks layers first, then the tomogram)
            edit = Edit(f"remove layer {key.name}", [(key, before, State.empty())])
            self.store.record(edit, save=False)
            self._pending_removals.append(edit)
            _call_soon(self._flush_pending_removals)
        else:
            self.store.put(key, State.empty())

    def _revert_pending_removals(self) -> None:
        """Forget layer removals that were part of a teardown: their picks stay saved."""
        while self._pending_removals:
            self.store.forget(self._pending_removals.pop())

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
        before = self.store.state(key)
        after = state_of(layer)
        if action == "added" and key.kind == "picks":
            after = self._fix_new_features(key, layer, before, after)
        edit = Edit({"added": "add", "removed": "delete", "changed": "move"}[action] + f" in {key.name}",
                    [(key, before, after)])
        show = ()
        if action == "removed" and key.kind == "predicted":
            idx = [i if i >= 0 else len(before) + i for i in getattr(event, "data_indices", ())]
            idx = [i for i in idx if 0 <= i < len(before)]
            if idx:
                edit.changes.append(self.store.rejection_of(before, idx))
                edit.label = f"reject {len(idx)} prediction(s) of {key.class_name}"
                show = (REJECTED,)
        self.store.record(edit, show=show)

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
        return State(after.data, pd.DataFrame(f).copy())
