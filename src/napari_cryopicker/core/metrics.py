"""Picking accuracy: one-to-one matching of predicted and true particle centres.

A prediction is a true positive (TP) when it is matched to a true particle of the *same
class* (and the same tomogram) within a distance threshold; unmatched predictions are
false positives (FP), unmatched truths false negatives (FN). The matching is an optimal
one-to-one assignment (:func:`match`): it first maximises the number of matches, then
minimises the total distance, so it never loses a match that a greedy nearest-neighbour
pairing would miss.

Conventions for empty sets (used everywhere in this module except :func:`czii_score`,
which follows the Kaggle code):

* ``precision = TP / (TP + FP)``; with no predictions it is 1.0 if there is also no
  truth, else 0.0.
* ``recall = TP / (TP + FN)``; with no truth it is 1.0 if there are also no predictions,
  else 0.0.
* ``F-beta = (1 + b^2) P R / (b^2 P + R)``, 0.0 when ``P + R == 0``.

So nothing predicted for nothing scores 1 everywhere, and any mismatch between an empty
and a non-empty side scores 0. The scores and the report are in :mod:`.metrics_report`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, min_weight_full_bipartite_matching
from scipy.spatial import cKDTree

from .classes import ClassTable
from .picks import Picks

from .metrics_report import (  # the scores and the report (re-exported: __all__)
    ClassScore,
    Report,
    f_alpha,
    fbeta,
    format_report,
    safe_precision_recall,
)

__all__ = [
    "CZII_RADII_A",
    "CZII_WEIGHTS",
    "ClassScore",
    "Report",
    "counts_over_thresholds",
    "czii_score",
    "evaluate",
    "f_alpha",
    "fbeta",
    "format_report",
    "match",
    "safe_precision_recall",
]

#: Particle radii (Angstrom) of the CZII cryo-ET object identification challenge (Kaggle 2024).
CZII_RADII_A: dict[str, float] = {
    "apo-ferritin": 60.0,
    "beta-amylase": 65.0,
    "beta-galactosidase": 90.0,
    "ribosome": 150.0,
    "thyroglobulin": 130.0,
    "virus-like-particle": 135.0,
}
#: Class weights of the CZII challenge score (beta-amylase is not scored).
CZII_WEIGHTS: dict[str, float] = {
    "apo-ferritin": 1.0,
    "beta-amylase": 0.0,
    "beta-galactosidase": 2.0,
    "ribosome": 1.0,
    "thyroglobulin": 2.0,
    "virus-like-particle": 1.0,
}
#: CZII: a pick matches when it is within this fraction of the particle radius.
CZII_DISTANCE_FRACTION = 0.5

# Components whose dense cost matrix would exceed this many cells use the sparse solver.
_DENSE_LIMIT = 4_000_000


# --------------------------------------------------------------------------------------
# matching
# --------------------------------------------------------------------------------------
def _as_points(a) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.size == 0:
        return np.zeros((0, 3))
    if arr.ndim != 2:
        arr = arr.reshape(-1, arr.shape[-1])
    return arr


def _assign_dense(dist: np.ndarray, edge: np.ndarray, big: float) -> tuple[np.ndarray, np.ndarray]:
    cost = np.where(edge, dist - big, 0.0)
    r, c = linear_sum_assignment(cost)
    ok = edge[r, c]
    return r[ok], c[ok]


def _assign_sparse(
    n_p: int, n_t: int, pi: np.ndarray, ti: np.ndarray, d: np.ndarray, big: float
) -> tuple[np.ndarray, np.ndarray]:
    """Max-cardinality, min-distance matching on a sparse bipartite graph.

    Each side gets a dummy copy so that a full matching always exists: pred i may take
    its own dummy (cost ``big``, "unmatched"), true j likewise, and dummy j - dummy i is
    allowed wherever i - j is an edge, so matched pairs leave their dummies to each other.
    Since ``2 big`` exceeds any sum of distances, more real matches always win.
    """
    eps = 1e-9  # zero weights would vanish from the sparse matrix
    rows = np.concatenate([pi, np.arange(n_p), n_p + ti])
    cols = np.concatenate([ti, n_t + np.arange(n_p), n_t + pi])
    w = np.concatenate([d + eps, np.full(n_p, big), np.full(len(pi), eps)])
    # dummy rows n_p + j must also be able to take true j (unmatched true)
    rows = np.concatenate([rows, n_p + np.arange(n_t)])
    cols = np.concatenate([cols, np.arange(n_t)])
    w = np.concatenate([w, np.full(n_t, big)])
    g = csr_matrix((w, (rows, cols)), shape=(n_p + n_t, n_t + n_p))
    r, c = min_weight_full_bipartite_matching(g)
    ok = (r < n_p) & (c < n_t)
    return r[ok], c[ok]


def match(
    pred_zyx, true_zyx, max_distance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of points within ``max_distance`` (inclusive).

    Returns ``(pred_idx, true_idx, distances)``, sorted by ``pred_idx``. Among all
    matchings it maximises the number of pairs, then minimises the summed distance.
    Candidate pairs come from a KD-tree; each connected component of the candidate graph
    is solved separately (Hungarian algorithm, or a sparse solver for huge components),
    so thousands of picks stay fast.
    """
    p = _as_points(pred_zyx)
    t = _as_points(true_zyx)
    empty = (np.zeros(0, dtype=int), np.zeros(0, dtype=int), np.zeros(0, dtype=float))
    if len(p) == 0 or len(t) == 0 or not max_distance >= 0:
        return empty
    if p.shape[1] != t.shape[1]:
        raise ValueError(f"point dimensions differ: {p.shape[1]} vs {t.shape[1]}")
    pairs = cKDTree(p).sparse_distance_matrix(cKDTree(t), float(max_distance), output_type="ndarray")
    if len(pairs) == 0:
        return empty
    pi = pairs["i"].astype(np.int64)
    ti = pairs["j"].astype(np.int64)
    d = pairs["v"].astype(float)
    n_p, n_t = len(p), len(t)
    graph = coo_matrix((np.ones(len(pi)), (pi, n_p + ti)), shape=(n_p + n_t, n_p + n_t))
    _, label = connected_components(graph, directed=False)
    comp = label[pi]
    order = np.argsort(comp, kind="stable")
    pi, ti, d, comp = pi[order], ti[order], d[order], comp[order]
    bounds = np.flatnonzero(np.diff(comp)) + 1
    out_p: list[np.ndarray] = []
    out_t: list[np.ndarray] = []
    for sl in np.split(np.arange(len(pi)), bounds):
        cp, ct, cd = pi[sl], ti[sl], d[sl]
        if len(cp) == 1:
            out_p.append(cp)
            out_t.append(ct)
            continue
        up, lp = np.unique(cp, return_inverse=True)
        ut, lt = np.unique(ct, return_inverse=True)
        big = (float(max_distance) + 1.0) * (min(len(up), len(ut)) + 1)
        if len(up) * len(ut) <= _DENSE_LIMIT:
            dist = np.zeros((len(up), len(ut)))
            edge = np.zeros((len(up), len(ut)), dtype=bool)
            dist[lp, lt] = cd
            edge[lp, lt] = True
            r, c = _assign_dense(dist, edge, big)
        else:
            r, c = _assign_sparse(len(up), len(ut), lp, lt, cd, big)
        out_p.append(up[r])
        out_t.append(ut[c])
    mp = np.concatenate(out_p)
    mt = np.concatenate(out_t)
    o = np.argsort(mp, kind="stable")
    mp, mt = mp[o], mt[o]
    dist = np.linalg.norm(p[mp] - t[mt], axis=1)
    return mp.astype(int), mt.astype(int), dist


