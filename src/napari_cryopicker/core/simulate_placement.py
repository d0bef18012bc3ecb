"""Where the objects of a phantom tomogram go: non-overlapping spheres on a spatial hash
(:class:`_Occupancy`), and the placement of membranes, gold beads and particles in the
sample slab, drawing from the simulation's random generator in a fixed order (see
:func:`.simulate.simulate_tomogram`)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from .classes import ClassTable
from .simulate_shapes import MEMBRANE_HALF_THICKNESS


class _Occupancy:
    """Spheres on a spatial hash; ``free`` tests a new sphere against all of them."""

    def __init__(self, cell: float, margin: float):
        self.cell = float(cell)
        self.margin = float(margin)
        self.grid: dict[tuple[int, int, int], list[int]] = defaultdict(list)
        self.centres: list[np.ndarray] = []
        self.radii: list[float] = []

    def _key(self, p: np.ndarray) -> tuple[int, int, int]:
        k = np.floor(p / self.cell).astype(int)
        return int(k[0]), int(k[1]), int(k[2])

    def free(self, p: np.ndarray, r: float) -> bool:
        kz, ky, kx = self._key(p)
        for dz in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    for i in self.grid.get((kz + dz, ky + dy, kx + dx), ()):
                        q = self.centres[i]
                        if np.sum((p - q) ** 2) < (r + self.radii[i] + self.margin) ** 2:
                            return False
        return True

    def add(self, p: np.ndarray, r: float) -> None:
        self.grid[self._key(p)].append(len(self.centres))
        self.centres.append(np.asarray(p, dtype=float))
        self.radii.append(float(r))



def _clear_of(membranes: Sequence[tuple[np.ndarray, float]], p: np.ndarray, r: float, margin: float) -> bool:
    """Whether a sphere at ``p`` of radius ``r`` keeps ``margin`` clear of every membrane."""
    for c, rad in membranes:
        if abs(float(np.linalg.norm(p - c)) - rad) < r + margin + MEMBRANE_HALF_THICKNESS:
            return False
    return True


def _place_membranes(
    rng: np.random.Generator, shape: Sequence[int], slab: tuple[int, int], n_membranes: int, info: list[dict]
) -> list[tuple[np.ndarray, float]]:
    """A vesicle in the slab and (``n_membranes > 1``) a large, gently curved sheet, as
    (centre, radius) of their mid-surface spheres; each also described in ``info``."""
    _, Y, X = shape
    z0, z1 = slab
    thick = z1 - z0
    membranes: list[tuple[np.ndarray, float]] = []
    rv = float(rng.uniform(0.3, 0.45)) * thick
    rv = max(rv, 6.0)
    cv = np.array(
        [(z0 + z1) / 2.0 + rng.uniform(-0.05, 0.05) * thick, rng.uniform(0.2, 0.8) * Y, rng.uniform(0.2, 0.8) * X]
    )
    membranes.append((cv, rv))
    info.append({"kind": "vesicle", "centre_zyx": cv.tolist(), "radius": rv})
    if n_membranes > 1:
        big = max(Y, X)
        rs = float(rng.uniform(2.0, 4.0)) * big
        phi = rng.uniform(0, 2 * np.pi)
        nz = rng.uniform(-0.4, 0.4)
        normal = np.array([nz, math.sin(phi), math.cos(phi)])
        normal /= np.linalg.norm(normal)
        p0 = np.array([(z0 + z1) / 2.0, rng.uniform(0.15, 0.85) * Y, rng.uniform(0.15, 0.85) * X])
        cs = p0 - rs * normal
        membranes.append((cs, rs))
        info.append({"kind": "sheet", "centre_zyx": cs.tolist(), "radius": rs})
    return membranes


def _place_beads(
    rng: np.random.Generator,
    occ: _Occupancy,
    membranes: Sequence[tuple[np.ndarray, float]],
    shape: Sequence[int],
    slab: tuple[int, int],
    n: int,
    rb: float,
    margin: float,
    info: list[dict],
) -> list[np.ndarray]:
    """Up to ``n`` gold beads of radius ``rb`` near the slab surfaces (100 tries each),
    added to ``occ``; each also described in ``info``."""
    _, Y, X = shape
    z0, z1 = slab
    beads: list[np.ndarray] = []
    for _ in range(n):
        for _try in range(100):
            top = rng.random() < 0.5
            zc = (z1 - rb - rng.uniform(0, 2)) if top else (z0 + rb + rng.uniform(0, 2))
            p = np.array([zc, rng.uniform(rb, Y - 1 - rb), rng.uniform(rb, X - 1 - rb)])
            if occ.free(p, rb) and _clear_of(membranes, p, rb, margin):
                occ.add(p, rb)
                beads.append(p)
                info.append({"kind": "gold", "centre_zyx": p.tolist(), "radius": rb})
                break
    return beads


def _place_particles(
    rng: np.random.Generator,
    occ: _Occupancy,
    membranes: Sequence[tuple[np.ndarray, float]],
    table: ClassTable,
    counts: Mapping[str, int],
    shape: Sequence[int],
    slab: tuple[int, int],
    margin: float,
) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """Particle centres by class (largest class first, rejection sampling), and
    ``"name placed/wanted"`` for each class that did not all fit."""
    _, Y, X = shape
    z0, z1 = slab
    order = sorted(table, key=lambda c: -c.diameter)
    placed: dict[str, list[np.ndarray]] = {c.name: [] for c in table}
    short: list[str] = []
    for cls in order:
        r = cls.radius
        want = counts[cls.name]
        zlo, zhi = z0 + r, z1 - 1 - r
        if zhi < zlo:  # slab thinner than the particle: centre it in the slab
            zlo = zhi = (z0 + z1 - 1) / 2.0
        ylo, yhi = min(r / 2, (Y - 1) / 2), max(Y - 1 - r / 2, (Y - 1) / 2)
        xlo, xhi = min(r / 2, (X - 1) / 2), max(X - 1 - r / 2, (X - 1) / 2)
        tries = 0
        budget = 200 * max(want, 1)
        while len(placed[cls.name]) < want and tries < budget:
            tries += 1
            p = np.array([rng.uniform(zlo, zhi), rng.uniform(ylo, yhi), rng.uniform(xlo, xhi)])
            if occ.free(p, r) and _clear_of(membranes, p, r, margin):
                occ.add(p, r)
                placed[cls.name].append(p)
        if len(placed[cls.name]) < want:
            short.append(f"{cls.name} {len(placed[cls.name])}/{want}")
    return placed, short

