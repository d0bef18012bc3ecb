"""The particles and distractors of the phantom tomograms: the class shapes (approximate
signed distances, :data:`SHAPES`), the default class table, which shape a class gets, and
rendering shapes, spheres and bilayers into a volume (see :mod:`.simulate` for how a
simulation uses them)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from .classes import ClassTable, ParticleClass
from .progress import Progress

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


def _render_sphere(vol: np.ndarray, centre: np.ndarray, radius: float, density: float) -> None:
    """Add a solid sphere (a gold bead) of ``density`` into ``vol`` in place."""
    half = int(math.ceil(radius + 1.5))
    c = np.asarray(centre, dtype=float)
    ci = np.floor(c).astype(int)
    v = _box_offsets(half) - (c - ci).astype(np.float32)
    sdf = np.sqrt(np.einsum("ij,ij->i", v, v)) - radius
    dens = np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32) * np.float32(density)
    n = 2 * half + 1
    _paste(vol, dens.reshape(n, n, n), ci - half)


def _render_particles(
    shape: Sequence[int], table: ClassTable, shape_of: Mapping[str, str], names: Sequence[str],
    zyx: np.ndarray, mats: np.ndarray, prog: Progress,
) -> np.ndarray:
    """The unfiltered particle density (float32) of the particles ``names`` at ``zyx`` with
    rotations ``mats``; checks ``prog`` every 64 particles."""
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
    return particles
