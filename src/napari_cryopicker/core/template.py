"""A class's template averaged from its clicks, and local template matching of its candidates.

Forty clicks show a small particle in forty orientations; a network taught from them learns
each orientation nearly from one noisy example. Template matching turns one template
through every orientation instead. Here the template is the clicks' own average: the
boxes around them are aligned to each other without a reference (to one of them turned at
random first, then turned and shifted to match the average they make, a few times over,
from a few random starts, keeping the average they match best; :func:`build_template`), so
no map of the complex is needed. The network's candidates of
that class are then scored by the best normalised cross-correlation (NCC) with the
template over :func:`rotations` and shifts of up to ``search`` voxels (:class:`Matcher`),
at the tomogram's full resolution, and each moves to its best shift.

The template and the data are compared through the data's missing wedge (about y, a tilt
range of ``tilt_range`` degrees): each turned template has that wedge cut out before it is
compared. A candidate's score is its NCC; the class's threshold is ``THRESHOLD_SHARE`` of
the clicks' median NCC with the finished template, lowered when few clicks flatter
themselves (:func:`_left_out_share`, ``REFERENCE_SHARE``).

On the realistic benchmark it took the 14-nm chaperonin (7 voxels across at the network's
bin 2) from F1 0.64-0.69 to 0.87-0.90 (docs/method.md, "Templates averaged from the clicks").
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .progress import Progress, ensure
from .simulate_optics import missing_wedge_mask

#: orientations searched (a super-Fibonacci set, ~25 degrees apart)
ROTATIONS = 1000
#: voxels a candidate may move to its best match (each axis)
SEARCH = 3
#: alignment rounds of the clicks
ITERATIONS = 5
#: alignments from different random starts; the one the clicks match best is kept
RESTARTS = 4
#: how an alignment starts: from one particle, turned at random ("particle"), or from the
#: mean of all, each turned at random ("mean", before session 26). From 28 off-centre
#: chaperonin clicks, 4 starts from the mean found a template of precision 0.29-0.36 for
#: two of three random seeds (0.79 for the third); 4 starts from one particle found
#: 0.95-1.00 for all three, at recall 0.34-0.38 against 0.44-0.49 (capped by the network's
#: candidates), F1 0.51-0.54 against 0.37-0.56 (benchmarks/README.md, session 26)
START = "particle"
#: the class threshold as a share of the clicks' median NCC
THRESHOLD_SHARE = 0.8
#: ... lowered in proportion when the clicks' left-out share (_left_out_share) is under
#: this, as with few clicks: 40 chaperonin clicks of the realistic benchmark give
#: 0.874-0.895 (so their threshold is as before), 20 give 0.71, 12 0.62, 8 0.42
REFERENCE_SHARE = 0.87
#: the comparison sphere's radius, as a multiple of the particle radius (plus one voxel)
MASK_SCALE = 1.1


def rotations(n: int) -> np.ndarray:
    """``n`` rotations spread evenly over all orientations (super-Fibonacci spirals, Alexa
    2022), as (n, 3, 3) matrices acting on (z, y, x) offsets. Deterministic."""
    phi, psi = math.sqrt(2.0), 1.533751168755204288118041
    s = np.arange(n) + 0.5
    r, big = np.sqrt(s / n), np.sqrt(1.0 - s / n)
    a, b = 2 * np.pi * s / phi, 2 * np.pi * s / psi
    w, x, y, z = r * np.sin(a), r * np.cos(a), big * np.sin(b), big * np.cos(b)
    m = np.empty((n, 3, 3))  # the (x, y, z) matrix of each unit quaternion
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return m[:, ::-1, ::-1].copy()  # the same rotations on (z, y, x)


def box_half(radius: float) -> int:
    """Half the edge of the (odd) box a template of particle radius ``radius`` lives in."""
    return int(math.ceil(radius * MASK_SCALE + 1.0)) + 2


def sphere(half: int, radius: float) -> np.ndarray:
    g = np.arange(-half, half + 1)
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    return (zz * zz + yy * yy + xx * xx) <= (radius * MASK_SCALE + 1.0) ** 2


def turn(volume: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """``volume`` turned by ``rot`` (z, y, x) about its centre (linear interpolation)."""
    c = (np.asarray(volume.shape, float) - 1.0) / 2.0
    return ndimage.affine_transform(volume, rot.T, offset=c - rot.T @ c, order=1, mode="constant",
                                    cval=float(volume.mean())).astype(np.float32)


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12)


def read_boxes(data, centre, half: int, search: int) -> np.ndarray:
    """Every box of edge ``2 half + 1`` centred within ``search`` voxels of ``centre`` (the
    nearest voxel), shape (n_shifts, P, P, P), float32; outside the volume the edge is
    mirrored."""
    c = np.round(np.asarray(centre, float)).astype(int)
    reach = half + search
    lo, hi = c - reach, c + reach + 1
    shape = np.asarray(data.shape)
    a, b = np.clip(lo, 0, shape), np.clip(hi, 0, shape)
    if np.any(b <= a):
        block = np.zeros(hi - lo, np.float32)
    else:
        block = np.asarray(data[a[0]:b[0], a[1]:b[1], a[2]:b[2]], dtype=np.float32)
        pad = [(int(x - y), int(z - w)) for x, y, z, w in zip(a, lo, hi, b)]
        if any(p != (0, 0) for p in pad):
            block = np.pad(block, pad, mode="reflect" if min(block.shape) > 1 else "edge")
    p = 2 * half + 1
    win = np.lib.stride_tricks.sliding_window_view(block, (p, p, p))
    return win.reshape(-1, p, p, p)


def _shifts(search: int) -> np.ndarray:
    g = np.arange(-search, search + 1)
    return np.array(np.meshgrid(g, g, g, indexing="ij")).reshape(3, -1).T


@dataclass
class Template:
    """A class's averaged template (full-resolution voxels, z y x) and its threshold."""

    volume: np.ndarray
    radius: float            # the particle radius, voxels
    threshold: float         # NCC a candidate needs
    tilt_range: float = 60.0
    n_particles: int = 0
    clicks_median: float = 0.0
    left_out_share: float = 1.0  # see _left_out_share and REFERENCE_SHARE
    #: where :func:`build_template` found each of its particles (voxels, one array per
    #: volume): the clicks moved onto their best match; not saved
    centres: list | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"volume": np.asarray(self.volume, np.float32), "radius": float(self.radius),
                "threshold": float(self.threshold), "tilt_range": float(self.tilt_range),
                "n_particles": int(self.n_particles), "clicks_median": float(self.clicks_median),
                "left_out_share": float(self.left_out_share)}

    @classmethod
    def from_dict(cls, d: dict) -> Template:
        return cls(volume=np.asarray(d["volume"], np.float32), radius=float(d["radius"]),
                   threshold=float(d["threshold"]), tilt_range=float(d.get("tilt_range", 60.0)),
                   n_particles=int(d.get("n_particles", 0)), clicks_median=float(d.get("clicks_median", 0.0)),
                   left_out_share=float(d.get("left_out_share", 1.0)))


