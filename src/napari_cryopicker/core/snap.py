"""Clicks moved onto their particle's centre of density before the networks learn from them.

A hand's click is seldom on a particle's centre: on the realistic benchmark's off-centre
clicks (up to half a radius off) they sit 0.24-0.29 radii from it on average. The labels
painted around them (truncated balls) then teach the network a centre that is not where
the particle is, and on crowded data a ball half a radius off spills onto a neighbour.
:func:`snap_to_density` moves each click to the centre of mass of the particle's density
around it (smoothed, above the level of a shell just outside it, in the particles'
polarity), a few times over: on the benchmark's ~28- and ~24-voxel classes that brings
the clicks to 0.06-0.11 radii of the truth (``benchmarks/.cache/scratch/com23.py``,
``snap23.py``). On a 14-voxel class the noise and the neighbours pull the centre of mass
about (0.22-0.28 -> 0.17-0.19 radii, a few further off than before), so only classes of at least
:data:`SNAP_MIN_RADIUS` voxels are moved (:class:`ClickSnapping`,
``TrainConfig.snap_clicks``). The user's picks are left where they were clicked: only the
labels the networks learn from move."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .classes import ClassTable
from .errors import Cancelled
from .picks import Picks
from .progress import Progress

#: classes whose clicks are moved: radius in voxels of the full-resolution tomogram
SNAP_MIN_RADIUS = 10.0
#: a click the centre of mass pulls further than this many radii is left where it is
#: (the density of a neighbour, not of its own particle)
SNAP_MAX_SHIFT = 0.75


def _box(data, centre: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``data`` within ``half`` voxels of ``centre`` (clipped at the edges), as
    float32, and its first corner."""
    c = np.round(centre).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, np.asarray(data.shape[:3]))
    return np.asarray(data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32), lo


def polarity(data, zyx: np.ndarray, radius: float) -> float:
    """-1 if the particles at ``zyx`` are darker than what is just around them (the usual
    contrast of a tomogram), else 1; by the mean over the clicks."""
    half = int(np.ceil(1.5 * radius)) + 1
    diffs = []
    for p in np.asarray(zyx, float).reshape(-1, 3):
        box, lo = _box(data, p, half)
        d = np.linalg.norm(np.indices(box.shape).reshape(3, -1).T + lo - p, axis=1).reshape(box.shape)
        inner, shell = d <= 0.5 * radius, (d > radius) & (d <= 1.5 * radius)
        if inner.any() and shell.any():
            diffs.append(box[inner].mean() - box[shell].mean())
    return -1.0 if diffs and float(np.mean(diffs)) < 0 else 1.0


def snap_to_density(data, zyx, radius: float, *, sign: float | None = None, iterations: int = 4,
                    max_shift: float = SNAP_MAX_SHIFT) -> np.ndarray:
    """``zyx`` (voxels of ``data``, ``[z, y, x]``) each moved to the centre of mass of the
    density within ``radius`` of it, repeated up to ``iterations`` times; the density is
    smoothed (Gaussian, sigma ``radius / 4``) and counted where it is above the median of
    the shell ``radius``..``1.5 radius`` around the click, in the particles' polarity
    ``sign`` (-1: dark particles; None: from the clicks, :func:`polarity`). A click moved
    more than ``max_shift`` radii, or with no density above its shell, stays where it is."""
    zyx = np.asarray(zyx, float).reshape(-1, 3)
    if not len(zyx):
        return zyx.copy()
    if sign is None:
        sign = polarity(data, zyx, radius)
    reach = max_shift * radius
    half = int(np.ceil(1.5 * radius + reach)) + 2
    sigma = max(1.0, radius / 4.0)
    out = zyx.copy()
    for k, start in enumerate(zyx):
        box, lo = _box(data, start, half)
        if min(box.shape) < 3:
            continue
        box = sign * ndimage.gaussian_filter(box, sigma)
        grid = [np.arange(n, dtype=np.float32) + o for n, o in zip(box.shape, lo)]
        p = start.copy()
        for _ in range(iterations):
            dz, dy, dx = (g - c for g, c in zip(grid, p))
            d = np.sqrt(dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2)
            shell = (d > radius) & (d <= 1.5 * radius)
            inside = d <= radius
            if not shell.any() or not inside.any():
                break
            w = np.where(inside, np.clip(box - np.median(box[shell]), 0, None), 0.0)
            total = float(w.sum())
            if total <= 0:
                break
            new = np.array([float((w.sum(axis=(1, 2)) * grid[0]).sum()), float((w.sum(axis=(0, 2)) * grid[1]).sum()),
                            float((w.sum(axis=(0, 1)) * grid[2]).sum())]) / total
            moved = float(np.linalg.norm(new - p))
            p = new
            if moved < 0.2:
                break
        if np.linalg.norm(p - start) <= reach:
            out[k] = p
    return out


class ClickSnapping:
    """Moves the positive picks of the classes of at least :data:`SNAP_MIN_RADIUS` voxels
    onto their particle's centre of density (:func:`snap_to_density`), one table per
    tomogram; what it moved once it remembers, so that live training, which hands it the
    whole table before every epoch, moves each new pick only once. Rejections stay."""

    def __init__(self, data: Sequence, classes: ClassTable, min_radius: float = SNAP_MIN_RADIUS,
                 progress: Progress | None = None):
        self.data = list(data)
        self.progress = progress  # a Stop while picks are moved (many tomograms: seconds) stops there
        self.names = [c.name for c in classes if c.radius >= min_radius]
        self.radius = {c.name: c.radius for c in classes}
        self._sign: dict[int, float] = {}  # tomogram -> polarity of its particles
        self._known: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _key(i: int, name: str, p: np.ndarray) -> tuple:
        return (i, name, *np.round(np.asarray(p, float), 3).tolist())

    def apply(self, picks: Sequence[Picks]) -> list[Picks]:
        if not self.names:
            return list(picks)
        out = []
        for i, p in enumerate(picks):
            names = p.table["class_name"].to_numpy().astype(str)
            positive = ~(p.table["source"] == "rejected").to_numpy() if "source" in p.table else np.ones(len(p), bool)
            p = p.copy()
            cols = [p.table.columns.get_loc(c) for c in ("z", "y", "x")]
            mine = positive & np.isin(names, self.names)
            if i not in self._sign and mine.any():  # the tomogram's contrast, from its first picks
                r = np.array([self.radius[n] for n in names[mine]])
                self._sign[i] = polarity(self.data[i], p.zyx[mine], float(np.median(r)))
            for name in self.names:
                rows = np.flatnonzero((names == name) & positive)
                if not len(rows):
                    continue
                zyx = p.zyx[rows]
                if self.progress is not None and self.progress.cancelled:
                    raise Cancelled("training was stopped before the first epoch finished (while the clicks "
                                    "were moved onto their centres); no model was saved")
                new = [k for k, a in enumerate(zyx) if self._key(i, name, a) not in self._known]
                if new:
                    moved = snap_to_density(self.data[i], zyx[new], self.radius[name], sign=self._sign[i])
                    for k, b in zip(new, moved):
                        self._known[self._key(i, name, zyx[k])] = b
                p.table.iloc[rows, cols] = np.array([self._known[self._key(i, name, a)] for a in zyx])
            out.append(p)
        return out
