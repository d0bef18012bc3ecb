"""Display filters for tomograms (pure numpy/scipy; run in a worker by the Tomogram panel).

They only change what you look at: training and picking always read the original
tomogram. Each returns a new float32 volume of the same shape.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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


def equalise(vol: np.ndarray, nbins: int = 1024, clip: float = 0.5) -> np.ndarray:
    """Histogram equalisation to 0..1 (the histogram from a sample; percentiles clipped)."""
    v = _as_float(vol)
    flat = v.ravel()
    sample = flat if flat.size <= 4_000_000 else flat[:: flat.size // 4_000_000 + 1]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.zeros_like(v)
    lo, hi = np.percentile(sample, [clip, 100 - clip])
    if hi <= lo:
        hi = lo + 1.0
    hist, edges = np.histogram(np.clip(sample, lo, hi), bins=nbins, range=(lo, hi))
    cdf = np.cumsum(hist).astype(np.float64)
    cdf /= cdf[-1]
    centres = (edges[:-1] + edges[1:]) / 2
    out = np.interp(np.clip(v, lo, hi).ravel(), centres, cdf).astype(np.float32)
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


def apply(kind: str, vol: np.ndarray, **params) -> np.ndarray:
    if kind not in FILTERS:
        raise ValueError(f"unknown filter {kind!r}; choose one of {', '.join(FILTERS)}")
    return FILTERS[kind](vol, **params)
