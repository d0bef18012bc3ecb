"""Weak labels from picks: Cubic, Ball and truncated-ball (TBall) masks.

For a particle of diameter ``d`` voxels, let ``r = (d - 1) / 2`` (``d = 2r + 1``). A voxel
at offset ``o`` from the centre belongs to the particle if

* ``cubic``: ``max |o_i| <= r``            (the cube [-r, r]^3)
* ``ball``:  ``|o| <= r``
* ``tball``: cube AND ``|o| <= sqrt(2) r`` (DeepETPicker's truncated ball)

Even diameters work: the shape is then centred half a voxel below the pick
(``o`` is measured from ``centre - 0.5``), so the cube still spans exactly ``d`` voxels
per axis.

Overlaps: each voxel takes the label of the *nearest* covering centre (ties go to the
earlier pick), instead of DeepETPicker's "last particle overwrites its whole cube".
Picks whose ``source`` is ``"rejected"`` (false positives deleted by the user) compete
like particles but paint explicit background (label 0) — they matter when training
ignores unlabelled voxels, and they carve the user's negatives out of any neighbour. A
rejection whose centre lies within a radius of a positive pick paints nothing: it said
"not this class" of a particle the pick already names (a candidate of the wrong class on
a picked particle), and must not carve that particle's label away.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from .classes import ClassTable
from .picks import Picks

MODES = ("tball", "ball", "cubic")
IGNORE = 255


@lru_cache(maxsize=64)
def shape_offsets(diameter: float, mode: str = "tball") -> tuple[np.ndarray, np.ndarray]:
    """Integer offsets (M, 3) covered by one particle and their squared distances.

    Offsets are relative to the rounded pick position; for an even diameter the shape's
    centre sits at -0.5 on every axis.
    """
    if mode not in MODES:
        raise ValueError(f"unknown label mode {mode!r}; choose one of {', '.join(MODES)}")
    d = int(round(float(diameter)))
    if d < 1:
        raise ValueError(f"diameter must be >= 1 voxel, got {diameter}")
    r = (d - 1) / 2.0
    shift = 0.0 if d % 2 == 1 else -0.5
    lo, hi = -int(np.floor(d / 2)), int(np.ceil(d / 2)) - 1
    ax = np.arange(lo, hi + 1)
    g = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), axis=-1).reshape(-1, 3)
    rel = g - shift
    d2 = np.sum(rel * rel, axis=1)
    if mode == "cubic":
        keep = np.ones(len(g), dtype=bool)
    elif mode == "ball":
        keep = d2 <= r * r + 1e-9
    else:
        keep = d2 <= 2.0 * r * r + 1e-9
    offs = g[keep].astype(np.int64)
    dist2 = d2[keep].astype(np.float32)
    offs.setflags(write=False)
    dist2.setflags(write=False)
    return offs, dist2


def make_labels(
    shape: Sequence[int],
    picks: Picks,
    classes: ClassTable,
    mode: str = "tball",
    diameter: float | dict[str, float] | None = None,
    origin: Sequence[int] = (0, 0, 0),
    background: int = 0,
    rejected: int = 0,
) -> np.ndarray:
    """A uint8 label volume of ``shape``: 0 background, k for class ``classes[k-1]``.

    ``diameter`` overrides every class's diameter (DeepETPicker's constant d = 7 mode), or
    per class when a dict ``{class name: diameter}``.
    ``origin`` is the voxel index of this volume's corner in the tomogram the picks
    index, so labels for a crop can be made without a full-size volume.
    ``background`` fills voxels no particle covers (use :data:`IGNORE` for crops where
    unlabelled voxels should not count as background).
    ``rejected`` is the label of the balls of rejected picks (explicit background, 0 unless
    the caller wants to tell them apart from plain background).
    """
    t = picks.table
    return labels_from_arrays(shape, np.rint(picks.zyx).astype(np.int64), t["class_name"].to_numpy(dtype=object),
                              (t["source"] == "rejected").to_numpy(), classes, mode, diameter, origin,
                              background, rejected)


def labels_from_arrays(
    shape: Sequence[int],
    centres: np.ndarray,
    names: np.ndarray,
    is_rejected: np.ndarray,
    classes: ClassTable,
    mode: str = "tball",
    diameter: float | dict[str, float] | None = None,
    origin: Sequence[int] = (0, 0, 0),
    background: int = 0,
    rejected: int = 0,
) -> np.ndarray:
    """:func:`make_labels` from arrays: integer voxel ``centres`` (n, 3) in the tomogram,
    their class ``names`` and ``is_rejected`` flags. Training builds a crop's labels this
    way, without a :class:`Picks` table per crop (whose checks cost more than the labels)."""
    shape = tuple(int(s) for s in shape)
    labels = np.full(shape, background, dtype=np.uint8)
    if len(centres) == 0:
        return labels
    best = np.full(shape, np.inf, dtype=np.float32)
    centres = np.asarray(centres, dtype=np.int64).reshape(-1, 3) - np.asarray(origin, dtype=np.int64)[None, :]
    names = np.array(names, dtype=object, copy=True)
    is_rejected = np.array(is_rejected, dtype=bool, copy=True)
    shp = np.asarray(shape)
    unknown = sorted({n for n, rej in zip(names, is_rejected) if not rej and n not in classes})
    if unknown:
        raise KeyError(
            f"picks use class(es) {', '.join(unknown)} that are not in the class table "
            f"({', '.join(classes.names) or 'empty'}); add them or drop those picks"
        )
    def diameter_of(name: str) -> float:
        if isinstance(diameter, dict):
            if name in diameter:
                return float(diameter[name])
        elif diameter is not None:
            return float(diameter)
        if name in classes:
            return classes[name].diameter
        return max(classes.diameters, default=7.0)

    if is_rejected.any() and (~is_rejected).any():
        from scipy.spatial import cKDTree

        pos_c = centres[~is_rejected]
        pos_r = np.array([diameter_of(n) / 2.0 for n in names[~is_rejected]])
        near = cKDTree(pos_c).query_ball_point(centres[is_rejected], float(pos_r.max()))
        rows = np.flatnonzero(is_rejected)
        for i, hits in zip(rows, near):
            if any(np.linalg.norm(pos_c[j] - centres[i]) <= pos_r[j] for j in hits):
                is_rejected[i] = False
                names[i] = None  # skipped below
    for c, name, rej in zip(centres, names, is_rejected):
        if name is None:
            continue
        label = rejected if rej else classes.label_of(name)
        d = diameter_of(name)
        offs, dist2 = shape_offsets(float(d), mode)
        pos = offs + c[None, :]
        ok = np.all((pos >= 0) & (pos < shp[None, :]), axis=1)
        if not ok.any():
            continue
        pos, dd = pos[ok], dist2[ok]
        idx = (pos[:, 0], pos[:, 1], pos[:, 2])
        closer = dd < best[idx]
        if not closer.any():
            continue
        sel = (pos[closer, 0], pos[closer, 1], pos[closer, 2])
        best[sel] = dd[closer]
        labels[sel] = label
    return labels


def label_counts(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Voxel count per label 0..n_classes (ignore voxels excluded)."""
    return np.bincount(labels[labels != IGNORE].ravel(), minlength=n_classes + 1)[: n_classes + 1]
