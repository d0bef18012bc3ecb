"""The model's predictions in the annotation store: replacing them, the per-class score
thresholds that decide which are shown, and accepting or rejecting them (a mixin of
:class:`~.store.AnnotationStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .classes import ClassTable
from .errors import CryoPickerError
from .picks import Picks
from .store_state import FEATURES, REJECTED, Key, State

if TYPE_CHECKING:  # pragma: no cover
    from .store import StoreEvents


class StorePredictions:
    """Mixin of :class:`~.store.AnnotationStore`: its predictions, thresholds, accept and
    reject (through the store's ``state``, ``edit`` and ``training_picks``)."""

    events: StoreEvents
    classes: ClassTable
    thresholds: dict[str, float]
    default_threshold: float
    voxel_size: float | None
    last_skipped: int
    _states: dict[Key, State]

    # ------------------------------------------------------------------ predictions
    def set_predictions(self, picks: Picks, *, skip_known: bool = True) -> int:
        """Replace the predictions with ``picks`` (undoable); returns how many are kept.

        With ``skip_known``, predictions within one particle radius of a pick already in the
        training set (or of a rejected one) are left out: they need no decision again.
        """
        if picks.voxel_size is not None and self.voxel_size and not np.isclose(picks.voxel_size, self.voxel_size):
            picks = picks.rescaled(self.voxel_size)
        self._ensure_named(picks.class_names)
        picks = picks.copy()
        picks.table["source"] = "predicted"
        self.last_skipped = 0
        if skip_known and len(picks):
            from scipy.spatial import cKDTree

            known = self.training_picks()
            keep = np.ones(len(picks), dtype=bool)
            for name in picks.class_names:
                ref = known.select(class_name=name)
                if len(ref):
                    rows = np.flatnonzero((picks.table["class_name"] == name).to_numpy())
                    d, _ = cKDTree(ref.zyx).query(picks.zyx[rows], k=1)
                    keep[rows[d <= self.classes[name].radius]] = False
            self.last_skipped = int((~keep).sum())
            picks = picks.subset(keep)
        new = {}
        for name in self.classes.names:
            key = Key("predicted", name)
            sub = picks.select(class_name=name)
            if len(sub) or key in self._states:
                new[key] = State.of_picks(sub)
        self.edit(f"pick {len(picks)} particle(s)", new)
        return len(picks)

    def prediction_scores(self, class_name: str) -> np.ndarray:
        """Scores of every prediction of ``class_name`` (shown or below the threshold)."""
        state = self.state(Key("predicted", class_name))
        if not len(state) or "score" not in state.features:
            return np.zeros(0)
        return state.features["score"].to_numpy(dtype=float)

    def shown_mask(self, class_name: str | None, state: State | None = None) -> np.ndarray:
        """Which predictions of a class score at least its threshold."""
        state = self.state(Key("predicted", class_name)) if state is None else state
        t = self.thresholds.get(class_name or "", self.default_threshold)
        if not len(state):
            return np.zeros(0, dtype=bool)
        score = state.features["score"].to_numpy(dtype=float) if "score" in state.features else np.ones(len(state))
        return score >= t

    def set_threshold(self, class_name: str, value: float) -> None:
        """Show only predictions of ``class_name`` scoring >= ``value`` (no re-inference)."""
        self.thresholds[class_name] = float(value)
        self.events.threshold.emit(class_name)

    def _take(self, name: str, idx: Sequence[int], source: str):
        """Split one class's predictions: (remaining state, taken points, taken features with
        ``source``), or None when ``idx`` selects nothing."""
        cur = self.state(Key("predicted", name))
        idx = sorted({int(i) for i in idx if 0 <= int(i) < len(cur)})
        if not idx:
            return None
        f = cur.features.iloc[idx].reset_index(drop=True).copy()
        f["source"] = source
        f["class"] = name
        return cur.without(idx), cur.data[idx], f[FEATURES]

    def accept(self, selection: dict[str, Sequence[int]], *, as_class: str | None = None) -> int:
        """Move predictions into the training set (source ``accepted``, score kept), as
        their own class or, with ``as_class``, as that class (a candidate of the wrong class)."""
        if as_class is not None and as_class not in self.classes:
            raise CryoPickerError(f"unknown class {as_class!r}")
        new: dict[Key, State] = {}
        n = 0
        for name, idx in selection.items():
            taken = self._take(name, idx, "accepted")
            if taken is None:
                continue
            rest, data, feats = taken
            new[Key("predicted", name)] = rest
            target = as_class or name
            feats["class"] = target
            key = Key("picks", target)
            new[key] = new.get(key, self.state(key)).plus(data, feats)
            n += len(data)
        if n:
            self.edit(f"accept {n} prediction(s)" + (f" as {as_class}" if as_class else ""), new)
        return n

    def reject(self, selection: dict[str, Sequence[int]]) -> int:
        """Delete predictions and remember them as negatives (source ``rejected``)."""
        new: dict[Key, State] = {}
        rej = self.state(REJECTED)
        n = 0
        for name, idx in selection.items():
            taken = self._take(name, idx, "rejected")
            if taken is None:
                continue
            rest, data, feats = taken
            new[Key("predicted", name)] = rest
            rej = rej.plus(data, feats)
            n += len(data)
        if n:
            new[REJECTED] = rej
            self.edit(f"reject {n} prediction(s)", new)
        return n

    def rejection_of(self, predicted: State, idx: Sequence[int]) -> tuple[Key, State, State]:
        """The change that adds predictions ``idx`` of a snapshot to the rejections."""
        before = self.state(REJECTED)
        feats = predicted.features.iloc[list(idx)].reset_index(drop=True).copy()
        feats["source"] = "rejected"
        return REJECTED, before, before.plus(predicted.data[list(idx)], feats)

    def accept_shown(self, class_name: str | None = None) -> int:
        """Accept every shown (above-threshold) prediction of one or all classes."""
        sel = {}
        for key, state in self._states.items():
            if key.kind == "predicted" and (class_name is None or key.class_name == class_name):
                idx = np.flatnonzero(self.shown_mask(key.class_name, state)).tolist()
                if idx:
                    sel[key.class_name] = idx
        return self.accept(sel)

    def clear_predictions(self) -> None:
        new = {k: State.empty() for k, s in self._states.items() if k.kind == "predicted" and len(s)}
        if new:
            self.edit("clear predictions", new)
