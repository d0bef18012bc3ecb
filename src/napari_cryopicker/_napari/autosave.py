"""Saving a picking session: the annotation file beside the tomogram (written atomically
after every edit, restored when the tomogram is opened again) and the session's model."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..core.annotations import (
    AUTOSAVE_SUFFIX,
    backup_path,
    fallback_autosave_path,
    read_annotation_file,
    set_aside,
    write_bytes_atomic,
    write_json_atomic,
)
from ..core.errors import CryoPickerError
from .messages import notify

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Checkpoint

log = logging.getLogger(__name__)

MODEL_SUFFIX = ".cryopicker.pt"  # the model trained in a session, beside its annotations
SET_ASIDE_SUFFIX = ".cryopicker.set-aside.pt"  # a model a stopped run did not keep (or replaced)


class SessionFiles:
    """Mixin of :class:`~.session.PickingSession`: autosave, restore, the model file."""

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

    def set_model_aside(self, ckpt: Checkpoint, came_from: Path | None = None) -> Path | None:
        """Keep ``ckpt``, a model the session does not use (any more), on disk so it can be
        loaded back (Load model...): the file it ``came_from`` if that is a file of its own
        (not the session's model file, which the next model overwrites), else
        ``<tomogram>.cryopicker.set-aside.pt``. Returns the file (None if there is nowhere
        to write, with a warning if writing failed)."""
        target = self.model_autosave_path()
        if came_from is not None and Path(came_from) != target and Path(came_from).is_file():
            return Path(came_from)
        if target is None or not self.autosave_enabled or not hasattr(ckpt, "to_payload"):
            return None
        target = target.with_name(target.name[: -len(MODEL_SUFFIX)] + SET_ASIDE_SUFFIX)
        from ..core.model import save_checkpoint

        try:
            return save_checkpoint(ckpt, target)
        except OSError as e:
            notify(f"{target}: cannot save the model set aside ({e.strerror or e})", "warning")
            return None

    # ------------------------------------------------------------------ saving
    def annotation_payload(self) -> dict:
        payload = self.store.payload()
        tomo = self.tomogram
        payload["tomogram_path"] = str(tomo.path) if tomo is not None and tomo.path else None
        payload["shape"] = list(tomo.shape) if tomo is not None else None
        payload["level"] = int(self.level)  # of a multiscale tomogram: opened there again
        # the model's picks (in the payload already) and the model, so a restart loses neither
        payload["model"] = str(self.model_path) if self.model_path is not None else None
        return payload

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
            self.last_autosave_error = f"{target.parent} is not writable; annotations are autosaved to {fb} instead"
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

    def _stash_current(self) -> None:
        if self.tomogram is None:
            return
        if self.autosave_path is not None:
            self.save_annotations()
        else:
            self._memory[self.tomogram_name] = self.annotation_payload()

    # ------------------------------------------------------------------ loading
    def load_annotations(self, path: str | os.PathLike) -> int:
        """Add the picks of a saved annotation file (undoable); returns how many."""
        self._require_tomogram()
        return self.store.load(read_annotation_file(path), undoable=True)

    def _restore_annotations(self) -> None:
        payload = None
        tomo = self.tomogram
        assert tomo is not None
        for cand in (self.autosave_path, fallback_autosave_path(tomo)):
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
            n = self.store.load(payload, undoable=False)
            self._restore_model(payload)
            self.events.picks.emit()
            if n:
                notify(f"Restored {n} saved pick(s) for {tomo.name}", "info")

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
