"""MP-NMS: mean-pooling non-maximum suppression (after DeepETPicker), in z-slabs.

For each class ``c`` with radius ``r`` (voxels):

1. ``s = p_c * [label == c] * [p_c >= t_seg]`` — the class's probability where the
   segmentation says "class c" (``label`` is the arg-max segmentation).
2. ``n_pool`` passes of a ``k^3`` mean filter (``k`` odd, about ``r``; separable, so the
   cost does not grow with ``k``) turn each blob into a peaked hill whose top is the
   blob's centre.
3. Local maxima: voxels equal to the maximum over a ``(2 * t_nms + 1)^3`` window.
   Plateaus (equal neighbouring maxima) are merged deterministically into one pick at
   the plateau's centroid. A pick's score is the mean of ``s`` in a small cube around
   it (the class probability near the centre); picks scoring below ``t_lm`` are dropped,
   and so are picks whose class fills less than ``min_fill`` of the class's truncated
   ball around them (a distractor the network half-believes; the fraction is kept in the
   picks' ``fill`` column). The ball is the training labels' (``fill_diameter``), which
   is what the network learnt to segment.
4. Two picks of a class closer than ``t_dist`` (default 1.5 radii) keep only the higher score (a KD-tree,
   highest score first — not DeepETPicker's O(N^2) loop). Picks of different classes
   closer than ``cross_class_fraction`` x the *larger* radius keep the higher score: a pick
   inside another particle's body cannot be a particle of its own (a substructure of a
   ribosome called "chaperonin"), while touching neighbours (2 radii apart) are kept.

The volume is processed in z-slabs with a halo wider than the filters' support, so the
result equals the whole-volume computation while memory stays bounded by the slab.
Steps 2 and 3 (the peaks of one class in one slab) are in :mod:`.nms_peaks`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .classes import ClassTable
from .nms_peaks import _gather_mean, bin_mean, find_peaks
from .picks import Picks
from .progress import Progress, ensure

__all__ = ["MAX_WORKERS", "NMSParams", "auto_bin", "bin_mean", "fill_fraction", "find_peaks", "mp_nms", "suppress"]


@dataclass
class NMSParams:
    t_seg: float = 0.5     # minimum class probability for a voxel to count
    t_lm: float = 0.3      # minimum pick score (mean class probability near the peak)
    kernel: int = 0        # mean-filter size; 0 = from the radius
    n_pool: int = 2        # mean-filter passes
    t_nms: int = 0         # half-width of the local-maximum window; 0 = from the radius
    t_dist: float = 0.0    # min distance between picks of a class; 0 = 1.5 x radius
    cross_class_fraction: float = 1.0
    min_fill: float = 0.0  # min fraction of the class's TBall around a pick segmented as that class
    bin: int = 0           # pooling/peak grid: 1 = every voxel, b = b^3 blocks; 0 = from the radius
    fill_diameter: float = 0.0  # ball of the min_fill test (the training label's); 0 = the class diameter

    def resolved(self, radius: float) -> NMSParams:
        r = max(1.0, float(radius))
        k = self.kernel or max(3, int(round(r)) | 1)
        t_nms = self.t_nms or max(1, int(round(r * 0.5)))
        t_dist = self.t_dist or max(1.0, 1.5 * r)
        b = self.bin or auto_bin(r)
        return NMSParams(self.t_seg, self.t_lm, k, self.n_pool, t_nms, t_dist, self.cross_class_fraction,
                         self.min_fill, b, self.fill_diameter)

    def coarse(self) -> tuple[int, int]:
        """(kernel, t_nms) on the binned grid."""
        b = max(1, self.bin)
        if b == 1:
            return self.kernel, self.t_nms
        return max(3, int(round(self.kernel / b)) | 1), max(1, int(round(self.t_nms / b)))

    def halo(self) -> int:
        """Voxels of context a slab needs on each side (a multiple of the bin)."""
        b = max(1, self.bin)
        kc, tc = self.coarse()
        h = ((kc // 2) * self.n_pool + tc + 1) * b + self.refine_radius()
        return -(-h // b) * b

    def refine_radius(self) -> int:
        """Context (voxels) the full-resolution refinement of a coarse peak reads."""
        return 0 if self.bin <= 1 else self.bin + (self.kernel // 2) * self.n_pool + 1


def auto_bin(radius: float) -> int:
    """Grid for pooling and peak finding: a particle of radius r keeps about 2+ blocks
    across its radius (r < 4 stays at full resolution; at most 4^3 blocks)."""
    return int(min(4, max(1, radius // 2)))


def suppress(zyx: np.ndarray, scores: np.ndarray, min_dist: float) -> np.ndarray:
    """Indices kept after removing the weaker of any two points closer than min_dist.

    Deterministic: highest score first, ties broken by position (z, then y, then x).
    """
    n = len(zyx)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((zyx[:, 2], zyx[:, 1], zyx[:, 0], -scores))
    tree = cKDTree(zyx)
    alive = np.ones(n, dtype=bool)
    keep = []
    for i in order:
        if not alive[i]:
            continue
        keep.append(i)
        for j in tree.query_ball_point(zyx[i], r=min_dist - 1e-9):
            alive[j] = False
    return np.asarray(sorted(keep), dtype=np.int64)


def _slab_peaks(label, prob, ci: int, p: NMSParams, z0: int, z1: int, scale: float):
    """Peaks of class ``ci`` whose centres round into z-slab [z0, z1), read with a halo of
    ``p.halo()`` voxels (so the result equals the whole-volume computation)."""
    Z, Y, X = label.shape
    h = p.halo()
    a, b = max(0, z0 - h), min(Z, z1 + h)
    m = np.asarray(label[a:b]) == ci
    if not m.any():
        return None
    # only the part of the slab where the class is (plus the halo), on the bin grid
    ys = np.flatnonzero(m.any(axis=(0, 2)))
    xs = np.flatnonzero(m.any(axis=(0, 1)))
    y0, x0 = (max(0, v[0] - h) // p.bin * p.bin for v in (ys, xs))
    y1, x1 = min(Y, ys[-1] + 1 + h), min(X, xs[-1] + 1 + h)
    m = m[:, y0:y1, x0:x1]
    pr = np.asarray(prob[a:b, y0:y1, x0:x1])
    if pr.dtype == np.uint8:  # stays one byte per voxel: p >= t_seg <=> byte >= t_seg * 255
        m &= pr >= np.uint8(min(255, max(0, math.ceil(p.t_seg * 255 - 1e-6))))
        sc_ = np.where(m, pr, np.uint8(0))
    else:  # float probabilities (scale is 1)
        sc_ = np.where(m & (pr >= p.t_seg), pr, 0).astype(np.float32, copy=False)
    del m
    zyx, sc = find_peaks(sc_, p, unit=scale if pr.dtype == np.uint8 else 1.0)
    zyx += np.array([a, y0, x0], dtype=float)
    rz = np.floor(zyx[:, 0] + 0.5)
    inside = (rz >= z0) & ((rz < z1) | (z1 == Z))
    return zyx[inside], sc[inside]


#: most threads MP-NMS runs its (class, slab) tasks on: each holds a slab's work arrays
#: (~10 bytes per voxel of a <= 16 M-voxel slab), so this bounds the extra memory too
MAX_WORKERS = 4


def _n_workers(workers: int | None, n_tasks: int) -> int:
    if workers is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        workers = min(MAX_WORKERS, cpus)
    return max(1, min(int(workers), n_tasks))


def mp_nms(
    label: np.ndarray,
    prob: np.ndarray,
    classes: ClassTable,
    params: NMSParams | dict | None = None,
    tomogram: str = "",
    voxel_size: float | None = None,
    slab: int = 64,
    progress: Progress | None = None,
    workers: int | None = None,
) -> Picks:
    """Turn a segmentation into picks.

    ``label``: (z, y, x) uint8 arg-max class (0 background). ``prob``: (z, y, x) the
    arg-max class's probability, float or uint8 (0..255 mapped to 0..1). Per-class
    overrides may be given as ``params={"default": NMSParams(...), "ribosome": {...}}``.
    The (class, z-slab) pieces are independent and run on ``workers`` threads (default:
    the CPUs this process may use, at most :data:`MAX_WORKERS`; scipy's filters and
    numpy release the GIL); the result does not depend on the number.
    """
    progress = ensure(progress)
    per_class = _params_per_class(params, classes)
    scale = 1.0 / 255.0 if prob.dtype == np.uint8 else 1.0
    Z, Y, X = label.shape
    # slabs of at most ~16 M voxels (a few hundred MB of work arrays) whatever the section
    slab = int(max(1, min(slab, (16 << 20) // max(1, Y * X))))
    resolved = {c.name: per_class[c.name].resolved(c.radius) for c in classes}
    tasks = []
    for ci, cls in enumerate(classes, start=1):
        p = resolved[cls.name]
        step_z = -(-slab // p.bin) * p.bin  # slabs (and halos) on the bin grid
        tasks += [(ci, cls.name, z0, min(Z, z0 + step_z)) for z0 in range(0, Z, step_z)]
    progress.check()

    def run(task):
        progress.check()
        ci, name, z0, z1 = task
        return _slab_peaks(label, prob, ci, resolved[name], z0, z1, scale)

    found: dict[str, list] = {c.name: [] for c in classes}
    n = _n_workers(workers, len(tasks))
    pool = ThreadPoolExecutor(n) if n > 1 else None
    try:
        results = pool.map(run, tasks) if pool else map(run, tasks)
        for step, (task, res) in enumerate(zip(tasks, results), start=1):  # in order: deterministic
            progress.check()  # also when the threads finished every piece already
            if res is not None:
                found[task[1]].append(res)
            progress.update(step, len(tasks), f"MP-NMS {task[1]}")
    finally:
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    all_zyx, all_scores, all_names, all_fill = [], [], [], []
    for ci, cls in enumerate(classes, start=1):
        if not found[cls.name]:
            continue
        p = resolved[cls.name]
        zyx = np.concatenate([f[0] for f in found[cls.name]])
        sc = np.concatenate([f[1] for f in found[cls.name]])
        keep = suppress(zyx, sc, p.t_dist)
        zyx, sc = zyx[keep], sc[keep]
        fill = fill_fraction(label, zyx, ci, p.fill_diameter or cls.diameter)
        ok = fill >= p.min_fill
        all_zyx.append(zyx[ok])
        all_scores.append(sc[ok])
        all_fill.append(fill[ok])
        all_names += [cls.name] * int(ok.sum())
    if not all_zyx:
        return Picks(voxel_size=voxel_size)
    zyx = np.concatenate(all_zyx)
    scores = np.concatenate(all_scores)
    fills = np.concatenate(all_fill)
    names = np.asarray(all_names, dtype=object)
    keep = _cross_class(zyx, scores, names, classes, per_class)
    out = Picks.from_zyx(
        zyx[keep], class_name=list(names[keep]), score=np.clip(scores[keep], 0, 1),
        source="predicted", tomogram=tomogram, voxel_size=voxel_size,
    )
    out.table["fill"] = fills[keep]
    return out


def fill_fraction(label: np.ndarray, zyx: np.ndarray, label_value: int, diameter: float) -> np.ndarray:
    """Fraction of the class's truncated ball around each pick that is segmented as the class.

    A real particle fills most of its ball; a distractor (gold bead, membrane patch) that
    the network half-believes is the class fills a small part of it.
    """
    from .labels import shape_offsets

    if len(zyx) == 0:
        return np.zeros(0)
    offs, _ = shape_offsets(float(diameter), "tball")
    at = np.floor(zyx + 0.5).astype(np.int64)
    # points of the ball outside the tomogram do not count
    return _gather_mean(label, at, np.asarray(offs, np.int64), value=label_value)


def _params_per_class(params, classes: ClassTable) -> dict[str, NMSParams]:
    if params is None:
        params = NMSParams()
    if isinstance(params, NMSParams):
        return {c.name: params for c in classes}
    base = params.get("default", NMSParams())
    if isinstance(base, dict):
        base = NMSParams(**base)
    out = {}
    for c in classes:
        o = params.get(c.name)
        if o is None:
            out[c.name] = base
        elif isinstance(o, NMSParams):
            out[c.name] = o
        else:
            d = dict(base.__dict__)
            d.update(o)
            out[c.name] = NMSParams(**d)
    return out


def _cross_class(zyx, scores, names, classes: ClassTable, per_class) -> np.ndarray:
    n = len(zyx)
    if n < 2 or len(classes) < 2:
        return np.arange(n)
    radii = np.array([classes[nm].radius for nm in names])
    frac = np.array([per_class[nm].cross_class_fraction for nm in names])
    reach = float(np.max(radii) * np.max(frac))
    if reach <= 0:
        return np.arange(n)
    tree = cKDTree(zyx)
    order = np.lexsort((zyx[:, 2], zyx[:, 1], zyx[:, 0], -scores))
    alive = np.ones(n, dtype=bool)
    for i in order:
        if not alive[i]:
            continue
        for j in tree.query_ball_point(zyx[i], r=reach):
            if j == i or not alive[j] or names[j] == names[i]:
                continue
            # (the larger radius: measured on the realistic benchmark, chaperonin F1 0.46 -> 0.50
            # and 0.37 -> 0.38 on two seeds, the other classes unchanged)
            lim = max(radii[i], radii[j]) * min(frac[i], frac[j])
            if np.linalg.norm(zyx[i] - zyx[j]) <= lim:
                alive[j] = False
    return np.flatnonzero(alive)
