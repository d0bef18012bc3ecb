"""The model's predictions in a picking session: replacing them, the per-class score
thresholds, accepting and rejecting them (the selected ones, the shown ones), and the
rejected layer's visibility. The state is the store's
(:class:`~..core.store_predictions.StorePredictions`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..core.classes import ClassTable
from ..core.picks import Picks
from ..core.store import REJECTED

if TYPE_CHECKING:  # pragma: no cover
    from ..core.store import AnnotationStore


class SessionPredictions:
    """Mixin of :class:`~.session.PickingSession`: its predictions, thresholds, accept and reject."""

    store: AnnotationStore

    # ------------------------------------------------------------------ predictions
    def set_predictions(self, picks: Picks, *, checkpoint_classes: ClassTable | None = None,
                        skip_known: bool = True) -> int:
        """Replace the predicted layers with ``picks`` (undoable); returns how many are shown.

        With ``skip_known``, predictions within one particle radius of a pick already in the
        training set (or of a rejected one) are left out: they need no decision again.
        """
        self._require_tomogram()
        if checkpoint_classes is not None:
            self.ensure_classes(checkpoint_classes)
        return self.store.set_predictions(picks, skip_known=skip_known)

    def prediction_scores(self, class_name: str) -> np.ndarray:
        """Scores of every prediction of ``class_name`` (shown or below the threshold)."""
        return self.store.prediction_scores(class_name)

    def set_threshold(self, class_name: str, value: float) -> None:
        """Show only predictions of ``class_name`` scoring >= ``value`` (no re-inference)."""
        self.store.set_threshold(class_name, value)

    def selected_predictions(self) -> dict[str, list[int]]:
        out = {}
        for key, layer in self.session_layers().items():
            if key.kind == "predicted" and layer.selected_data:
                shown = np.asarray(layer.shown, dtype=bool)
                idx = sorted(i for i in layer.selected_data if i < len(shown) and shown[i])
                if idx:
                    out[key.class_name] = idx
        return out

    def accept(self, selection: dict[str, Sequence[int]], *, as_class: str | None = None) -> int:
        """Move predictions into the training set (source ``accepted``, score kept), as
        their own class or, with ``as_class``, as that class (a candidate of the wrong class)."""
        return self.store.accept(selection, as_class=as_class)

    def reject(self, selection: dict[str, Sequence[int]]) -> int:
        """Delete predictions and remember them as negatives (source ``rejected``)."""
        return self.store.reject(selection)

    def accept_selected(self) -> int:
        return self.accept(self.selected_predictions())

    def reject_selected(self) -> int:
        return self.reject(self.selected_predictions())

    def accept_shown(self, class_name: str | None = None) -> int:
        """Accept every shown (above-threshold) prediction of one or all classes."""
        return self.store.accept_shown(class_name)

    def clear_predictions(self) -> None:
        self.store.clear_predictions()

    def set_rejected_visible(self, visible: bool) -> None:
        layer = self.layer_for(REJECTED, create=visible)
        if layer is not None:
            layer.visible = bool(visible)
