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
A 96 x 256 x 256 volume takes about a second on two cores. The shapes and their rendering
are in :mod:`.simulate_shapes`, the placement in :mod:`.simulate_placement`, the Fourier
filters in :mod:`.simulate_optics`.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft as sfft

from .classes import ClassTable, ParticleClass
from .picks import Picks
from .progress import Progress, ensure
from .tomogram import write_tomogram

from .simulate_optics import (  # the Fourier filters (the public ones re-exported: __all__)
    _parseval_var,
    apply_missing_wedge,
    ctf_filter,
    envelope_filter,
    missing_wedge_mask,
)
from .simulate_shapes import (  # shapes, classes and rendering (the public ones re-exported: __all__)
    DEFAULT_CLASSES,
    GOLD_DENSITY,
    SHAPES,
    _render_bilayer_sphere,
    _render_particles,
    _render_sphere,
    _resolve_classes,
    _shape_for,
    default_classes,
    render_particle,
    truth_in_order,
)
from .simulate_placement import _Occupancy, _place_beads, _place_membranes, _place_particles

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

    Z = shape[0]
    thick = max(1, int(round(slab_fraction * Z)))
    z0 = (Z - thick) // 2
    z1 = z0 + thick
    scale = float(np.prod(shape)) / float(np.prod(REFERENCE_SHAPE))

    max_r = max([c.radius for c in table] + [bead_diameter / 2.0])
    occ = _Occupancy(cell=2 * max_r + margin, margin=margin)
    distractor_info: list[dict] = []
    # membranes first (analytic; particles test against them), then gold, then particles
    membranes: list[tuple[np.ndarray, float]] = []
    if distractors and n_membranes > 0:
        membranes = _place_membranes(rng, shape, (z0, z1), n_membranes, distractor_info)
    beads: list[np.ndarray] = []
    if distractors:
        nb = max(1, int(round(4 * scale))) if n_gold is None else int(n_gold)
        beads = _place_beads(rng, occ, membranes, shape, (z0, z1), nb, bead_diameter / 2.0, margin, distractor_info)
    placed, short = _place_particles(rng, occ, membranes, table, counts, shape, (z0, z1), margin)
    if short:
        warnings.warn(
            "simulate_tomogram: the sample slab is too crowded; placed only " + ", ".join(short),
            stacklevel=2,
        )

    names, zyx, mats, angles = truth_in_order(table, placed, rng)

    prog.update(1, total_steps, "rendering particles")
    prog.check()
    particles = _render_particles(shape, table, shape_of, names, zyx, mats, prog)

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
    var_s = float(signal[z0:z1].var(dtype=np.float64))

    prog.update(3, total_steps, "noise")
    prog.check()
    rest = _distractor_spectrum(
        shape, membranes, beads, (z0, z1), bead_diameter, filt, wedge,
        envelope=(voxel_size, bfactor) if ctf else None, workers=workers,
    )
    if snr is not None and math.isfinite(snr):
        fn = _noise_spectrum(rng, shape, wedge, var_s / snr if var_s > 0 else 1.0, workers)
        # dense objects are dark: data = -(particles + distractors) + noise
        total_f = fn if rest is None else fn - rest
        del fn
    else:
        total_f = None if rest is None else -rest
    del rest
    data = -signal
    del signal
    if total_f is not None:
        data += sfft.irfftn(total_f, s=shape, workers=workers)
    del total_f

    prog.update(4, total_steps, "normalising")
    data = _standardise(data)

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


# --------------------------------------------------------------------------------------
# the steps of simulate_tomogram (in the order it draws from the random generator)
# --------------------------------------------------------------------------------------
def _distractor_spectrum(
    shape: Sequence[int],
    membranes: Sequence[tuple[np.ndarray, float]],
    beads: Sequence[np.ndarray],
    slab: tuple[int, int],
    bead_diameter: float,
    filt: np.ndarray,
    wedge: np.ndarray,
    envelope: tuple[float, float] | None,
    workers: int,
) -> np.ndarray | None:
    """The ``rfftn`` of the filtered distractors (None without any): the membranes through
    ``filt`` like the particles; gold, a strong amplitude-contrast object, through the
    wedge and the envelope (``(voxel_size, bfactor)``, None: none) only, no phase CTF."""
    rest = None
    if membranes:
        membrane_vol = np.zeros(shape, dtype=np.float32)
        for c, rad in membranes:
            _render_bilayer_sphere(membrane_vol, c, rad, slab)
        rest = sfft.rfftn(membrane_vol, workers=workers)
        rest *= filt
        del membrane_vol
    if beads:
        gold_vol = np.zeros(shape, dtype=np.float32)
        for p in beads:
            _render_sphere(gold_vol, p, bead_diameter / 2.0, GOLD_DENSITY)
        fg = sfft.rfftn(gold_vol, workers=workers)
        del gold_vol
        fg *= wedge
        if envelope is not None:
            fg *= envelope_filter(shape, *envelope)
        rest = fg if rest is None else rest + fg
        del fg
    return rest


def _noise_spectrum(
    rng: np.random.Generator, shape: Sequence[int], wedge: np.ndarray, target: float, workers: int
) -> np.ndarray:
    """The ``rfftn`` of white Gaussian noise through the wedge, scaled to variance ``target``."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    fn = sfft.rfftn(noise, workers=workers)
    del noise
    fn *= wedge
    var_n = _parseval_var(fn, shape)
    fn *= np.float32(math.sqrt(target / var_n)) if var_n > 0 else np.float32(0.0)
    return fn


def _standardise(data: np.ndarray) -> np.ndarray:
    """``data`` (in place where it can) to mean 0 and standard deviation 1, float32."""
    m = float(data.mean(dtype=np.float64))
    sd = float(data.std(dtype=np.float64))
    data -= np.float32(m)
    if sd > 0:
        data /= np.float32(sd)
    return data.astype(np.float32, copy=False)


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
