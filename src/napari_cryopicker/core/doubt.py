"""Which of the model's picks an answer would teach it most: the order of the review queue.

A candidate is doubtful when

* its score is near its class's threshold (the model cannot decide whether it is one),
* another class's candidate sits on it (the model cannot decide which class it is), or
* it lies far from every click and rejection (a region the user has said nothing about), or
* it does not look like the clicked particles of its class (:func:`unlike_clicks`).

:func:`doubt` gives each candidate a number, smaller = more doubtful: the distance of its
score to the threshold (0..1), less ``RIVAL`` for a rival, up to ``NOVELTY`` for being
far (from one class diameter on, in full from two) and up to ``UNLIKE`` for looking unlike
the clicks.

The last is what finds confident errors. On the realistic benchmark a 40-click model
scores never-clicked fatty-acid synthases as mitoribosomes as surely as the real ones
(0.96 against a threshold of 0.47), so closeness to the threshold does not single them
out. Ordered by how unlike the clicks they look, 18 of the first 40 mitoribosome
candidates were wrong (8 expected by chance) and 38 of the first 40 chaperonin candidates
(28 expected). In a correction round (``benchmarks/correction.py``, seed 0) the first 80
answers were 73 rejections with this term and 60 without; but fine-tuning on them taught
no more (mitoribosome 0.83 against 0.85 over three seeds), so the Particles panel's
"doubtful first" leaves the term out and its "unlike the clicks first" uses it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .classes import ClassTable

RIVAL = 0.15
NOVELTY = 0.15
UNLIKE = 0.5


def doubt(zyx: np.ndarray, classes: np.ndarray, scores: np.ndarray, thresholds: Mapping[str, float],
          table: ClassTable, known: np.ndarray | None = None, default_threshold: float = 0.0,
          unlike: np.ndarray | None = None) -> np.ndarray:
    """How doubtful each candidate (voxel position, class name, score) is; ``known``: the
    positions of every pick and rejection (voxels); ``unlike``: :func:`unlike_clicks` of
    each candidate (0..1)."""
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
    if unlike is not None:
        out -= UNLIKE * np.clip(np.nan_to_num(np.asarray(unlike, float)), 0.0, 1.0)
    return out


def class_turns(keys: np.ndarray, classes: np.ndarray, picked: Mapping[str, int] | None = None) -> np.ndarray:
    """A queue order that takes the classes in turn: each class's candidates ranked by
    ``keys`` (smaller first, as :func:`doubt` gives them), then the first of every class,
    the second of every class, and so on; within a round the class with the fewest picks
    (``picked``: name -> picks and accepted answers) first. Returns sort keys (smaller
    first). An answer teaches a class less the more it has: in live training, a queue in
    plain doubt order spent 30 of 31 answers accepting the one class the young network
    proposed (benchmarks/README.md, session 22)."""
    keys = np.asarray(keys, float)
    classes = np.asarray(classes).astype(str)
    picked = picked or {}
    names = sorted(set(classes), key=lambda c: (picked.get(c, 0), c))
    slot = {c: i for i, c in enumerate(names)}
    out = np.zeros(len(keys))
    for c in names:
        rows = np.flatnonzero(classes == c)
        rank = np.empty(len(rows))
        rank[np.argsort(keys[rows], kind="stable")] = np.arange(len(rows))
        out[rows] = rank * (len(names) + 1) + slot[c]
    return out


def shell_profiles(data, zyx: np.ndarray, radius: int, cache: dict | None = None) -> np.ndarray:
    """A description of the density around each position that does not change when the
    particle turns: the mean and the spread of the voxels in each 1-voxel shell from the
    centre out to ``radius`` (``2 * (radius + 1)`` numbers per position). ``data``: a
    (z, y, x) array or memory map; only a cube around each position is read, mirrored at
    the edges. ``cache``: a dict kept between calls on the same ``data`` (keyed by radius and
    voxel), so that a queue ordered again after each answer reads each cube once."""
    r_ = int(radius)
    g = np.mgrid[-r_:r_ + 1, -r_:r_ + 1, -r_:r_ + 1]
    shell = np.sqrt((g ** 2).sum(0)).round().astype(np.int64).ravel()
    inside = shell <= r_
    shell = shell[inside]
    count = np.bincount(shell, minlength=r_ + 1).astype(float)
    out = np.zeros((len(zyx), 2 * (r_ + 1)))
    shape = np.asarray(data.shape)
    for n, c in enumerate(np.rint(np.asarray(zyx, float).reshape(-1, 3)).astype(np.int64)):
        c = np.clip(c, 0, shape - 1)
        key = (r_, *map(int, c))
        if cache is not None and key in cache:
            out[n] = cache[key]
            continue
        lo, hi = np.maximum(c - r_, 0), np.minimum(c + r_ + 1, shape)
        cube = np.asarray(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float64)
        pad = [(int(a - b), int(d - e)) for a, b, d, e in zip(lo, c - r_, c + r_ + 1, hi)]
        if any(p for pair in pad for p in pair):
            cube = np.pad(cube, pad, mode="symmetric")
        v = cube.ravel()[inside]
        mean = np.bincount(shell, v, r_ + 1) / count
        out[n, : r_ + 1] = mean
        out[n, r_ + 1:] = np.sqrt(np.maximum(np.bincount(shell, v * v, r_ + 1) / count - mean ** 2, 0.0))
        if cache is not None:
            cache[key] = out[n].copy()
    return out


def unlike_clicks(data, zyx: np.ndarray, classes: np.ndarray, clicks_zyx: np.ndarray, click_classes: np.ndarray,
                  table: ClassTable, k: int = 5, cache: dict | None = None) -> np.ndarray:
    """How unlike the clicked particles of its class each candidate looks, 0 (as alike as
    the clicks are to each other) to 1 (twice as far), from :func:`shell_profiles` over
    the class radius plus 2 voxels: the mean standardised distance to its ``k`` nearest
    clicks, over the 90th percentile of the same for each click among the others. 0 for
    a class with fewer than ``k + 2`` clicks. All positions in voxels of ``data``;
    ``cache``: as in :func:`shell_profiles`."""
    zyx = np.asarray(zyx, float).reshape(-1, 3)
    classes = np.asarray(classes).astype(str)
    clicks_zyx = np.asarray(clicks_zyx, float).reshape(-1, 3)
    click_classes = np.asarray(click_classes).astype(str)
    out = np.zeros(len(zyx))
    for name in np.unique(classes):
        mine, ref = classes == name, click_classes == name
        if name not in table or ref.sum() < k + 2:
            continue
        radius = int(round(table[name].diameter / 2)) + 2
        f_ref = shell_profiles(data, clicks_zyx[ref], radius, cache)
        mu, sd = f_ref.mean(0), f_ref.std(0) + 1e-6
        z_ref = (f_ref - mu) / sd
        z = (shell_profiles(data, zyx[mine], radius, cache) - mu) / sd
        near = np.sort(((z[:, None, :] - z_ref[None]) ** 2).sum(-1), axis=1)[:, :k].mean(1)
        own = ((z_ref[:, None, :] - z_ref[None]) ** 2).sum(-1)
        own = np.sort(own, axis=1)[:, 1:k + 1].mean(1)  # each click among the others (itself left out)
        scale = max(float(np.percentile(own, 90)), 1e-9)
        out[mine] = np.clip(near / scale - 1.0, 0.0, 1.0)
    return out