# --------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------
def _usable(picks: Picks) -> Picks:
    return picks.exclude_source("rejected")


def _groups(pred: Picks, truth: Picks, per_tomogram: bool):
    """Yield (pred_zyx, true_zyx) per tomogram (or once, when names are not usable)."""
    pt = pred.table["tomogram"].astype(str)
    tt = truth.table["tomogram"].astype(str)
    use = per_tomogram and (pt != "").all() and (tt != "").all() and len(pt) > 0 and len(tt) > 0
    if not use:
        yield pred.zyx, truth.zyx
        return
    for name in dict.fromkeys(list(pt) + list(tt)):
        yield pred.zyx[(pt == name).to_numpy()], truth.zyx[(tt == name).to_numpy()]


def _count(pred: Picks, truth: Picks, max_distance: float, per_tomogram: bool) -> tuple[int, float]:
    tp, dsum = 0, 0.0
    for pz, tz in _groups(pred, truth, per_tomogram):
        _, _, d = match(pz, tz, max_distance)
        tp += len(d)
        dsum += float(d.sum())
    return tp, dsum


def _same_voxel_size(picks: Picks, truth: Picks) -> Picks:
    if picks.voxel_size is not None and truth.voxel_size is not None and picks.voxel_size != truth.voxel_size:
        return picks.rescaled(truth.voxel_size)
    return picks


