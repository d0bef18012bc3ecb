"""Phantom tomograms with known particle positions, for demos, tests and benchmarks.

:func:`simulate_tomogram` builds a small but tomogram-like volume:

* **Sample slab.** Particles sit inside a flat slab (a lamella / ice layer) that fills the
  central ``slab_fraction`` (default 70 %) of z. Every particle lies fully inside the slab
  in z; in y and x its centre is at least half a radius from the border, so it is mostly
  inside the volume.
* **Particles.** Each class has its own shape, all rendered at uniformly random 3D
  orientations, with density 1 (protein) and a linear one-voxel ramp at the surface
  (partial-volume anti-aliasing). The shape of a class is chosen by its name
  (:data:`SHAPES`; unknown names cycle through the shapes in class order):

  ============ =========================================================================
  ribosome     two overlapping solid lobes (a large and a small one) along one axis
  shell        a hollow sphere, wall 30 % of the radius (apoferritin-like)
  barrel       a hollow open cylinder, height 1.6 r, outer radius 0.6 r (proteasome-like)
  blob         a solid tri-axial ellipsoid with semi-axes (1, 0.7, 0.55) r
  ============ =========================================================================

  Every shape fits exactly in the sphere of diameter ``d`` (the class diameter, voxels)
  centred on the particle centre, and touches it, so the *truth centre is the centre of
  the bounding sphere*. Particles never overlap: centres are at least
  ``r_i + r_j + margin`` apart (placement by rejection sampling on a spatial hash).
* **Distractors** (``distractors=True``, not in the truth): a few gold beads (solid
  spheres, ``bead_diameter`` voxels, density 3, i.e. much denser than protein) near the
  slab surfaces, and membranes: one vesicle (a spherical bilayer, two leaflets of density
  0.6) inside the slab and one large, gently curved bilayer sheet crossing the volume.
  Particles keep clear of beads and membranes by ``margin`` voxels.
* **CTF.** The protein and membrane density is band-pass filtered with a phase-flipped CTF, ``|CTF(k)| E(k)``
  (300 kV, Cs 2.7 mm, 7 % amplitude contrast, ``defocus_um`` underfocus, B-factor
  envelope ``E = exp(-B k^2 / 4)``); it needs ``voxel_size`` (Angstrom) for the physical
  frequencies. Low frequencies are damped to the amplitude-contrast level, so particles
  show as dark cores with light fringes, as in a real (not denoised) tomogram. Gold, a
  strong amplitude-contrast object, gets only the envelope (a low-pass), so beads are
  solid black blobs.
* **Missing wedge.** Tilt series collected from ``-tilt_range`` to ``+tilt_range`` degrees
  about the Y axis: Fourier components with ``|kz| > tan(tilt_range) |kx|`` (a double
  wedge around kz in the kz-kx plane, all ky) are zeroed, for signal *and* noise, so the
  wedge is empty in the final volume (:func:`missing_wedge_mask`,
  :func:`apply_missing_wedge`). Objects are elongated along z as in real data.
* **Noise.** White Gaussian noise, passed through the same wedge, scaled so that
  ``snr = var(S) / var(N)``, where ``S`` is the filtered (CTF + wedge) *particle-only*
  signal and both variances are taken over the sample slab (the noise variance is that of
  the wedge-filtered noise, which is stationary). Gold and membranes are not counted as
  signal, so ``snr`` sets the visibility of the particles alone. ``snr=None`` or ``inf``
  gives a noise-free volume. (Without particles the noise gets unit variance.)
* **Contrast.** *Particles are dark*: the filtered density is negated, as in a normally
  processed cryo-ET tomogram (dense protein and gold dark on a lighter background). The
  output is standardised to mean 0 and standard deviation 1 over the whole volume.

Everything is deterministic given ``seed`` (one :class:`numpy.random.Generator`).
A 96 x 256 x 256 volume takes about a second on two cores.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft as sfft
from scipy.spatial.transform import Rotation

from .classes import ClassTable, ParticleClass
from .picks import Picks
from .progress import Progress, ensure
from .tomogram import write_tomogram

__all__ = [
    "DEFAULT_CLASSES",
    "SHAPES",
    "SimulatedTomogram",
    "apply_missing_wedge",
    "ctf_filter",
    "envelope_filter",
    "default_classes",
    "missing_wedge_mask",
    "render_particle",
    "simulate_tomogram",
    "write_simulation",
]

#: Reference shape of the default volume; default particle counts scale with volume.
REFERENCE_SHAPE = (96, 256, 256)
#: Particles per class per million voxels of the whole volume (about 38 per class for 96x256x256).
DEFAULT_DENSITY = 6.0

PROTEIN_DENSITY = 1.0
GOLD_DENSITY = 3.0
MEMBRANE_DENSITY = 0.6
LEAFLET_OFFSET = 1.5  # voxels from the bilayer mid-surface to each leaflet
LEAFLET_WIDTH = 0.7  # Gaussian sigma (voxels) of one leaflet
MEMBRANE_HALF_THICKNESS = LEAFLET_OFFSET + 2.5 * LEAFLET_WIDTH


# --------------------------------------------------------------------------------------
# shapes: signed distance (approximate, in voxels) in template coordinates u = (x, y, z)
# --------------------------------------------------------------------------------------
def _sdf_ribosome(u: np.ndarray, r: float) -> np.ndarray:
    # large lobe: radius 0.6 r centred at -0.4 r on the template z axis (reaches -r);
    # small lobe: radius 0.45 r centred at +0.55 r (reaches +r). Both off-axis extents
    # are inside the bounding sphere (0.72 r and 0.71 r from the centre).
    z = u[:, 2]
    q = u[:, 0] ** 2 + u[:, 1] ** 2
    big = np.sqrt(q + (z + 0.4 * r) ** 2) - 0.6 * r
    small = np.sqrt(q + (z - 0.55 * r) ** 2) - 0.45 * r
    return np.minimum(big, small)


def _sdf_shell(u: np.ndarray, r: float) -> np.ndarray:
    d = np.sqrt(np.einsum("ij,ij->i", u, u))
    return np.maximum(d - r, 0.7 * r - d)


def _sdf_barrel(u: np.ndarray, r: float) -> np.ndarray:
    # outer radius 0.6 r, half height 0.8 r: corner at sqrt(0.36 + 0.64) r = r
    rho = np.sqrt(u[:, 0] ** 2 + u[:, 1] ** 2)
    ring = np.maximum(rho - 0.6 * r, 0.3 * r - rho)
    return np.maximum(ring, np.abs(u[:, 2]) - 0.8 * r)


def _sdf_blob(u: np.ndarray, r: float) -> np.ndarray:
    axes = np.array([1.0, 0.7, 0.55]) * r
    k = np.sqrt(np.einsum("ij,ij->i", u / axes, u / axes))
    return (k - 1.0) * axes.min()


SHAPES: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "ribosome": _sdf_ribosome,
    "shell": _sdf_shell,
    "barrel": _sdf_barrel,
    "blob": _sdf_blob,
}
_SHAPE_CYCLE = ["ribosome", "barrel", "shell", "blob"]
_SHAPE_HINTS = {
    "ribo": "ribosome",
    "apo": "shell",
    "ferritin": "shell",
    "virus": "shell",
    "vlp": "shell",
    "shell": "shell",
    "proteasome": "barrel",
    "barrel": "barrel",
    "galactosidase": "barrel",
    "blob": "blob",
    "amylase": "blob",
    "thyroglobulin": "ribosome",
}


def default_classes() -> ClassTable:
    """A fresh copy of the default class table (diameters in voxels)."""
    return ClassTable(
        [
            ParticleClass("ribosome", 25.0),
            ParticleClass("shell", 13.0),
            ParticleClass("barrel", 18.0),
            ParticleClass("blob", 9.0),
        ]
    )


#: ribosome 25 vox (two lobes), shell 13 (hollow sphere), barrel 18 (hollow cylinder),
#: blob 9 (small solid ellipsoid). Do not modify; :func:`default_classes` gives a copy.
DEFAULT_CLASSES: ClassTable = default_classes()


def _shape_for(name: str, index: int, shapes: Mapping[str, str] | None) -> str:
    if shapes and name in shapes:
        s = shapes[name]
        if s not in SHAPES:
            raise ValueError(f"class {name!r}: unknown shape {s!r}; choose from {', '.join(SHAPES)}")
        return s
    if name in SHAPES:
        return name
    low = name.lower()
    for hint, s in _SHAPE_HINTS.items():
        if hint in low:
            return s
    return _SHAPE_CYCLE[index % len(_SHAPE_CYCLE)]


def _resolve_classes(classes) -> ClassTable:
    if classes is None:
        return default_classes()
    if isinstance(classes, ClassTable):
        return copy.deepcopy(classes)
    out = []
    for c in classes:
        if isinstance(c, ParticleClass):
            out.append(copy.deepcopy(c))
        elif isinstance(c, str):
            if c in DEFAULT_CLASSES:
                out.append(copy.deepcopy(DEFAULT_CLASSES[c]))
            elif "=" in c:
                out.extend(ClassTable.parse([c]).classes)
            else:
                raise ValueError(
                    f"unknown class {c!r}: use one of {', '.join(DEFAULT_CLASSES.names)} "
                    "or NAME=DIAMETER_VOXELS"
                )
        else:
            raise TypeError(f"classes: expected ParticleClass or str, got {type(c).__name__}")
    if not out:
        raise ValueError("classes: need at least one particle class")
    return ClassTable(out)


# --------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------
def _box_offsets(half: int) -> np.ndarray:
    r = np.arange(-half, half + 1)
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    return np.stack([zz.ravel(), yy.ravel(), xx.ravel()], axis=1).astype(np.float32)


def _paste(vol: np.ndarray, box: np.ndarray, corner: np.ndarray) -> None:
    """Add ``box`` into ``vol`` with its [0,0,0] at ``corner`` (z, y, x), clipped."""
    src, dst = [], []
    for lo, n, size in zip(corner, box.shape, vol.shape):
        a, b = max(lo, 0), min(lo + n, size)
        if b <= a:
            return
        dst.append(slice(a, b))
        src.append(slice(a - lo, b - lo))
    vol[tuple(dst)] += box[tuple(src)]


def render_particle(
    vol: np.ndarray,
    centre_zyx: Sequence[float],
    shape: str,
    diameter: float,
    rotation: np.ndarray | None = None,
    density: float = PROTEIN_DENSITY,
    _offsets: np.ndarray | None = None,
) -> None:
    """Add one particle of ``shape`` (a key of :data:`SHAPES`) into ``vol`` in place.

    ``rotation`` is a 3x3 matrix in (x, y, z) coordinates that maps template coordinates
    to tomogram coordinates (identity when None). ``centre_zyx`` may be fractional.
    """
    r = float(diameter) / 2.0
    half = int(math.ceil(r + 1.5))
    offsets = _box_offsets(half) if _offsets is None else _offsets
    c = np.asarray(centre_zyx, dtype=float)
    ci = np.floor(c).astype(int)
    frac = (c - ci).astype(np.float32)
    v_xyz = (offsets - frac)[:, ::-1]
    rot = np.eye(3) if rotation is None else np.asarray(rotation, dtype=float)
    # row vectors: u = R^T v  <=>  u_row = v_row @ R
    u = v_xyz @ rot.astype(np.float32)
    sdf = SHAPES[shape](u, r)
    dens = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32) * np.float32(density)
    n = 2 * half + 1
    _paste(vol, dens.reshape(n, n, n), ci - half)


def truth_in_order(table: ClassTable, placed: Mapping[str, list], rng: np.random.Generator):
    """(names, zyx, rotation matrices, ZYZ angles) of placed particles, in class-table order,
    each with a uniformly random orientation drawn from ``rng``."""
    names: list[str] = []
    centres: list[np.ndarray] = []
    for cls in table:
        names += [cls.name] * len(placed[cls.name])
        centres += placed[cls.name]
    zyx = np.array(centres, dtype=float).reshape(-1, 3)
    rots = _random_rotations(rng, len(zyx))
    mats = rots.as_matrix().reshape(-1, 3, 3)
    angles = rots.as_euler("ZYZ", degrees=True).reshape(-1, 3) if len(zyx) else np.zeros((0, 3))
    return names, zyx, mats, angles


def _random_rotations(rng: np.random.Generator, n: int) -> Rotation:
    q = rng.standard_normal((max(n, 1), 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return Rotation.from_quat(q[:n] if n else q[:0])


def _render_bilayer_sphere(
    vol: np.ndarray, centre: np.ndarray, radius: float, zlim: tuple[int, int]
) -> None:
    """Add a spherical bilayer (two Gaussian leaflets) clipped to z in [zlim)."""
    reach = radius + MEMBRANE_HALF_THICKNESS + 1
    lo = np.maximum(np.floor(centre - reach).astype(int), [zlim[0], 0, 0])
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, [zlim[1], vol.shape[1], vol.shape[2]])
    if np.any(hi <= lo):
        return
    z = (np.arange(lo[0], hi[0], dtype=np.float32) - np.float32(centre[0]))[:, None, None]
    y = (np.arange(lo[1], hi[1], dtype=np.float32) - np.float32(centre[1]))[None, :, None]
    x = (np.arange(lo[2], hi[2], dtype=np.float32) - np.float32(centre[2]))[None, None, :]
    d = np.abs(np.sqrt(z * z + y * y + x * x) - np.float32(radius))
    near = d < MEMBRANE_HALF_THICKNESS
    prof = np.zeros(d.shape, dtype=np.float32)
    t = (d[near] - LEAFLET_OFFSET) / LEAFLET_WIDTH
    prof[near] = MEMBRANE_DENSITY * np.exp(-0.5 * t * t)
    vol[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += prof


# --------------------------------------------------------------------------------------
# Fourier filters
# --------------------------------------------------------------------------------------
def _rfft_freqs(shape: Sequence[int]):
    kz = sfft.fftfreq(shape[0]).astype(np.float32)[:, None, None]
    ky = sfft.fftfreq(shape[1]).astype(np.float32)[None, :, None]
    kx = sfft.rfftfreq(shape[2]).astype(np.float32)[None, None, :]
    return kz, ky, kx


def missing_wedge_mask(shape: Sequence[int], tilt_range: float = 60.0) -> np.ndarray:
    """Boolean mask on the ``rfftn`` grid of a (z, y, x) volume: True = measured.

    A single-axis tilt series from -``tilt_range`` to +``tilt_range`` degrees about Y
    samples the central slices whose normal lies within ``tilt_range`` of z, i.e. the
    components with ``|kz| <= tan(tilt_range) |kx|`` (any ky). The rest, a double wedge
    around the kz axis in the kz-kx plane, is missing. The kz = 0 plane (including the
    mean) is always kept. ``tilt_range >= 90`` keeps everything.
    """
    shape = tuple(int(s) for s in shape)
    kz, ky, kx = _rfft_freqs(shape)
    full = (shape[0], shape[1], shape[2] // 2 + 1)
    if tilt_range >= 90:
        return np.ones(full, dtype=bool)
    t = np.float32(math.tan(math.radians(max(tilt_range, 0.0))))
    keep = np.abs(kz) <= t * np.abs(kx) + np.float32(1e-7)
    return np.broadcast_to(keep, full).copy()


def apply_missing_wedge(volume: np.ndarray, tilt_range: float = 60.0, workers: int = -1) -> np.ndarray:
    """Zero the Fourier components of ``volume`` (z, y, x) in the missing wedge (float32)."""
    vol = np.asarray(volume, dtype=np.float32)
    f = sfft.rfftn(vol, workers=workers)
    f *= missing_wedge_mask(vol.shape, tilt_range)
    return sfft.irfftn(f, s=vol.shape, workers=workers).astype(np.float32, copy=False)


def electron_wavelength(voltage_kv: float = 300.0) -> float:
    """Relativistic electron wavelength in Angstrom."""
    v = voltage_kv * 1e3
    return 12.2643 / math.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf_filter(
    shape: Sequence[int],
    voxel_size: float,
    defocus_um: float = 4.0,
    voltage_kv: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.07,
    bfactor: float = 1500.0,
) -> np.ndarray:
    """Phase-flipped CTF ``|CTF(k)| exp(-B k^2/4)`` on the ``rfftn`` grid (float32, >= 0)."""
    kz, ky, kx = _rfft_freqs(shape)
    vs = np.float32(voxel_size)
    k2 = (kz * kz + ky * ky + kx * kx) / (vs * vs)  # (1/Angstrom)^2
    lam = electron_wavelength(voltage_kv)
    dz = defocus_um * 1e4
    cs = cs_mm * 1e7
    chi = np.float32(math.pi * lam * dz) * k2 - np.float32(0.5 * math.pi * cs * lam**3) * k2 * k2
    a = np.float32(amplitude_contrast)
    ctf = np.abs(np.float32(math.sqrt(1 - amplitude_contrast**2)) * np.sin(chi) + a * np.cos(chi))
    ctf *= np.exp(np.float32(-bfactor / 4.0) * k2)
    return ctf.astype(np.float32, copy=False)


def envelope_filter(shape: Sequence[int], voxel_size: float, bfactor: float = 1500.0) -> np.ndarray:
    """The B-factor envelope ``exp(-B k^2 / 4)`` alone on the ``rfftn`` grid (a low-pass)."""
    kz, ky, kx = _rfft_freqs(shape)
    vs = np.float32(voxel_size)
    k2 = (kz * kz + ky * ky + kx * kx) / (vs * vs)
    return np.exp(np.float32(-bfactor / 4.0) * k2).astype(np.float32, copy=False)


def _rfft_weights(shape: Sequence[int]) -> np.ndarray:
    """How often each rfft column stands for a full-spectrum coefficient (1 or 2)."""
    nx = shape[2]
    w = np.full(nx // 2 + 1, 2.0, dtype=np.float64)
    w[0] = 1.0
    if nx % 2 == 0:
        w[-1] = 1.0
    return w


def _parseval_var(f: np.ndarray, shape: Sequence[int]) -> float:
    """Variance of the real volume whose rfftn is ``f``."""
    n = float(np.prod(shape))
    p = (f.real.astype(np.float64) ** 2 + f.imag.astype(np.float64) ** 2).sum(axis=(0, 1))
    energy = float((p * _rfft_weights(shape)).sum()) / n
    mean = float(f[0, 0, 0].real) / n
    return energy / n - mean * mean


# --------------------------------------------------------------------------------------
# placement
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# the simulation
# --------------------------------------------------------------------------------------
@dataclass
class SimulatedTomogram:
    """A phantom tomogram and its truth.

    ``picks`` holds the particle centres (0-based voxel z, y, x, fractional), with class
    names, score 1, source ``"imported"``, the tomogram ``name``, ``voxel_size`` and the
    orientation as ZYZ Euler angles ``rot, tilt, psi`` (degrees):
    ``Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True)`` maps template (x, y, z)
    coordinates onto the particle in tomogram (x, y, z) coordinates.
    """

    data: np.ndarray
    picks: Picks
    classes: ClassTable
    voxel_size: float
    angles: np.ndarray | None = None
    name: str = "tomogram"
    shapes: dict[str, str] = field(default_factory=dict)
    slab: tuple[int, int] = (0, 0)  # z range [start, stop) of the sample slab
    snr: float | None = None
    tilt_range: float = 60.0
    distractors: list[dict] = field(default_factory=list)
    clean: np.ndarray | None = None  # unfiltered particle density (only with keep_clean)
    tilt_series: np.ndarray | None = None  # recorded views (realistic preset, keep_tilt_series)
    tilt_angles: np.ndarray | None = None  # their angles, degrees

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]


def _counts(
    table: ClassTable, shape: Sequence[int], density: float, n_per_class
) -> dict[str, int]:
    if n_per_class is None:
        n = int(round(density * float(np.prod(shape)) / 1e6))
        return {c.name: n for c in table}
    if isinstance(n_per_class, Mapping):
        unknown = [k for k in n_per_class if k not in table]
        if unknown:
            raise ValueError(f"n_per_class names unknown classes {unknown}; classes are {table.names}")
        n = int(round(density * float(np.prod(shape)) / 1e6))
        return {c.name: int(n_per_class.get(c.name, n)) for c in table}
    return {c.name: int(n_per_class) for c in table}


def simulate_tomogram(
    shape: Sequence[int] = REFERENCE_SHAPE,
    seed: int | None = 0,
    snr: float | None = 0.5,
    classes: ClassTable | Sequence[ParticleClass | str] | None = None,
    density: float = DEFAULT_DENSITY,
    n_per_class: int | Mapping[str, int] | None = None,
    voxel_size: float = 10.0,
    tilt_range: float = 60.0,
    distractors: bool = True,
    name: str = "tomogram",
    progress: Progress | None = None,
    *,
    slab_fraction: float = 0.7,
    margin: float = 2.0,
    ctf: bool = True,
    defocus_um: float = 4.0,
    bfactor: float = 1500.0,
    n_gold: int | None = None,
    bead_diameter: float = 8.0,
    n_membranes: int = 2,
    shapes: Mapping[str, str] | None = None,
    keep_clean: bool = False,
    workers: int = -1,
) -> SimulatedTomogram:
    """Simulate a phantom tomogram with particles of several classes; see the module doc.

    Parameters
    ----------
    shape : (z, y, x) size in voxels.
    seed : seed of the random generator; equal seeds give identical results.
    snr : ``var(particle signal) / var(noise)`` over the slab; None or inf: no noise.
    classes : a ClassTable, or ParticleClass objects and/or names of default classes
        (or ``NAME=DIAMETER`` specs); default :data:`DEFAULT_CLASSES`.
    density : particles per class per million voxels of the volume (ignored for the
        classes ``n_per_class`` gives). 6 gives about 38 per class in 96 x 256 x 256.
    n_per_class : particles per class (an int for all, or a dict name -> count).
    voxel_size : Angstrom, for the CTF and the metadata (diameters stay in voxels).
    tilt_range : the tilt series covers +/- this many degrees about Y.
    distractors : add gold beads and membranes (not labelled).
    slab_fraction : thickness of the sample slab as a fraction of z.
    margin : minimum gap (voxels) between particles and other objects.
    ctf, defocus_um, bfactor : the band-pass; ``ctf=False`` skips it.
    n_gold : number of gold beads (default about 4 per 96x256x256, at least 1).
    n_membranes : 0, 1 (a vesicle) or 2 (a vesicle and a curved sheet).
    shapes : optional class name -> shape name (a key of :data:`SHAPES`).
    keep_clean : also return the unfiltered particle density as ``clean``.

    If the slab is too crowded for the requested counts, fewer particles are placed and a
    warning says so.
    """
    prog = ensure(progress)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be 3 sizes >= 4 (z, y, x), got {shape}")
    if not 0 < slab_fraction <= 1:
        raise ValueError(f"slab_fraction must be in (0, 1], got {slab_fraction}")
    if snr is not None and not snr > 0:
        raise ValueError(f"snr must be > 0 (or None for no noise), got {snr}")
    table = _resolve_classes(classes)
    shape_of = {c.name: _shape_for(c.name, i, shapes) for i, c in enumerate(table)}
    counts = _counts(table, shape, density, n_per_class)
    rng = np.random.default_rng(seed)
    total_steps = 5
    prog.update(0, total_steps, "placing particles")
    prog.check()

    Z, Y, X = shape
    thick = max(1, int(round(slab_fraction * Z)))
    z0 = (Z - thick) // 2
    z1 = z0 + thick
    scale = float(np.prod(shape)) / float(np.prod(REFERENCE_SHAPE))

    max_r = max([c.radius for c in table] + [bead_diameter / 2.0])
    occ = _Occupancy(cell=2 * max_r + margin, margin=margin)
    distractor_info: list[dict] = []

    # membranes first (analytic; particles test against them)
    membranes: list[tuple[np.ndarray, float]] = []
    if distractors and n_membranes > 0:
        rv = float(rng.uniform(0.3, 0.45)) * thick
        rv = max(rv, 6.0)
        cv = np.array(
            [(z0 + z1) / 2.0 + rng.uniform(-0.05, 0.05) * thick, rng.uniform(0.2, 0.8) * Y, rng.uniform(0.2, 0.8) * X]
        )
        membranes.append((cv, rv))
        distractor_info.append({"kind": "vesicle", "centre_zyx": cv.tolist(), "radius": rv})
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
            distractor_info.append({"kind": "sheet", "centre_zyx": cs.tolist(), "radius": rs})

    def clear_of_membranes(p: np.ndarray, r: float) -> bool:
        for c, rad in membranes:
            if abs(float(np.linalg.norm(p - c)) - rad) < r + margin + MEMBRANE_HALF_THICKNESS:
                return False
        return True

    # gold beads near the slab surfaces
    beads: list[np.ndarray] = []
    if distractors:
        nb = max(1, int(round(4 * scale))) if n_gold is None else int(n_gold)
        rb = bead_diameter / 2.0
        for _ in range(nb):
            for _try in range(100):
                top = rng.random() < 0.5
                zc = (z1 - rb - rng.uniform(0, 2)) if top else (z0 + rb + rng.uniform(0, 2))
                p = np.array([zc, rng.uniform(rb, Y - 1 - rb), rng.uniform(rb, X - 1 - rb)])
                if occ.free(p, rb) and clear_of_membranes(p, rb):
                    occ.add(p, rb)
                    beads.append(p)
                    distractor_info.append({"kind": "gold", "centre_zyx": p.tolist(), "radius": rb})
                    break

    # particles, largest first
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
            if occ.free(p, r) and clear_of_membranes(p, r):
                occ.add(p, r)
                placed[cls.name].append(p)
        if len(placed[cls.name]) < want:
            short.append(f"{cls.name} {len(placed[cls.name])}/{want}")
    if short:
        warnings.warn(
            "simulate_tomogram: the sample slab is too crowded; placed only " + ", ".join(short),
            stacklevel=2,
        )

    names, zyx, mats, angles = truth_in_order(table, placed, rng)

    prog.update(1, total_steps, "rendering particles")
    prog.check()
    particles = np.zeros(shape, dtype=np.float32)
    offsets_cache: dict[int, np.ndarray] = {}
    for i, (p, nm) in enumerate(zip(zyx, names)):
        d = table[nm].diameter
        half = int(math.ceil(d / 2.0 + 1.5))
        if half not in offsets_cache:
            offsets_cache[half] = _box_offsets(half)
        render_particle(particles, p, shape_of[nm], d, mats[i], PROTEIN_DENSITY, offsets_cache[half])
        if i % 64 == 63:
            prog.check()

    membrane_vol = None
    if membranes:
        membrane_vol = np.zeros(shape, dtype=np.float32)
        for c, rad in membranes:
            _render_bilayer_sphere(membrane_vol, c, rad, (z0, z1))
    gold_vol = None
    if beads:
        gold_vol = np.zeros(shape, dtype=np.float32)
        for p in beads:
            _render_sphere(gold_vol, p, bead_diameter / 2.0, GOLD_DENSITY)

    prog.update(2, total_steps, "CTF and missing wedge")
    prog.check()
    wedge = missing_wedge_mask(shape, tilt_range)
    filt = wedge.astype(np.float32)
    if ctf:
        filt *= ctf_filter(shape, voxel_size, defocus_um=defocus_um, bfactor=bfactor)
    fp = sfft.rfftn(particles, workers=workers)
    fp *= filt
    signal = sfft.irfftn(fp, s=shape, workers=workers)
    del fp
    slab_signal = signal[z0:z1]
    var_s = float(slab_signal.var(dtype=np.float64))

    prog.update(3, total_steps, "noise")
    prog.check()
    rest = None
    if membrane_vol is not None:
        rest = sfft.rfftn(membrane_vol, workers=workers)
        rest *= filt
        del membrane_vol
    if gold_vol is not None:
        # gold is a strong amplitude-contrast object: wedge and envelope, no phase CTF
        fg = sfft.rfftn(gold_vol, workers=workers)
        del gold_vol
        fg *= wedge
        if ctf:
            fg *= envelope_filter(shape, voxel_size, bfactor)
        rest = fg if rest is None else rest + fg
        del fg
    if snr is not None and math.isfinite(snr):
        noise = rng.standard_normal(shape, dtype=np.float32)
        fn = sfft.rfftn(noise, workers=workers)
        del noise
        fn *= wedge
        var_n = _parseval_var(fn, shape)
        target = var_s / snr if var_s > 0 else 1.0
        fn *= np.float32(math.sqrt(target / var_n)) if var_n > 0 else np.float32(0.0)
        # dense objects are dark: data = -(particles + distractors) + noise
        total_f = fn if rest is None else fn - rest
        del fn
    else:
        total_f = None if rest is None else -rest
    del rest
    data = -signal
    del signal, slab_signal
    if total_f is not None:
        data += sfft.irfftn(total_f, s=shape, workers=workers)
    del total_f

    prog.update(4, total_steps, "normalising")
    m = float(data.mean(dtype=np.float64))
    sd = float(data.std(dtype=np.float64))
    data -= np.float32(m)
    if sd > 0:
        data /= np.float32(sd)
    data = data.astype(np.float32, copy=False)

    picks = Picks.from_zyx(
        zyx,
        class_name=names if names else "particle",
        score=1.0,
        source="imported",
        tomogram=name,
        voxel_size=voxel_size,
        angles=angles,
    )
    prog.update(total_steps, total_steps, "done")
    return SimulatedTomogram(
        data=data,
        picks=picks,
        classes=table,
        voxel_size=float(voxel_size),
        angles=angles,
        name=name,
        shapes=shape_of,
        slab=(z0, z1),
        snr=snr,
        tilt_range=float(tilt_range),
        distractors=distractor_info,
        clean=particles if keep_clean else None,
    )


def _render_sphere(vol: np.ndarray, centre: np.ndarray, radius: float, density: float) -> None:
    half = int(math.ceil(radius + 1.5))
    c = np.asarray(centre, dtype=float)
    ci = np.floor(c).astype(int)
    v = _box_offsets(half) - (c - ci).astype(np.float32)
    sdf = np.sqrt(np.einsum("ij,ij->i", v, v)) - radius
    dens = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32) * np.float32(density)
    n = 2 * half + 1
    _paste(vol, dens.reshape(n, n, n), ci - half)


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def write_simulation(outdir: str | os.PathLike, sim: SimulatedTomogram) -> tuple[Path, Path]:
    """Write ``tomogram.mrc`` (with voxel size), ``picks.csv`` and ``classes.json``.

    ``picks.csv`` is the canonical CSV layout: header ``x,y,z,class,score``, coordinates
    in voxels (0-based), xyz order. ``classes.json`` is ``ClassTable.to_dict()`` (a list
    of ``{"name", "diameter", "colour"}``). Returns (tomogram path, picks path).
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tomo_path = write_tomogram(out / "tomogram.mrc", sim.data, sim.voxel_size)
    t = sim.picks.table
    df = pd.DataFrame(
        {
            "x": t["x"].to_numpy(float),
            "y": t["y"].to_numpy(float),
            "z": t["z"].to_numpy(float),
            "class": t["class_name"].astype(str).to_numpy(),
            "score": t["score"].to_numpy(float),
        }
    )
    picks_path = out / "picks.csv"
    df.to_csv(picks_path, index=False, float_format="%.4f")
    (out / "classes.json").write_text(json.dumps(sim.classes.to_dict(), indent=2) + "\n")
    return tomo_path, picks_path
