"""The realistic preset of the simulator: a crowded cell slab imaged as a real tilt series.

:func:`simulate_realistic` builds what a cryo-ET user actually faces, so that accuracy
measured on it means something (the ``simple`` preset in :mod:`.simulate` is for quick
tests):

* **Sample.** A slab of vitreous ice (``slab_fraction`` of z) crowded like cytoplasm:
  about 1,450 particles of the 13 classes of :data:`REALISTIC_CLASSES` in 200 x 512 x 512
  voxels at 10 A (SHREC'21's density), their bounding spheres allowed to touch. Each class
  is a fixed irregular body, the same in every tomogram: a seeded union of Gaussian
  blobs arranged as two lobes (ribosome-like), a capped barrel (26S proteasome-like),
  double rings, shells, rods, rings or globules, with internal texture; its integrated
  potential over the ice is that of the complex it stands for (the SHREC'21 map of the
  ribosome, mitoribosome and proteasome; a literature mass for the others: see
  :data:`.realistic_bodies.REALISTIC_CLASSES`). Truth centres are the centres of mass.
  Ribosome-like particles partly cluster in short polysome chains.
  Membranes (a large curved sheet and vesicles, two Gaussian leaflets), gold fiducials
  near the slab surfaces, and a textured background (small unresolved molecules: a
  low-pass random field) are not in the truth.
* **Acquisition and reconstruction** (:mod:`.tilt`): a tilt series about Y (default -60
  to 60 degrees in 3-degree steps) of the projected potential, each view through an
  unflipped CTF (default 3 um underfocus, 300 kV, Cs 2.7 mm, 7 % amplitude contrast,
  B-factor envelope), gold absorbed as amplitude contrast, fewer electrons through the
  thicker ice of high tilts, shot noise for the dose (default 100 e/A^2 over the series),
  optionally a per-view alignment error; then weighted back-projection with IMOD's radial
  filter. The wedge, streaks from the gold, CTF fringes and noise texture come out of
  that. The result is standardised (mean 0, SD 1) with dense matter dark.

``maps`` replaces the procedural body of a class with a density map (for example the
SHREC'21 maps, resampled to ``voxel_size`` by the caller; in volts over the solvent), for
checking the simulator against real densities by hand. The product never needs them.

The class library and the bodies are in :mod:`.realistic_bodies`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from . import tilt
from .classes import ClassTable
from .picks import Picks
from .progress import Progress, ensure
from .simulate import SimulatedTomogram
from .simulate_placement import _Occupancy
from .simulate_shapes import MEMBRANE_HALF_THICKNESS, _render_bilayer_sphere, truth_in_order

from .realistic_bodies import (  # the class library and bodies (the public ones re-exported: __all__)
    BENCHMARK_CLASSES,
    REALISTIC_CLASSES,
    UNIT_VOLTS,
    _SPECS,
    ClassSpec,
    _paste,
    _rotated,
    class_template,
    realistic_classes,
)

__all__ = ["BENCHMARK_CLASSES", "REALISTIC_CLASSES", "ClassSpec", "class_template", "realistic_classes",
           "simulate_realistic"]

#: Phase shift per A of unit density (1.5 V over the ice) at 300 kV: sigma_e = 6.53e-4 rad/(V A).
PHASE_PER_ANGSTROM = 6.53e-4 * UNIT_VOLTS
MEAN_INNER_V = UNIT_VOLTS  # volts above the ice of one density unit
#: Particles per class per million voxels: about 112 per class in 200 x 512 x 512 (SHREC'21).
REALISTIC_DENSITY = 2.13
REALISTIC_SHAPE = (200, 512, 512)


# ------------------------------------------------------------------------------ layout
def _place(rng, table: ClassTable, counts: Mapping[str, int], shape, slab, membranes, beads, *, touch: float,
           chain_fraction: float) -> dict[str, list[np.ndarray]]:
    Z, Y, X = shape
    z0, z1 = slab
    max_r = max(c.radius for c in table)
    occ = _Occupancy(cell=2 * max_r, margin=-touch)
    for p, rb in beads:
        occ.add(p, rb + 1.0)

    def clear(p, r):
        for c, rad in membranes:
            if abs(float(np.linalg.norm(p - c)) - rad) < r + MEMBRANE_HALF_THICKNESS:
                return False
        return True

    placed: dict[str, list[np.ndarray]] = {c.name: [] for c in table}
    for cls in sorted(table, key=lambda c: -c.diameter):
        r = cls.radius
        want = counts.get(cls.name, 0)
        lo = np.array([z0 + r * 0.8, r * 0.5, r * 0.5])
        hi = np.array([z1 - 1 - r * 0.8, Y - 1 - r * 0.5, X - 1 - r * 0.5])
        hi = np.maximum(hi, lo)
        tries, budget = 0, 400 * max(want, 1)
        chain: list[np.ndarray] = []
        while len(placed[cls.name]) < want and tries < budget:
            tries += 1
            if chain and rng.random() < 0.9:  # polysome-like: next one beside the last
                d = rng.normal(size=3)
                p = chain[-1] + d / np.linalg.norm(d) * (2 * r + rng.uniform(0, 2))
                if np.any(p < lo) or np.any(p > hi):
                    chain = []
                    continue
            else:
                chain = []
                p = rng.uniform(lo, hi)
            if occ.free(p, r) and clear(p, r):
                occ.add(p, r)
                placed[cls.name].append(p)
                if cls.name in ("ribosome", "mitoribosome") and rng.random() < chain_fraction:
                    chain.append(p)
                    if len(chain) > 5:
                        chain = []
                else:
                    chain = []
    return placed


def _counts(table: ClassTable, shape, density: float, n_per_class) -> dict[str, int]:
    n = int(round(density * float(np.prod(shape)) / 1e6))
    if n_per_class is None:
        return {c.name: n for c in table}
    if isinstance(n_per_class, Mapping):
        return {c.name: int(n_per_class.get(c.name, n)) for c in table}
    return {c.name: int(n_per_class) for c in table}


def _background(rng, shape, slab, amplitude: float) -> np.ndarray:
    """Cytoplasm too small to resolve: a band-limited random field inside the slab."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    f = sfft.rfftn(noise, workers=-1)
    kz = sfft.fftfreq(shape[0]).astype(np.float32)[:, None, None]
    ky = sfft.fftfreq(shape[1]).astype(np.float32)[None, :, None]
    kx = sfft.rfftfreq(shape[2]).astype(np.float32)[None, None, :]
    k2 = kz * kz + ky * ky + kx * kx
    f *= np.exp(-k2 / np.float32(2 * 0.08**2))  # ~2 nm grain at 10 A
    field = sfft.irfftn(f, s=shape, workers=-1).astype(np.float32)
    sd = float(field.std()) or 1.0
    field *= np.float32(amplitude / sd)
    z0, z1 = slab
    field[:z0] = 0
    field[z1:] = 0
    return field


