"""Keys of a picking session: 1-9 choose the active class, Ctrl+Z / Ctrl+Shift+Z (or
Ctrl+Y) undo and redo. Bound viewer-wide only while a panel is open, as napari-threedee's
annotators do, and on the session's own layers."""

from __future__ import annotations

import contextlib
import weakref
from typing import Any


def bound_to(viewer, key: str):
    """The function bound to ``key`` on the viewer (napari normalises key names)."""
    from napari.utils.key_bindings import coerce_keybinding

    with contextlib.suppress(Exception):
        return viewer.keymap.get(coerce_keybinding(key))
    return None


class SessionKeys:
    """Mixin of :class:`~.session.PickingSession`: its key handlers and their binding."""

    _key_owners: set[int]
    _previous_keys: dict[str, Any]

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
        self._key_owners = set()  # the panels in use (see claim_keys)
        self._previous_keys = {}

    def claim_keys(self, owner: object) -> None:
        """The class-number and undo keys work viewer-wide while a panel (``owner``) is open:
        bound when the first one opens, given back to what they did before when the last
        one closes (:meth:`release_keys`). The session's own layers keep them in any case
        (:meth:`_bind_layer_keys`)."""
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
