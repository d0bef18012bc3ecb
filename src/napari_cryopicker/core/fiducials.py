"""Gold fiducials: find them, and keep picks off them.

Gold beads are the darkest compact objects in a tomogram (dense matter is dark), far
darker than protein, and their streaks fan out from them. A network that has seen a few
of them only as background still gives them high scores now and then (seen: every
non-clicked proteasome prediction of a session sat on a bead). :func:`find_fiducials`
looks for them on a 2x-binned copy (read slab by slab, so memory stays at 1/8 of the
tomogram in float32): a Gaussian of 1 binned voxel, voxels darker than ``threshold``
robust SDs (median and MAD) below the median, connected components of a bead's size.
:func:`off_fiducials` then tells which picks are farther than ``margin`` x the bead
radius from every bead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .progress import Progress, ensure

__all__ = ["Fiducials", "find_fiducials", "off_fiducials"]


@dataclass
class Fiducials:
    zyx: np.ndarray  # (n, 3) bead centres, voxels of the full-size tomogram
    radius: np.ndarray  # (n,) equivalent-sphere radius, voxels

    def __len__(self) -> int:
        return len(self.zyx)


#: the binned copy is kept under this many voxels (the binning grows with the tomogram), so
#: finding beads costs ~0.5 GB of work arrays at most, whatever the tomogram's size
MAX_BINNED_VOXELS = 24_000_000
#: a bead is measured on its core: the voxels at least this share as dark as its darkest
#: (a bead ~80 robust SDs below the median: its core ends at ~28, darker than any protein)
CORE = 0.35


def binning_for(shape) -> int:
    n = float(np.prod([int(s) for s in shape]))
    return max(2, int(np.ceil((n / MAX_BINNED_VOXELS) ** (1 / 3))))


def _binned(data, factor: int, progress: Progress) -> np.ndarray:
    Z, Y, X = (int(s) // factor * factor for s in data.shape)
    out = np.empty((Z // factor, Y // factor, X // factor), dtype=np.float32)
    for k, z in enumerate(range(0, Z, factor)):  # one binned slice at a time: bounded memory
        if k % 16 == 0:
            progress.check()
        blk = np.asarray(data[z:z + factor, :Y, :X], dtype=np.float32)
        out[k] = blk.reshape(factor, Y // factor, factor, X // factor, factor).mean(axis=(0, 2, 4))
    return out


def find_fiducials(data, voxel_size: float | None = None, *, bead_diameter_A: float = 100.0,
                   threshold: float = 6.0, peak: float = 40.0, contrast: float = 3.0, factor: int | None = None,
                   progress: Progress | None = None) -> Fiducials:
    """Gold beads in ``data`` (z, y, x; dense matter dark), as centres and radii in voxels.

    Components darker than ``threshold`` robust SDs below the median count as beads when
    their darkest voxel is below ``peak`` robust SDs (gold: 78-89 in the realistic
    simulation; the densest protein, a mitoribosome with its real contrast: up to 27) and
    ``contrast`` times as dark as the
    median component's (so a clean tomogram's dark particles are never taken for gold),
    and their core (voxels at least ``CORE`` x as dark as the darkest) holds between 1/8
    and 8 times the voxels of a sphere of ``bead_diameter_A`` (A; 10 nm by default) and is
    compact (bounding box at most 3x longer than wide; streaks are long and thin). The
    bead's radius is its core's. ``factor`` (the binning) defaults to :func:`binning_for`.
    """
    prog = ensure(progress)
    factor = binning_for(data.shape) if factor is None else max(1, int(factor))
    small = _binned(data, factor, prog) if factor > 1 else np.asarray(data, dtype=np.float32)
    if small.size == 0:
        return Fiducials(np.zeros((0, 3)), np.zeros(0))
    smooth = ndimage.gaussian_filter(small, 1.0)
    sample = smooth[:: max(1, smooth.shape[0] // 32)]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826 or float(sample.std()) or 1.0
    dark = smooth < med - threshold * mad
    lab, n = ndimage.label(dark)
    if n == 0:
        return Fiducials(np.zeros((0, 3)), np.zeros(0))
    vs = float(voxel_size) if voxel_size else 10.0
    r_vox = bead_diameter_A / 2.0 / vs / factor
    sphere = 4.0 / 3.0 * np.pi * max(r_vox, 0.5) ** 3
    index = np.arange(1, n + 1)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    darkest = np.asarray(ndimage.minimum(smooth, lab, index=index))
    typical = float(np.median(darkest - med))  # the usual dark component (protein), < 0
    cut = med + min(-peak * mad, contrast * typical)
    centres, radii = [], []
    candidates = np.flatnonzero((darkest < cut) & (sizes >= sphere / 8)) + 1
    objs = ndimage.find_objects(lab, max_label=int(candidates.max())) if len(candidates) else []
    for k in candidates:
        sl = objs[k - 1]
        # the bead itself: the component's voxels at least CORE x as dark as its darkest, so
        # that dark protein touching it does not count (seen: a mitoribosome beside a bead
        # grew its component past 8 spheres, and at 0.2 x still made its core 20 x 6 voxels)
        core = (lab[sl] == k) & (smooth[sl] < med + CORE * (darkest[k - 1] - med))
        size = int(core.sum())
        if not sphere / 8 <= size <= sphere * 8:
            continue
        idx = np.argwhere(core)
        ext = (idx.max(axis=0) - idx.min(axis=0) + 1).astype(float)
        if ext.max() > 3 * max(ext.min(), 1):
            continue
        c = ndimage.center_of_mass(-smooth[sl] * core)
        centres.append((np.asarray([s.start for s in sl]) + np.asarray(c) + 0.5) * factor - 0.5)
        radii.append((3 * size / (4 * np.pi)) ** (1 / 3) * factor)
    return Fiducials(np.asarray(centres, float).reshape(-1, 3), np.asarray(radii, float))


def off_fiducials(zyx: np.ndarray, fiducials: Fiducials, margin: float = 2.0) -> np.ndarray:
    """True for each point farther than ``margin`` x radius (+1 voxel) from every bead."""
    zyx = np.asarray(zyx, float).reshape(-1, 3)
    keep = np.ones(len(zyx), bool)
    for c, r in zip(fiducials.zyx, fiducials.radius):
        keep &= np.sum((zyx - c) ** 2, axis=1) > (margin * r + 1.0) ** 2
    return keep