def evaluate(
    picks: Picks,
    truth: Picks,
    classes: ClassTable | None = None,
    distance_fraction: float = 1.0,
    max_distance: float | None = None,
    beta: float = 1.0,
    per_tomogram: bool = True,
) -> Report:
    """Score ``picks`` against ``truth`` per class, plus a micro-averaged overall score.

    Picks are matched only to truths of the same class, and, with ``per_tomogram`` and
    tomogram names on every row of both sides, of the same tomogram. The match threshold
    is ``distance_fraction * radius`` (radius = diameter / 2 from ``classes``, voxels) or
    ``max_distance`` (voxels) for every class when given. Rows with source ``"rejected"``
    are ignored on both sides. When both carry different voxel sizes, the picks are
    rescaled to the truth's. Every class that occurs must be in ``classes`` (when given;
    it is required unless ``max_distance`` is), else a ValueError names it.
    """
    if max_distance is None and classes is None:
        raise ValueError("evaluate: give a class table (for the radii) or max_distance")
    if max_distance is not None and not max_distance >= 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    pred = _same_voxel_size(_usable(picks), truth)
    true = _usable(truth)
    names = list(dict.fromkeys(true.class_names + pred.class_names))
    if classes is not None:
        missing = [n for n in names if n not in classes]
        if missing:
            raise ValueError(
                f"class {missing[0]!r} is not in the class table (known: "
                f"{', '.join(classes.names) or 'none'}); add it with its diameter"
                + (f"; also missing: {', '.join(missing[1:])}" if len(missing) > 1 else "")
            )
        # report in class-table order
        names = [c for c in classes.names if c in names]
    report = Report(beta=float(beta))
    tp_all = n_pred_all = n_true_all = 0
    dsum_all = 0.0
    for name in names:
        p = pred.select(class_name=name)
        t = true.select(class_name=name)
        thr = float(max_distance) if max_distance is not None else distance_fraction * classes[name].radius
        tp, dsum = _count(p, t, thr, per_tomogram)
        report.per_class[name] = ClassScore.from_counts(name, tp, len(p), len(t), beta, dsum)
        tp_all += tp
        n_pred_all += len(p)
        n_true_all += len(t)
        dsum_all += dsum
    report.overall = ClassScore.from_counts("overall", tp_all, n_pred_all, n_true_all, beta, dsum_all)
    return report