class Matcher:
    """A template turned through :func:`rotations`, its wedge cut, masked and normalised:
    ``score`` gives each position its best NCC over rotations and shifts."""

    def __init__(self, volume: np.ndarray, radius: float, tilt_range: float = 60.0, n_rot: int = ROTATIONS):
        self.half = (volume.shape[0] - 1) // 2
        self.mask = sphere(self.half, radius)
        self.rots = rotations(n_rot)
        wedge = missing_wedge_mask(volume.shape, tilt_range) if tilt_range < 90 else None
        rows = []
        for r in self.rots:
            t = turn(volume, r)
            if wedge is not None:
                t = np.fft.irfftn(np.fft.rfftn(t) * wedge, s=t.shape, axes=(0, 1, 2))
            rows.append(t[self.mask])
        self.matrix = _unit(np.asarray(rows, np.float32))

    def scores(self, boxes: np.ndarray) -> np.ndarray:
        """NCC of each box with each turned template, (n_boxes, n_rot)."""
        return _unit(boxes[:, self.mask].astype(np.float32)) @ self.matrix.T

    def score(self, data, zyx: np.ndarray, search: int = SEARCH,
              progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best NCC of each position (voxels) and the position it moved to."""
        progress = ensure(progress)
        zyx = np.asarray(zyx, float).reshape(-1, 3)
        out, moved = np.zeros(len(zyx)), zyx.copy()
        sh = _shifts(search)
        for i, p in enumerate(zyx):
            s = self.scores(read_boxes(data, p, self.half, search)).max(axis=1)
            k = int(np.argmax(s))
            out[i] = float(s[k])
            moved[i] = np.round(p) + sh[k]
            if i % 16 == 15:
                progress.check()
        return out, moved


def _polarity(boxes: Sequence[np.ndarray], half: int, radius: float) -> float:
    """-1 if the particles are darker than their surroundings (negative contrast), else 1."""
    inner = sphere(half, radius / MASK_SCALE - 1.0 / MASK_SCALE)
    shell = sphere(half, radius * 1.3) & ~sphere(half, radius)
    d = float(np.mean([b[inner].mean() - b[shell].mean() for b in boxes]))
    return -1.0 if d < 0 else 1.0


def _recentred(ref: np.ndarray, mask: np.ndarray, sign: float) -> np.ndarray:
    """``ref`` shifted so that its particle's centre of mass (the density of the particles'
    polarity ``sign`` above the level outside the sphere) is the box centre."""
    base = float(np.median(ref[~mask])) if (~mask).any() else 0.0
    w = np.clip(sign * (ref - base), 0, None) * mask
    if w.sum() <= 0:
        return ref
    com = np.array(ndimage.center_of_mass(w)) - (np.asarray(ref.shape) - 1) / 2.0
    if np.all(np.abs(com) < 0.25):
        return ref
    return ndimage.shift(ref, -com, order=1, mode="nearest").astype(np.float32)


def _align(stacks, centred, rots, rng, radius, tilt_range, iterations, mask, sign, progress, start=None,
           first: str = START):
    """One reference-free alignment from a random start (or the average ``start``): (average,
    each particle's NCC with it, the index of each particle's best shift, its best (shift,
    rotation)). The random start (``first``, :data:`START`): one particle turned at random
    ("particle"), or the mean of all turned at random ("mean")."""
    n_rot = len(rots)
    if start is not None:
        ref = start
    elif first == "particle":
        ref = turn(np.asarray(centred[rng.integers(len(centred))], np.float32), rots[rng.integers(n_rot)])
    else:
        ref = np.mean([turn(b, rots[rng.integers(n_rot)]) for b in centred], axis=0)
    own = np.zeros(len(stacks))
    where = np.zeros(len(stacks), int)
    poses = [(0, 0)] * len(stacks)
    for it in range(iterations + 1):
        progress.check()
        m = Matcher(ref, radius, tilt_range, n_rot)
        turned = []
        for i, b in enumerate(stacks):
            s = m.scores(b)
            k_shift, k_rot = np.unravel_index(int(np.argmax(s)), s.shape)
            own[i], where[i], poses[i] = float(s[k_shift, k_rot]), int(k_shift), (int(k_shift), int(k_rot))
            if it < iterations:
                turned.append(turn(np.asarray(b[k_shift], np.float32), rots[k_rot].T))  # into the template's frame
        if it == iterations:
            break  # ``own``: each particle's best NCC with the finished average
        ref = _recentred(np.mean(turned, axis=0), mask, sign)
    return ref, own, where, poses


def _left_out_share(stacks, poses, rots, mask, tilt_range: float) -> float:
    """How much of the particles' NCC with their own average is left when each is left out:
    the median over particles of NCC(particle, the average of the others) / NCC(particle,
    the average of all), both at the particle's best pose. A few particles flatter
    themselves (each is 1/N of the average): from 8 off-centre chaperonin clicks their
    median NCC was 0.405, from 40 0.344, and unseen chaperonins matched the 8-click
    template at ~0.22-0.26 (benchmarks/README.md, session 21)."""
    turned = [turn(np.asarray(b[k], np.float32), rots[r].T) for b, (k, r) in zip(stacks, poses)]
    total, n = np.sum(turned, axis=0), len(turned)
    wedge = missing_wedge_mask(turned[0].shape, tilt_range) if tilt_range < 90 else None

    def seen(ref, r):
        v = turn(ref, rots[r])
        if wedge is not None:
            v = np.fft.irfftn(np.fft.rfftn(v) * wedge, s=v.shape, axes=(0, 1, 2))
        return _unit(v[mask][None].astype(np.float32))[0]

    ratios = []
    for b, (k, r), t in zip(stacks, poses, turned):
        box = _unit(np.asarray(b[k], np.float32)[mask][None])[0]
        whole = float(seen(total / n, r) @ box)
        others = float(seen((total - t) / (n - 1), r) @ box)
        ratios.append(others / whole if whole > 1e-6 else 1.0)
    return float(np.clip(np.median(ratios), 0.0, 1.0))


def build_template(data: Sequence, zyx: Sequence[np.ndarray], radius: float, *, tilt_range: float = 60.0,
                   n_rot: int = ROTATIONS, iterations: int = ITERATIONS, search: int = SEARCH, seed: int = 0,
                   restarts: int = RESTARTS, first: str = START, progress: Progress | None = None) -> Template:
    """Average the particles at ``zyx`` (voxels, one array per volume of ``data``) into a
    template by reference-free alignment (each may move by up to ``search`` voxels: a click
    is seldom on the centre), and set the class threshold from them. The template's
    ``centres`` are the particles' positions moved onto their best match with it."""
    progress = ensure(progress)
    half = box_half(radius)
    mask = sphere(half, radius)
    rots = rotations(n_rot)
    zyx = [np.asarray(pts, float).reshape(-1, 3) for pts in zyx]
    stacks = [read_boxes(vol, p, half, search) for vol, pts in zip(data, zyx) for p in pts]
    if len(stacks) < 3:
        raise ValueError("a template needs at least 3 particles")
    centred = [b[len(b) // 2] for b in stacks]
    sign = _polarity(centred, half, radius)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(max(1, restarts)):  # alignment can settle on a poor average: keep the best start
        ref, own, where, poses = _align(stacks, centred, rots, rng, radius, tilt_range, iterations, mask, sign,
                                        progress, first=first)
        if best is None or own.mean() > best[1].mean():
            best = (ref, own, where, poses)
    ref, own, where, poses = best
    share = _left_out_share(stacks, poses, rots, mask, tilt_range)
    moved = np.round(np.concatenate(zyx[:len(data)])) + _shifts(search)[where]
    centres = np.split(moved, np.cumsum([len(p) for p in zyx[:len(data)]])[:-1])
    med = float(np.median(own))
    threshold = THRESHOLD_SHARE * med * min(1.0, share / REFERENCE_SHARE)
    return Template(volume=ref.astype(np.float32), radius=float(radius), threshold=threshold,
                    tilt_range=float(tilt_range), n_particles=len(stacks), clicks_median=med, left_out_share=share,
                    centres=centres)


_MATCHERS: dict = {}
_MATCHERS_LOCK = threading.Lock()


def matcher(t: Template) -> Matcher:
    """The :class:`Matcher` of ``t``, kept for the next call (live suggestions match the same
    template after every epoch; turning it 1,000 times takes a second or two)."""
    import hashlib

    key = (hashlib.sha1(np.ascontiguousarray(t.volume, np.float32).tobytes()).hexdigest(), t.radius, t.tilt_range)
    with _MATCHERS_LOCK:  # the training thread's suggestions and a "pick now" may ask at once
        if key not in _MATCHERS:
            if len(_MATCHERS) >= 4:
                _MATCHERS.pop(next(iter(_MATCHERS)))
            _MATCHERS[key] = Matcher(t.volume, t.radius, t.tilt_range)
        return _MATCHERS[key]


#: MP-NMS threshold for the candidates of a class with a template (its template decides)
CANDIDATE_FLOOR = 0.02


def rescore_picks(picks, data, templates: dict, *, floor: bool = False, progress: Progress | None = None):
    """``picks`` (in ``data``'s voxels) with each class of ``templates`` (name ->
    :meth:`Template.to_dict`) scored by its template: score = best NCC, position = best
    match, two candidates on one particle (closer than its radius) kept as the better,
    and only those at the template's threshold or above (half of it with ``floor``, for a
    threshold slider)."""
    from scipy.spatial import cKDTree

    progress = ensure(progress)
    if not len(picks) or not templates:
        return picks
    out = picks.copy()
    names = out.table["class_name"].to_numpy().astype(str)
    keep = np.ones(len(out), bool)
    for k, (name, d) in enumerate(templates.items()):
        rows = np.flatnonzero(names == name)
        if not len(rows):
            continue
        progress.update(k, len(templates), f"matching the {name} template")
        t = Template.from_dict(d)
        m = matcher(t)
        score, moved = m.score(data, out.zyx[rows], progress=progress)
        cols = [out.table.columns.get_loc(c) for c in ("z", "y", "x")]
        out.table.iloc[rows, cols] = moved  # by position: a concatenated table may repeat index labels
        out.table.iloc[rows, out.table.columns.get_loc("score")] = score
        order = rows[np.argsort(-score, kind="stable")]
        tree = cKDTree(moved)
        pos = {r: i for i, r in enumerate(rows)}
        gone = set()
        for r in order:
            if r in gone:
                continue
            for j in tree.query_ball_point(moved[pos[r]], max(t.radius, 1.0)):
                if rows[j] != r:
                    gone.add(int(rows[j]))
        keep[list(gone)] = False
        low = t.threshold * (0.5 if floor else 1.0)
        keep[rows[score < low]] = False
    return out.subset(keep)


__all__ = ["CANDIDATE_FLOOR", "Matcher", "Template", "build_template", "matcher", "read_boxes", "rescore_picks",
           "rotations", "turn"]
