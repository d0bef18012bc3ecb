"""Display filters for tomograms (pure numpy/scipy; run in a worker by the Tomogram panel).

They only change what you look at: training and picking always read the original
tomogram. :func:`apply` runs a filter slab by slab along z, each slab read from the
(memory-mapped) tomogram with the halo the filter needs, so the result equals filtering
the whole volume at once while only a slab is in RAM; it reports progress and stops
between slabs. The float32 result spills to an unlinked scratch file when it would take
more than an eighth of the machine's RAM.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from ..core.memory import physical_memory, scratch_zeros
from ..core.progress import Progress, ensure

SLAB = 16  # z-slices computed at a time


def _as_float(vol: np.ndarray) -> np.ndarray:
    return np.asarray(vol, dtype=np.float32)


def gaussian(vol: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Gaussian low-pass (sigma in voxels): suppresses noise, keeps particle shapes."""
    if sigma <= 0:
        return _as_float(vol).copy()
    return ndimage.gaussian_filter(_as_float(vol), sigma=float(sigma), mode="reflect")


def bandpass(vol: np.ndarray, fine: float = 1.0, coarse: float = 8.0) -> np.ndarray:
    """Band-pass as a difference of Gaussians (sigmas in voxels): removes noise finer than
    ``fine`` and gradients (ice thickness, missing-wedge shading) coarser than ``coarse``."""
    if coarse <= fine:
        raise ValueError(f"band-pass needs coarse > fine, got fine={fine}, coarse={coarse}")
    v = _as_float(vol)
    low = ndimage.gaussian_filter(v, sigma=float(fine), mode="reflect") if fine > 0 else v.copy()
    low -= ndimage.gaussian_filter(v, sigma=float(coarse), mode="reflect")
    return low


def equalisation_table(vol: np.ndarray, nbins: int = 1024, clip: float = 0.5,
                       max_sample: int = 4_000_000) -> tuple[np.ndarray, np.ndarray]:
    """(intensities, cumulative fractions) of a histogram equalisation, from a regular
    sample of the volume (every k-th slice, row and column: a memory map is read sparsely)."""
    shape = vol.shape
    k = max(1, math.ceil((math.prod(shape) / max_sample) ** (1 / 3)))
    sample = _as_float(vol[::k, ::k, ::k]).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.array([0.0, 1.0]), np.array([0.0, 0.0])
    lo, hi = np.percentile(sample, [clip, 100 - clip])
    if hi <= lo:
        hi = lo + 1.0
    hist, edges = np.histogram(np.clip(sample, lo, hi), bins=nbins, range=(lo, hi))
    cdf = np.cumsum(hist).astype(np.float64)
    cdf /= cdf[-1]
    return (edges[:-1] + edges[1:]) / 2, cdf


def equalise(vol: np.ndarray, table: tuple[np.ndarray, np.ndarray] | None = None, **kw) -> np.ndarray:
    """Histogram equalisation to 0..1 (the table from :func:`equalisation_table`)."""
    centres, cdf = table if table is not None else equalisation_table(vol, **kw)
    v = _as_float(vol)
    out = np.interp(np.clip(v, centres[0], centres[-1]).ravel(), centres, cdf).astype(np.float32)
    return out.reshape(v.shape)


def slab_average(vol: np.ndarray, n: int = 5, axis: int = 0) -> np.ndarray:
    """Running mean over ``n`` neighbouring z-slices (a thicker, less noisy slab)."""
    n = int(n)
    if n <= 1:
        return _as_float(vol).copy()
    return ndimage.uniform_filter1d(_as_float(vol), size=n, axis=axis, mode="nearest")


FILTERS = {
    "gaussian": gaussian,
    "bandpass": bandpass,
    "equalise": equalise,
    "slab": slab_average,
}


def halo(kind: str, **params) -> int:
    """z-slices a slab needs beyond its own for the result to equal the whole volume's."""
    if kind == "gaussian":
        return int(math.ceil(4.0 * float(params.get("sigma", 1.5)))) + 1
    if kind == "bandpass":
        return int(math.ceil(4.0 * float(params.get("coarse", 8.0)))) + 1
    if kind == "slab":
        return int(params.get("n", 5)) // 2 + 1
    return 0


def describe(kind: str, **params) -> str:
    if kind == "gaussian":
        return f"gaussian s={params.get('sigma', 1.5):g}"
    if kind == "bandpass":
        return f"band-pass {params.get('fine', 1.0):g}-{params.get('coarse', 8.0):g}"
    if kind == "equalise":
        return "equalised"
    if kind == "slab":
        return f"slab {int(params.get('n', 5))}"
    return kind


def apply(kind: str, vol: np.ndarray, progress: Progress | None = None, *, slab: int | None = None,
          max_ram: int | None = None, **params) -> np.ndarray:
    """``kind`` over ``vol`` (z, y, x), slab by slab: same result as the whole volume at once,
    stoppable (:class:`~..core.errors.Cancelled` between slabs), memory-bounded."""
    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r}; choose one of {', '.join(FILTERS)}")
    if kind == "bandpass" and params.get("coarse", 8.0) <= params.get("fine", 1.0):
        raise ValueError(f"band-pass needs coarse > fine, got {params}")
    progress = ensure(progress)
    fn = FILTERS[kind]
    if kind == "equalise":
        params = {"table": equalisation_table(vol, **params)}
    nz = vol.shape[0]
    slab = int(slab or SLAB)
    h = halo(kind, **params) if kind != "equalise" else 0
    limit = physical_memory() // 8 if max_ram is None else int(max_ram)
    out = scratch_zeros(vol.shape, np.float32, on_disk=4 * math.prod(vol.shape) > limit)
    starts = range(0, nz, max(1, slab))
    for i, z0 in enumerate(starts):
        progress.check()
        z1 = min(nz, z0 + slab)
        a, b = max(0, z0 - h), min(nz, z1 + h)
        res = fn(vol[a:b], **params)
        out[z0:z1] = res[z0 - a: z1 - a]
        progress.update(i + 1, len(starts), f"{describe(kind, **params)}: slices {z1}/{nz}")
    return out