def counts_over_thresholds(
    picks: Picks,
    truth: Picks,
    classes: ClassTable,
    thresholds: Sequence[float],
    fills: Sequence[float] = (0.0,),
) -> dict[str, dict[tuple[float, float], tuple[int, int, int]]]:
    """(TP, FP, FN) per class of the picks with ``score >= t`` and ``fill >= f``, for
    every ``(t, f)`` of ``thresholds`` x ``fills``: what :func:`evaluate` counts on each
    such subset (full radius, per tomogram), without building a table per subset.

    Training validation scores 54 subsets per epoch; through :func:`evaluate` that cost
    about 5 s of a 25-s epoch on the realistic benchmark, all in pandas. A class appears
    at a ``(t, f)`` only when it has truth or picks there, as in :func:`evaluate`."""
    pred = _same_voxel_size(_usable(picks), truth)
    true = _usable(truth)
    pz, tz = pred.zyx, true.zyx
    pc, tc = pred.table["class_name"].to_numpy(), true.table["class_name"].to_numpy()
    pt, tt = pred.table["tomogram"].astype(str).to_numpy(), true.table["tomogram"].astype(str).to_numpy()
    score = pred.table["score"].to_numpy(dtype=float)
    fill = pred.table["fill"].to_numpy(dtype=float) if "fill" in pred.table else np.ones(len(pred))
    present = set(pc) | set(tc)
    missing = sorted(n for n in present if n not in classes)
    if missing:
        raise ValueError(f"class {missing[0]!r} is not in the class table; add it with its diameter")
    out: dict[str, dict[tuple[float, float], tuple[int, int, int]]] = {}
    for c in classes:
        if c.name not in present:
            continue
        pm, tm = pc == c.name, tc == c.name
        names = list(dict.fromkeys(list(pt[pm]) + list(tt[tm])))
        if not pm.any() or not tm.any() or "" in names:  # evaluate's rule: per tomogram only when all are named
            groups = [(pm, tm)]
        else:
            groups = [(pm & (pt == n), tm & (tt == n)) for n in names]
        n_true = int(tm.sum())
        table = out.setdefault(c.name, {})
        for t in thresholds:
            for f in fills:
                keep = (score >= t) & (fill >= f)
                n_pred = int((pm & keep).sum())
                if n_pred == 0 and n_true == 0:
                    continue
                tp = sum(len(match(pz[g & keep], tz[h], c.radius)[2]) for g, h in groups)
                table[(t, f)] = (tp, n_pred - tp, n_true - tp)
    return out


def czii_score(
    picks: Picks,
    truth: Picks,
    classes_radius_A: Mapping[str, float] = CZII_RADII_A,
    weights: Mapping[str, float] = CZII_WEIGHTS,
    voxel_size: float | None = None,
    beta: float = 4.0,
    distance_fraction: float = CZII_DISTANCE_FRACTION,
) -> float:
    """The CZII cryo-ET object identification (Kaggle) score.

    Per class with a weight: picks match truths within ``0.5 x radius`` (radius in
    Angstrom, converted with ``voxel_size`` Angstrom/voxel; default the truth's, else the
    picks', voxel size), per tomogram; TP/FP/FN are summed over tomograms; F-beta (beta 4)
    per class; the result is the weighted mean over the classes in ``weights``. As in the
    Kaggle code, precision and recall are 0 when their denominator is 0.

    Differences from the Kaggle code: matching is one-to-one (Kaggle counts every true
    particle with any pick nearby as a TP, which can differ when true particles are
    closer than the threshold), and weighted classes absent from both picks and truth
    are left out of the mean instead of scoring 0. Classes without a weight are ignored;
    a weighted class without a radius raises ValueError. ``rejected`` rows are ignored.
    """
    pred = _usable(picks)
    true = _usable(truth)
    vs = voxel_size or truth.voxel_size or picks.voxel_size
    if vs is None:
        raise ValueError("czii_score: voxel size unknown; pass voxel_size (Angstrom per voxel)")
    vs = float(vs)
    if pred.voxel_size is not None and pred.voxel_size != vs:
        pred = pred.rescaled(vs)
    if true.voxel_size is not None and true.voxel_size != vs:
        true = true.rescaled(vs)
    present = set(pred.class_names) | set(true.class_names)
    num = den = 0.0
    for name, w in weights.items():
        if name not in present:
            continue
        if name not in classes_radius_A:
            raise ValueError(f"czii_score: no radius for class {name!r}")
        thr = distance_fraction * float(classes_radius_A[name]) / vs
        p = pred.select(class_name=name)
        t = true.select(class_name=name)
        tp, _ = _count(p, t, thr, per_tomogram=True)
        fp, fn = len(p) - tp, len(t) - tp
        precision = tp / (tp + fp) if tp + fp > 0 else 0.0
        recall = tp / (tp + fn) if tp + fn > 0 else 0.0
        num += float(w) * fbeta(precision, recall, beta)
        den += float(w)
    return num / den if den > 0 else 0.0
