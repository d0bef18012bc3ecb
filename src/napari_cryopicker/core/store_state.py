"""The sets of points of the annotation store and its undo steps: :class:`Key` (which set),
:class:`State` (a snapshot of its coordinates and features), :class:`Edit` (one undoable
action), and the per-point features of picks (see :mod:`.store` for the store itself)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .picks import ANGLES, Picks

FEATURES = ["class", "score", "source"]
_DEFAULT_SOURCE = {"picks": "manual", "predicted": "predicted", "rejected": "rejected"}


def empty_features() -> pd.DataFrame:
    return pd.DataFrame({"class": pd.Series([], dtype=object), "score": pd.Series([], dtype=float),
                         "source": pd.Series([], dtype=object)})


def features_frame(picks: Picks) -> pd.DataFrame:
    """Per-point features (class, score, source, and angles where known) of ``picks``."""
    t = picks.table
    df = pd.DataFrame({"class": t["class_name"].astype(str).to_numpy(),
                       "score": t["score"].astype(float).to_numpy(),
                       "source": t["source"].astype(str).to_numpy()})
    if picks.has_angles:
        for c in ANGLES:
            df[c] = t[c].to_numpy(dtype=float)
    return df


@dataclass(frozen=True)
class Key:
    """One set of points: kind ``picks``/``predicted`` + class, or ``rejected``."""

    kind: str
    class_name: str | None = None

    @property
    def name(self) -> str:
        """The napari layer name: ``picks: ribosome``, ``predicted: ribosome``, ``rejected``."""
        return "rejected" if self.kind == "rejected" else f"{self.kind}: {self.class_name or ''}"

    @property
    def default_source(self) -> str:
        return _DEFAULT_SOURCE[self.kind]


REJECTED = Key("rejected")


@dataclass
class State:
    """A snapshot of one set of points: coordinates (n x 3 voxels) and features."""

    data: np.ndarray
    features: pd.DataFrame

    @classmethod
    def empty(cls) -> State:
        return cls(np.zeros((0, 3)), empty_features())

    @classmethod
    def of_picks(cls, picks: Picks) -> State:
        return cls(picks.zyx.reshape(-1, 3).astype(float), features_frame(picks)[FEATURES])

    def __len__(self) -> int:
        return len(self.data)

    def plus(self, data: np.ndarray, features: pd.DataFrame) -> State:
        """This state with points appended."""
        return State(np.vstack([self.data.reshape(-1, 3), np.asarray(data, float).reshape(-1, 3)]),
                     pd.concat([self.features, features[FEATURES]], ignore_index=True))

    def without(self, idx: Sequence[int]) -> State:
        keep = np.setdiff1d(np.arange(len(self)), np.asarray(idx, dtype=int))
        return State(self.data[keep], self.features.iloc[keep].reset_index(drop=True))


@dataclass
class Edit:
    """One undoable action: before/after snapshots of every set it touched."""

    label: str
    changes: list[tuple[Key, State, State]] = field(default_factory=list)


def _parts(picks: Picks) -> tuple[np.ndarray, pd.DataFrame]:
    """The coordinates and features of ``picks``, as :meth:`State.plus` takes them."""
    return picks.zyx, features_frame(picks)[FEATURES]
