"""Which of the model's picks an answer would teach it most: the order of the review queue.

A candidate is doubtful when

* its score is near its class's threshold (the model cannot decide whether it is one),
* another class's candidate sits on it (the model cannot decide which class it is), or
* it lies far from every click and rejection (a region the user has said nothing about).

:func:`doubt` gives each candidate a number, smaller = more doubtful: the distance of its
score to the threshold (0..1), less ``RIVAL`` for a rival and up to ``NOVELTY`` for being
far (from one class diameter on, in full from two).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .classes import ClassTable

RIVAL = 0.15
NOVELTY = 0.15


def doubt(zyx: np.ndarray, classes: np.ndarray, scores: np.ndarray, thresholds: Mapping[str, float],
          table: ClassTable, known: np.ndarray | None = None, default_threshold: float = 0.0) -> np.ndarray:
    """How doubtful each candidate (voxel position, class name, score) is; ``known``: the
    positions of every pick and rejection (voxels)."""
    from scipy.spatial import cKDTree

    zyx = np.asarray(zyx, float).reshape(-1, 3)
    classes = np.asarray(classes).astype(str)
    n = len(zyx)
    if not n:
        return np.zeros(0)
    t = np.array([thresholds.get(c, default_threshold) for c in classes], float)
    out = np.abs(np.asarray(scores, float) - t)
    diam = np.array([table[c].diameter if c in table else 10.0 for c in classes], float)
    rival = np.zeros(n, bool)
    for i, j in cKDTree(zyx).query_pairs(float(diam.max()) / 2.0):
        if classes[i] != classes[j] and np.linalg.norm(zyx[i] - zyx[j]) <= max(diam[i], diam[j]) / 2.0:
            rival[[i, j]] = True
    out -= RIVAL * rival
    if known is not None and len(known):
        d, _ = cKDTree(np.asarray(known, float).reshape(-1, 3)).query(zyx, k=1)
        out -= NOVELTY * np.clip(d / diam - 1.0, 0.0, 1.0)
    else:
        out -= NOVELTY
    return out
