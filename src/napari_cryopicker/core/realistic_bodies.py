"""The particle bodies of the realistic simulator: the class library (:data:`REALISTIC_CLASSES`,
fixed bodies, so a class looks the same in every tomogram), each class's density as a
seeded union of Gaussian blobs with internal texture (:func:`class_template`), and a
body rotated, shifted and pasted into a volume (see :mod:`.realistic`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .classes import ClassTable, ParticleClass

#: internal texture of the bodies: (grain in A, relative standard deviation), domains then
#: secondary structure
TEXTURE = ((20.0, 0.4), (8.0, 0.6))


#: Volts over the ice of one unit of body density.
UNIT_VOLTS = 1.5
#: Integrated potential over the ice per kDa of protein, V nm^3 (V x voxels at 10 A). The
#: SHREC'21 4CR2 map (26S proteasome, 2.5 MDa by its paper) holds 4,767 V nm^3 over the
#: solvent: 1.9; protein's mean inner potential over ice (~2.6 V x 1.21 A^3/Da) gives ~3.
#: 2.0 is the low end, so that no body is made heavier than the data say.
POTENTIAL_PER_KDA = 2.0


@dataclass(frozen=True)
class ClassSpec:
    name: str
    diameter_nm: float
    body: str  # two_lobed, mito, capped_barrel, double_ring, shell, rod, ring, globule, dome
    seed: int
    #: the body's integrated potential over the ice, V nm^3 (its contrast: what a matched
    #: filter or a network integrates): a real map's, or POTENTIAL_PER_KDA x the mass of
    #: the complex it stands for
    potential: float = 0.0


def _kda(mass: float) -> float:
    return POTENTIAL_PER_KDA * mass


#: The realistic class library: fixed bodies, so a class looks the same in every tomogram.
#: Each body's integrated potential is that of the complex it stands for: the SHREC'21 map
#: itself for the ribosome (4V94), mitoribosome (5MRC) and proteasome (4CR2), measured over
#: the solvent at 10 A; a literature mass for the others (GroEL 14-mer, yeast FAS,
#: apoferritin 24-mer, rubisco L8S8; the generic bodies a protein of their size). Before
#: session 18 only the ribosome was matched; the others had 0.35-0.7x their contrast
#: (``calibrated=False`` in :func:`class_template` keeps those bodies).
REALISTIC_CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("ribosome", 28.0, "two_lobed", 1, 7087.0),
    ClassSpec("mitoribosome", 28.0, "mito", 2, 12380.0),
    ClassSpec("proteasome", 24.0, "capped_barrel", 3, 4767.0),
    ClassSpec("chaperonin", 14.0, "double_ring", 4, _kda(800)),
    ClassSpec("fas", 26.0, "dome", 5, _kda(2600)),
    ClassSpec("ferritin", 12.0, "shell", 6, _kda(474)),
    ClassSpec("rubisco", 11.0, "globule", 7, _kda(540)),
    ClassSpec("filament", 20.0, "rod", 8, _kda(310)),   # ~7 actin subunits
    ClassSpec("ring", 10.0, "ring", 9, _kda(250)),
    ClassSpec("dimer", 10.0, "two_lobed", 10, _kda(150)),
    ClassSpec("globule8", 8.0, "globule", 11, _kda(200)),
    ClassSpec("globule6", 6.0, "globule", 12, _kda(90)),
    ClassSpec("globule4", 4.0, "globule", 13, _kda(30)),
)
_SPECS = {c.name: c for c in REALISTIC_CLASSES}
#: The four classes of the few-click benchmark: two ~28-voxel, one ~24 and one ~14.
BENCHMARK_CLASSES = ("ribosome", "mitoribosome", "proteasome", "chaperonin")


def realistic_classes(voxel_size: float = 10.0, names: Sequence[str] | None = None) -> ClassTable:
    """The class table (diameters in voxels at ``voxel_size`` A) of the realistic library."""
    specs = REALISTIC_CLASSES if names is None else [_SPECS[n] for n in names]
    return ClassTable([ParticleClass(s.name, round(s.diameter_nm * 10.0 / voxel_size, 2)) for s in specs])


# ------------------------------------------------------------------------------ bodies
def _in_ellipsoid(rng, n, axes, centre=(0.0, 0.0, 0.0)):
    pts = []
    while len(pts) < n:
        p = rng.uniform(-1, 1, 3)
        if p @ p <= 1:
            pts.append(p * np.asarray(axes) + np.asarray(centre))
    return np.array(pts)


def _ring(n, radius, z, phase=0.0, jitter=0.0, rng=None):
    a = phase + 2 * np.pi * np.arange(n) / n
    p = np.stack([radius * np.cos(a), radius * np.sin(a), np.full(n, z)], axis=1)
    if jitter and rng is not None:
        p += rng.normal(0, jitter, p.shape)
    return p


def _blobs(body: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blob centres (x, y, z; body units), sigmas and weights of one body."""
    parts: list[tuple[np.ndarray, float, float]] = []
    if body in ("two_lobed", "mito"):
        big, small = (0.58, 0.42) if body == "two_lobed" else (0.52, 0.47)
        gap = 0.12 if body == "two_lobed" else 0.2
        parts.append((_in_ellipsoid(rng, 22, (big, big * 0.95, big * 0.8), (0, 0, -0.3)), 0.17, 1.0))
        parts.append((_in_ellipsoid(rng, 12, (small * 1.15, small * 0.8, small * 0.6), (0.05, 0, 0.3 + gap)), 0.14,
                      1.1))
        if body == "mito":  # an extra protrusion and a looser, more porous large subunit
            parts.append((_in_ellipsoid(rng, 5, (0.15, 0.15, 0.25), (0.45, 0.2, -0.35)), 0.12, 0.9))
    elif body == "capped_barrel":
        core = np.concatenate([_ring(7, 0.27, z, phase=0.45 * k, jitter=0.02, rng=rng)
                               for k, z in enumerate((-0.38, -0.13, 0.13, 0.38))])
        parts.append((core, 0.11, 1.0))
        parts.append((_in_ellipsoid(rng, 9, (0.33, 0.28, 0.14), (0.05, 0, 0.68)), 0.12, 1.0))
        parts.append((_in_ellipsoid(rng, 9, (0.33, 0.28, 0.14), (-0.07, 0.03, -0.68)), 0.12, 1.0))
    elif body == "double_ring":
        parts.append((np.concatenate([_ring(8, 0.55, z, phase=0.2 * k) for k, z in enumerate((-0.3, 0.3))]), 0.17,
                      1.0))
    elif body == "dome":
        pts = _in_ellipsoid(rng, 30, (0.75, 0.75, 0.55))
        pts = pts[np.linalg.norm(pts[:, :2] / 0.75, axis=1) > 0.35]  # hollow core, two chambers
        parts.append((pts, 0.14, 1.0))
    elif body == "shell":
        n = 24
        i = np.arange(n) + 0.5
        phi = np.arccos(1 - 2 * i / n)
        th = np.pi * (1 + 5**0.5) * i
        parts.append((0.78 * np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1), 0.16,
                      1.0))
    elif body == "rod":
        t = np.linspace(-0.85, 0.85, 14)
        parts.append((np.stack([0.12 * np.cos(2.5 * t * np.pi), 0.12 * np.sin(2.5 * t * np.pi), t], 1), 0.12, 1.0))
    elif body == "ring":
        parts.append((_ring(6, 0.6, 0.0, jitter=0.03, rng=rng), 0.2, 1.0))
    else:  # globule
        parts.append((_in_ellipsoid(rng, 7, (0.55, 0.45, 0.4)), 0.25, 1.0))
    centres = np.concatenate([p[0] for p in parts])
    sigmas = np.concatenate([np.full(len(p[0]), p[1]) for p in parts])
    weights = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    return centres, sigmas, weights


