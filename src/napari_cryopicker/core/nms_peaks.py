"""The peaks of one class in MP-NMS (steps 2 and 3 of :mod:`.nms`): mean pooling on the
``bin`` grid, local maxima with plateaus merged, the refinement of a coarse peak at full
resolution, and the scores read around each peak (batched gathers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # pragma: no cover
    from .nms import NMSParams

def _smooth(s: np.ndarray, k: int, n: int) -> np.ndarray:
    for _ in range(n):
        s = ndimage.uniform_filter(s, size=k, mode="constant", cval=0.0)
    return s


def bin_mean(s: np.ndarray, b: int) -> np.ndarray:
    """Mean over b^3 blocks (zero padding at the far ends), as float32. uint8 input is
    summed in uint16 (exact for b <= 4), which halves the memory traffic."""
    if b == 1:
        return s.astype(np.float32, copy=False)
    pad = [(0, (-n) % b) for n in s.shape]
    if any(p[1] for p in pad):
        s = np.pad(s, pad)
    z, y, x = s.shape  # reduce the outer axes first: whole rows are added at a time
    acc = np.uint16 if s.dtype == np.uint8 and b**3 * 255 < 2**16 else np.float32
    out = s.reshape(z // b, b, y, x).sum(axis=1, dtype=acc)
    out = out.reshape(z // b, y // b, b, x).sum(axis=2, dtype=acc)
    out = out.reshape(z // b, y // b, x // b, b).sum(axis=3, dtype=acc)
    return out.astype(np.float32) * np.float32(1.0 / b**3)


def _gather_mean(vol: np.ndarray, at: np.ndarray, offs: np.ndarray, denom: float | None = None,
                 value: int | None = None, chunk: int = 1 << 22) -> np.ndarray:
    """Mean of ``vol`` (or of ``vol == value``) at ``at[i] + offs`` for each i, batched.

    With ``denom``, points outside the volume count as zero and the sum is divided by
    ``denom``; with ``denom`` None, only the points inside count."""
    out = np.zeros(len(at))
    if not len(at) or not len(offs):
        return out
    shp = np.asarray(vol.shape)
    flat_vol = vol.reshape(-1)  # a view for contiguous arrays and memory maps
    strides = np.array([shp[1] * shp[2], shp[2], 1], np.int64)
    flat_offs = offs @ strides
    # points whose whole neighbourhood is inside: one flat gather, no bounds checks
    whole = np.all((at + offs.min(axis=0) >= 0) & (at + offs.max(axis=0) < shp), axis=1)
    step = max(1, chunk // len(offs))
    idx = np.flatnonzero(whole)
    for s0 in range(0, len(idx), step):
        i = idx[s0:s0 + step]
        v = np.take(flat_vol, (at[i] @ strides)[:, None] + flat_offs[None])
        if value is not None:
            v = v == value
        out[i] = v.sum(axis=1, dtype=np.float64) / (denom if denom else len(offs))
    for i in np.flatnonzero(~whole):  # near the edges
        pos = at[i] + offs
        ok = np.all((pos >= 0) & (pos < shp), axis=1)
        v = np.take(flat_vol, pos[ok] @ strides)
        if value is not None:
            v = v == value
        out[i] = v.sum(dtype=np.float64) / (denom if denom else max(int(ok.sum()), 1))
    return out


def _local_mean(score: np.ndarray, at: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``score`` in the k^3 cube (zero outside) around each integer position."""
    h = k // 2
    g = np.arange(-h, h + 1)
    offs = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    return _gather_mean(score, np.asarray(at, np.int64), offs, denom=float(k**3))


def _axis_operator(length: int, k: int, n: int) -> np.ndarray:
    """``n`` passes of a size-``k`` mean filter (zero outside) on a line of ``length``
    voxels, as a (length, length) matrix: what ``_smooth`` does along one axis."""
    h = k // 2
    i = np.arange(length)
    B = (np.abs(i[:, None] - i[None, :]) <= h).astype(np.float64) / k
    return np.linalg.matrix_power(B, n)