# ------------------------------------------------------------------------------ simulation
def simulate_realistic(
    shape: Sequence[int] = REALISTIC_SHAPE,
    seed: int | None = 0,
    *,
    classes: Sequence[str] | None = None,
    density: float = REALISTIC_DENSITY,
    n_per_class: int | Mapping[str, int] | None = None,
    voxel_size: float = 10.0,
    tilt_min: float = -60.0,
    tilt_max: float = 60.0,
    tilt_step: float = 3.0,
    defocus_um: float = 3.0,
    bfactor: float = 100.0,
    dose: float | None = 100.0,
    snr: float | None = None,
    slab_fraction: float = 0.75,
    n_gold: int | None = None,
    gold_diameter_nm: float = 10.0,
    n_vesicles: int | None = None,
    background: float = 0.15,
    shift_sd: float = 0.0,
    touch: float = 0.5,
    chain_fraction: float = 0.3,
    maps: Mapping[str, np.ndarray] | None = None,
    calibrated: bool = True,
    name: str = "tomogram",
    keep_clean: bool = False,
    keep_tilt_series: bool = False,
    progress: Progress | None = None,
) -> SimulatedTomogram:
    """Simulate a realistic tomogram and its truth; see the module doc.

    ``dose`` is e/A^2 over the whole series (``snr`` instead sets
    ``var(clean view) / var(noise)`` per view); ``touch`` is how far (voxels) bounding
    spheres of neighbours may overlap; ``shift_sd`` (pixels) is a per-view alignment error;
    ``classes`` limits the library to those names. ``calibrated=False`` keeps the bodies
    of sessions up to 17, lighter than their real counterparts (only the ribosome was
    matched), to repeat the numbers measured on them. With ``keep_clean`` the result's
    ``clean`` holds the potential (unit density); with ``keep_tilt_series`` its
    ``tilt_series`` holds the recorded views and ``tilt_angles`` the angles.
    """
    prog = ensure(progress)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes >= 8 (z, y, x), got {shape}")
    if dose is not None and not dose > 0:
        raise ValueError(f"dose must be > 0 e/A^2, got {dose}")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    table = realistic_classes(voxel_size, classes)
    counts = _counts(table, shape, density, n_per_class)
    rng = np.random.default_rng(seed)
    steps = 6
    prog.update(0, steps, "placing particles")
    Z, Y, X = shape
    thick = max(8, int(round(slab_fraction * Z)))
    z0 = (Z - thick) // 2
    z1 = z0 + thick
    scale = float(np.prod(shape)) / float(np.prod(REALISTIC_SHAPE))

    membranes: list[tuple[np.ndarray, float]] = []
    info: list[dict] = []
    # a large, gently curved sheet (plasma membrane / ER) and some vesicles
    big = max(Y, X)
    rs = float(rng.uniform(2.0, 3.5)) * big
    phi = rng.uniform(0, 2 * np.pi)
    normal = np.array([rng.uniform(-0.3, 0.3), math.sin(phi), math.cos(phi)])
    normal /= np.linalg.norm(normal)
    p0 = np.array([(z0 + z1) / 2.0, rng.uniform(0.1, 0.9) * Y, rng.uniform(0.1, 0.9) * X])
    membranes.append((p0 - rs * normal, rs))
    info.append({"kind": "sheet", "centre_zyx": membranes[-1][0].tolist(), "radius": rs})
    nv = max(1, int(round(4 * scale))) if n_vesicles is None else int(n_vesicles)
    for _ in range(nv):
        rv = float(rng.uniform(0.15, 0.4)) * thick
        cv = np.array([rng.uniform(z0 + rv * 0.5, z1 - rv * 0.5), rng.uniform(0, Y), rng.uniform(0, X)])
        membranes.append((cv, rv))
        info.append({"kind": "vesicle", "centre_zyx": cv.tolist(), "radius": rv})
    beads: list[tuple[np.ndarray, float]] = []
    rb = gold_diameter_nm * 10.0 / voxel_size / 2.0
    nb = max(1, int(round(10 * scale))) if n_gold is None else int(n_gold)
    for _ in range(nb):
        top = rng.random() < 0.5
        zc = (z1 - rb - rng.uniform(0, 3)) if top else (z0 + rb + rng.uniform(0, 3))
        p = np.array([zc, rng.uniform(rb, Y - 1 - rb), rng.uniform(rb, X - 1 - rb)])
        beads.append((p, rb))
        info.append({"kind": "gold", "centre_zyx": p.tolist(), "radius": rb})

    placed = _place(rng, table, counts, shape, (z0, z1), membranes, beads, touch=touch,
                    chain_fraction=chain_fraction)
    names, zyx, mats, angles = truth_in_order(table, placed, rng)

    prog.update(1, steps, "rendering particles")
    prog.check()
    potential = _background(rng, shape, (z0, z1), background) if background else np.zeros(shape, np.float32)
    templates: dict[str, np.ndarray] = {}
    for nm in table.names:
        if maps is not None and nm in maps:
            m = np.asarray(maps[nm], dtype=np.float32) / np.float32(MEAN_INNER_V)
            com = np.array(ndimage.center_of_mass(np.clip(m, 0, None))) - (np.asarray(m.shape) - 1) / 2.0
            templates[nm] = ndimage.shift(m, -com, order=1).astype(np.float32)
        else:
            templates[nm] = class_template(nm, voxel_size, calibrated)
    for i, (p, nm) in enumerate(zip(zyx, names)):
        t = templates[nm]
        ci = np.floor(p).astype(int)
        box = _rotated(t, mats[i], p - ci)
        _paste(potential, box, ci - (np.asarray(t.shape) - 1) // 2)
        if i % 128 == 127:
            prog.check()
    for c, rad in membranes:
        _render_bilayer_sphere(potential, c, rad, (z0, z1))
    clean = potential.copy() if keep_clean else None

    prog.update(2, steps, "projecting the tilt series")
    prog.check()
    angles_deg = tilt.tilt_angles(tilt_min, tilt_max, tilt_step)
    phase = tilt.project(potential, angles_deg, z_range=(z0, z1))
    del potential
    phase *= np.float32(PHASE_PER_ANGSTROM * voxel_size)
    gold = _gold_projections(beads, angles_deg, (Z, Y, X)) if beads else None

    prog.update(3, steps, "CTF, dose and noise")
    prog.check()
    views, _ = tilt.record_views(phase, angles_deg, voxel_size, rng=rng, gold_proj=gold, defocus_um=defocus_um,
                                 bfactor=bfactor, dose=dose, snr=snr, thickness_nm=thick * voxel_size / 10.0,
                                 shift_sd=shift_sd)
    del phase, gold

    prog.update(4, steps, "weighted back-projection")
    prog.check()
    data = tilt.weighted_backprojection(views, angles_deg, shape)
    prog.update(5, steps, "normalising")
    m = float(data[z0:z1].mean(dtype=np.float64))
    sd = float(data[z0:z1].std(dtype=np.float64))
    data -= np.float32(m)
    if sd > 0:
        data /= np.float32(sd)

    picks = Picks.from_zyx(zyx, class_name=names if names else "particle", score=1.0, source="imported",
                           tomogram=name, voxel_size=voxel_size, angles=angles)
    prog.update(steps, steps, "done")
    sim = SimulatedTomogram(
        data=data, picks=picks, classes=table, voxel_size=float(voxel_size), angles=angles, name=name,
        shapes={c.name: _SPECS[c.name].body for c in table}, slab=(z0, z1), snr=snr,
        tilt_range=float(max(abs(tilt_min), abs(tilt_max))), distractors=info, clean=clean,
    )
    if keep_tilt_series:
        sim.tilt_series = views
        sim.tilt_angles = angles_deg
    return sim


def _gold_projections(beads, angles_deg, shape) -> np.ndarray:
    """Projected thickness (voxels) of the gold spheres in every view, analytically."""
    Z, Y, X = shape
    cz, cx = (Z - 1) / 2.0, (X - 1) / 2.0
    out = np.zeros((len(angles_deg), Y, X), dtype=np.float32)
    for i, a in enumerate(angles_deg):
        t = math.radians(float(a))
        for p, r in beads:
            u = cx + (p[2] - cx) * math.cos(t) + (p[0] - cz) * math.sin(t)
            y0, y1 = max(int(p[1] - r - 1), 0), min(int(p[1] + r + 2), Y)
            u0, u1 = max(int(u - r - 1), 0), min(int(u + r + 2), X)
            if y1 <= y0 or u1 <= u0:
                continue
            yy, uu = np.mgrid[y0:y1, u0:u1]
            d2 = (yy - p[1]) ** 2 + (uu - u) ** 2
            out[i, y0:y1, u0:u1] += 2.0 * np.sqrt(np.clip(r * r - d2, 0, None)).astype(np.float32)
    return out
