"""The optics of the phantom tomograms, all on the ``rfftn`` grid of a (z, y, x) volume:
the missing wedge of a single-axis tilt series, the phase-flipped CTF and its B-factor
envelope, and the variance of a volume from its spectrum (see :mod:`.simulate`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.fft as sfft

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