def class_template(name: str, voxel_size: float = 10.0, calibrated: bool = True) -> np.ndarray:
    """The density of class ``name`` in a cube box (z, y, x), centre of mass at the centre.

    Unit density is UNIT_VOLTS (1.5 V) over the ice; the body fits the class diameter and,
    ``calibrated``, carries its class's integrated potential (``ClassSpec.potential``);
    otherwise the body as it was before session 18.
    """
    spec = _SPECS[name]
    rng = np.random.default_rng(1000 + spec.seed)
    c, s, w = _blobs(spec.body, rng)
    # centre on the mass, then scale so that the body (to 1.6 sigma) fits the unit sphere
    c = c - np.average(c, axis=0, weights=w * s**3)
    reach = float(np.max(np.linalg.norm(c, axis=1) + 1.6 * s))
    c, s = c / reach, s / reach
    r = spec.diameter_nm * 10.0 / voxel_size / 2.0
    half = int(math.ceil(r * 1.15)) + 2
    g = np.arange(-half, half + 1, dtype=np.float32)
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    field = np.zeros(zz.shape, dtype=np.float32)
    for (bx, by, bz), sg, wt in zip(c * r, s * r, w):
        sg = max(sg, 0.6)
        field += np.float32(wt) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2 + (zz - bz) ** 2) / np.float32(2 * sg * sg))
    dens = np.tanh(1.6 * field).astype(np.float32)
    # secondary structure and domains: real maps carry 10-1000x more power than smooth
    # blobs between 1/40 and 1/20 A^-1 (checked against the SHREC'21 ribosome map)
    for sigma_a, amp in TEXTURE:
        grain = ndimage.gaussian_filter(rng.standard_normal(dens.shape).astype(np.float32), sigma_a / voxel_size)
        grain *= np.float32(amp / (float(grain.std()) or 1.0))
        dens = np.clip(dens * (1.0 + grain), 0.0, None)
    dens[dens < 0.02] = 0.0
    # exact centre of mass at the box centre (sub-voxel shift)
    com = np.array(ndimage.center_of_mass(dens)) - half
    if np.any(np.abs(com) > 1e-3):
        dens = ndimage.shift(dens, -com, order=1, mode="constant").astype(np.float32)
    if calibrated and spec.potential > 0:
        volts_nm3 = float(dens.sum()) * UNIT_VOLTS * (voxel_size / 10.0) ** 3
        dens *= np.float32(spec.potential / volts_nm3)
    return dens


def _rotated(template: np.ndarray, rot_xyz: np.ndarray, frac_zyx: np.ndarray) -> np.ndarray:
    """``template`` rotated by ``rot_xyz`` (template -> tomogram, x/y/z) and shifted by ``frac``."""
    p = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], dtype=float)
    rz = p @ rot_xyz @ p  # the same rotation in z, y, x coordinates
    c = (np.asarray(template.shape) - 1) / 2.0
    m = rz.T
    offset = c - m @ (c + frac_zyx)
    return ndimage.affine_transform(template, m, offset=offset, order=1, mode="constant", cval=0.0,
                                    prefilter=False)


def _paste(vol: np.ndarray, box: np.ndarray, corner: np.ndarray) -> None:
    src, dst = [], []
    for lo, n, size in zip(corner, box.shape, vol.shape):
        a, b = max(int(lo), 0), min(int(lo) + n, size)
        if b <= a:
            return
        dst.append(slice(a, b))
        src.append(slice(a - int(lo), b - int(lo)))
    vol[tuple(dst)] += box[tuple(src)]