def _refine(score: np.ndarray, centres: np.ndarray, params: NMSParams, chunk: int = 256) -> np.ndarray:
    """Move each coarse peak to the full-resolution peak near it: the maximum of the fine
    mean-pooled score within one block of the coarse position (a plateau gives its
    centroid).

    The fine pooled score is needed only in that (2b+1)^3 window, and ``n`` passes of a
    separable mean filter are a fixed linear operator per axis, so each window is three
    small matrix products of the (2R+1)^3 box of ``score`` around the peak — batched over
    peaks. Boxes cut by the volume's edge get the operator of the cut line, so the result
    equals smoothing the whole volume with zeros outside.
    """
    b, k, n = params.bin, params.kernel, params.n_pool
    R = params.refine_radius()
    L, W = 2 * R + 1, 2 * b + 1
    shp = np.asarray(score.shape)
    ci = np.floor(centres + 0.5).astype(np.int64)
    out = centres.astype(float, copy=True)
    cache: dict[tuple[int, int], np.ndarray] = {}

    def operator(c: int, size: int) -> np.ndarray:
        """(W, L) rows of the operator for the window around c on an axis of ``size``."""
        lo, hi = max(c - R, 0), min(c + R + 1, size)
        key = (lo - (c - R), hi - lo)
        m = cache.get(key)
        if m is None:
            o, m_len = key
            full = _axis_operator(m_len, k, n)
            m = np.zeros((W, L), np.float32)
            for w in range(W):
                q = R - b + w - o  # the window voxel's row in the cut line
                if 0 <= q < m_len:
                    m[w, o:o + m_len] = full[q]
            cache[key] = m
        return m

    for s0 in range(0, len(ci), chunk):
        cc = ci[s0:s0 + chunk]
        box = np.zeros((len(cc), L, L, L), np.float32)
        ops = np.empty((3, len(cc), W, L), np.float32)
        valid = np.ones((len(cc), W, W, W), bool)
        for j, c in enumerate(cc):
            lo = np.maximum(c - R, 0)
            hi = np.minimum(c + R + 1, shp)
            o = lo - (c - R)
            box[j, o[0]:o[0] + hi[0] - lo[0], o[1]:o[1] + hi[1] - lo[1], o[2]:o[2] + hi[2] - lo[2]] = \
                score[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            for a in range(3):
                ops[a, j] = operator(int(c[a]), int(shp[a]))
            wlo = np.maximum(b - c, 0)
            whi = np.minimum(shp - (c - b), W)
            if np.any(wlo > 0) or np.any(whi < W):
                valid[j] = False
                valid[j, wlo[0]:whi[0], wlo[1]:whi[1], wlo[2]:whi[2]] = True
        # x, then y, then z: (n, L, L, L) -> (n, L, L, W) -> (n, L, W, W) -> (n, W, W, W)
        t = box @ ops[2][:, None].transpose(0, 1, 3, 2)
        t = np.swapaxes(np.swapaxes(t, 2, 3) @ ops[1][:, None].transpose(0, 1, 3, 2), 2, 3)
        t = np.einsum("nwz,nzyx->nwyx", ops[0], t)
        t = np.where(valid, t, -np.inf)
        flat = t.reshape(len(cc), -1)
        top = flat.max(axis=1)
        for j in range(len(cc)):
            if not top[j] > 0:
                continue
            # equal within float rounding: the products sum in another order than a filter
            at = np.argwhere(t[j] >= top[j] - 1e-6 * top[j])
            out[s0 + j] = at.mean(axis=0) + cc[j] - b
    return out


def find_peaks(score: np.ndarray, params: NMSParams, unit: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of one class's masked probability volume (already resolved params).

    Pooling and the local-maximum search run on the ``params.bin`` grid (b^3 block
    means; every voxel when b is 1); a peak found on a coarse grid is refined to the
    centroid of the full-resolution score around it. Returns (zyx float array (N, 3),
    scores (N,)); a peak's score is the mean masked probability in a small cube (edge
    about half the kernel) around it.
    """
    b = max(1, params.bin)
    if score.dtype != np.uint8 or b == 1:  # uint8 scores (x unit) stay compact on a coarse grid
        score = score.astype(np.float32, copy=False)
        if unit != 1.0:
            score = score * np.float32(unit)
        unit = 1.0
    kc, tc = params.coarse()
    coarse = bin_mean(score, b)
    if unit != 1.0:
        coarse *= np.float32(unit)
    s = _smooth(coarse, kc, params.n_pool)
    mx = ndimage.maximum_filter(s, size=2 * tc + 1, mode="constant", cval=0.0)
    peaks = (s >= mx) & (s > 1e-6)
    flat = np.flatnonzero(peaks)
    if not len(flat):
        return np.zeros((0, 3)), np.zeros(0)
    # plateaus (equal neighbouring maxima) -> one pick at their centroid
    lab, n = ndimage.label(peaks, structure=np.ones((3, 3, 3), dtype=bool))
    ids = lab.ravel()[flat]
    coords = np.stack(np.unravel_index(flat, peaks.shape), axis=1).astype(float)
    cnt = np.bincount(ids, minlength=n + 1)[1:]
    centres = np.stack([np.bincount(ids, weights=coords[:, a], minlength=n + 1)[1:] for a in range(3)], 1)
    centres /= cnt[:, None]
    k = max(3, (params.kernel // 2) | 1)
    if b > 1:
        centres = (centres + 0.5) * b - 0.5
        # peaks far below the score threshold are not worth refining
        at = np.clip(np.floor(centres + 0.5).astype(np.int64), 0, np.asarray(score.shape) - 1)
        centres = centres[_local_mean(score, at, k) * unit >= 0.5 * params.t_lm]
        centres = _refine(score, centres, params)
    at = np.clip(np.floor(centres + 0.5).astype(np.int64), 0, np.asarray(score.shape) - 1)
    vals = _local_mean(score, at, k) * unit
    ok = vals >= params.t_lm
    return centres[ok], vals[ok]
