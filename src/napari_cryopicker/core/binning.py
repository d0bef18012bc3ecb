"""Working at a coarser voxel size: block-mean binning of tomograms, and picks, class
diameters and maps carried between the binned and the full grid.

A 3D network's cost grows with the cube of the sampling. Particles 14-30 voxels across
are over-sampled for finding and telling them apart: binned by 2 they still span 7-15
voxels, each training step sees 8x more particles and prediction does 8x less work, and
the noise per voxel drops by sqrt(8). ``auto_binning`` chooses the largest factor that
keeps the smallest class at least ``min_diameter`` voxels across.

Voxel ``j`` of a grid binned by ``f`` averages voxels ``f*j .. f*j + f - 1`` of the full
grid, so its centre is at ``f*j + (f - 1)/2`` there (positions in voxels, [z, y, x]).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .classes import ClassTable
from .picks import Picks
from .progress import Progress, ensure
from .tomogram import Tomogram

DEFAULT_BINNING: int | str = "auto"  # TrainConfig's default ("auto" or a factor)
MIN_BINNED_DIAMETER = 7.0  # voxels: DeepETPicker's label diameter; smaller classes are not binned further
MAX_BINNING = 4


def auto_binning(classes: ClassTable, min_diameter: float = MIN_BINNED_DIAMETER, limit: int = MAX_BINNING) -> int:
    """The largest factor (1..``limit``) that leaves every class >= ``min_diameter`` voxels across."""
    if len(classes) == 0:
        return 1
    smallest = min(classes.diameters)
    return int(max(1, min(limit, math.floor(smallest / min_diameter + 1e-6))))


def binning_held_back(classes: ClassTable, min_diameter: float = MIN_BINNED_DIAMETER,
                      limit: int = MAX_BINNING) -> tuple[list[str], int, int]:
    """(names, factor, without): the classes that alone keep :func:`auto_binning` at
    ``factor`` where the others would allow ``without``; ([], f, f) when none does. A small
    look-alike class added to keep it apart from a large one sends a whole run to a finer
    grid (8x the work per halving of the factor), which the caller should say."""
    factor = auto_binning(classes, min_diameter, limit)
    for k in range(1, len(classes)):
        small = sorted(classes, key=lambda c: c.diameter)[:k]
        rest = ClassTable([c for c in classes if c not in small])
        without = auto_binning(rest, min_diameter, limit)
        if without > factor:
            return [c.name for c in small], factor, without
    return [], factor, factor


def bin_volume(data: np.ndarray, factor: int, progress: Progress | None = None,
               slab_voxels: int = 16_000_000) -> np.ndarray:
    """Block-mean of a (z, y, x) array (a memory map is read slab by slab, never whole) as
    float32; a remainder of fewer than ``factor`` voxels at the far end of an axis is dropped."""
    f = int(factor)
    if f <= 1:
        return np.asarray(data, dtype=np.float32)
    nz, ny, nx = (int(s) // f for s in data.shape)
    if min(nz, ny, nx) < 1:
        raise ValueError(f"a volume of shape {tuple(data.shape)} is too small to bin by {f}")
    out = np.empty((nz, ny, nx), np.float32)
    per = max(1, slab_voxels // max(1, ny * nx * f * f * f))  # binned slices per slab
    progress = ensure(progress)
    for z0 in range(0, nz, per):
        z1 = min(nz, z0 + per)
        progress.check()
        blk = np.asarray(data[z0 * f: z1 * f, : ny * f, : nx * f], dtype=np.float32)
        blk = np.nan_to_num(blk, nan=0.0, posinf=0.0, neginf=0.0) if not np.isfinite(blk).all() else blk
        out[z0:z1] = blk.reshape(z1 - z0, f, ny, f, nx, f).mean(axis=(1, 3, 5))
        progress.update(z1, nz, f"binning by {f}")
    return out


def binned_tomogram(tomo: Tomogram, factor: int, progress: Progress | None = None) -> Tomogram:
    """``tomo`` block-mean binned by ``factor`` (in memory), with its voxel size scaled."""
    f = int(factor)
    if f <= 1:
        return tomo
    xyz = tomo.voxel_size_xyz
    return Tomogram(data=bin_volume(tomo.data, f, progress), voxel_size=tomo.voxel_size * f, path=tomo.path,
                    voxel_size_xyz=None if xyz is None else tuple(v * f for v in xyz), label=tomo.label)


class SubvoxelView:
    """A volume seen on the grid binned by ``factor`` without averaging anything away: its
    ``shape`` is the binned grid's, and ``view[za:zb, ya:yb, xa:xb]`` (slices of that grid,
    step 1) gives the full-resolution block under those binned voxels, ``factor`` times
    larger per axis. A network with ``ModelConfig.subvoxels == factor`` takes such blocks
    and answers on the binned grid, so crops, tiles, labels and picks all stay in binned
    voxels. Reads go to ``full`` (a memory map is read block by block, never whole). Its
    statistics (:meth:`strided_sample`) are those of the binned tomogram."""

    ndim = 3

    def __init__(self, full, factor: int):
        self.full, self.factor = full, int(factor)
        if self.factor < 1:
            raise ValueError(f"a sub-voxel factor must be >= 1, not {factor}")
        self.shape = tuple(int(s) // self.factor for s in full.shape)
        if min(self.shape) < 1:
            raise ValueError(f"a volume of shape {tuple(full.shape)} is too small to bin by {self.factor}")
        self.dtype = full.dtype

    def __getitem__(self, key):
        if not isinstance(key, tuple) or len(key) != 3 or not all(isinstance(k, slice) for k in key):
            raise TypeError("a SubvoxelView takes three slices (z, y, x)")
        f, out = self.factor, []
        for k, n in zip(key, self.shape):
            a, b, step = k.indices(n)
            if step != 1:
                raise TypeError("a SubvoxelView takes slices of step 1")
            out.append(slice(a * f, max(a, b) * f))
        return self.full[tuple(out)]

    def strided_sample(self, step: int) -> np.ndarray:
        """Every ``step``-th voxel of the binned grid along each axis, as block means (float32):
        the statistics of a view are the binned tomogram's, so that its block means are
        normalised as the binned tomogram would be (read one binned slice at a time)."""
        f, step = self.factor, max(1, int(step))
        nz, ny, nx = self.shape
        return np.stack([bin_volume(self.full[z * f: (z + 1) * f, : ny * f, : nx * f], f)[0, ::step, ::step]
                         for z in range(0, nz, step)])


def subvoxel_tomogram(tomo: Tomogram, factor: int) -> Tomogram:
    """``tomo`` on the grid binned by ``factor`` as a :class:`SubvoxelView` (nothing is read
    or averaged), with its voxel size scaled."""
    f = int(factor)
    if f <= 1:
        return tomo
    xyz = tomo.voxel_size_xyz
    return Tomogram(data=SubvoxelView(tomo.data, f), voxel_size=tomo.voxel_size * f, path=tomo.path,
                    voxel_size_xyz=None if xyz is None else tuple(v * f for v in xyz), label=tomo.label)


def working_tomogram(tomo: Tomogram, factor: int, subvoxels: bool = False,
                     progress: Progress | None = None) -> Tomogram:
    """The tomogram on the grid a network works at: block-mean binned by ``factor``, or
    (``subvoxels``) seen through a :class:`SubvoxelView` by a network that takes sub-voxels."""
    return subvoxel_tomogram(tomo, factor) if subvoxels else binned_tomogram(tomo, factor, progress)


def picks_to_binned(picks: Picks, factor: int) -> Picks:
    """Picks in the voxels of the grid binned by ``factor``."""
    f = int(factor)
    if f <= 1:
        return picks
    out = picks.copy()
    out.table[["z", "y", "x"]] = (out.table[["z", "y", "x"]].to_numpy(float) - (f - 1) / 2) / f
    if out.voxel_size is not None:
        out.voxel_size = out.voxel_size * f
    return out


def picks_from_binned(picks: Picks, factor: int) -> Picks:
    """Picks on a grid binned by ``factor`` back in the full grid's voxels."""
    f = int(factor)
    if f <= 1:
        return picks
    out = picks.copy()
    out.table[["z", "y", "x"]] = out.table[["z", "y", "x"]].to_numpy(float) * f + (f - 1) / 2
    if out.voxel_size is not None:
        out.voxel_size = out.voxel_size / f
    return out


def classes_binned(classes: ClassTable, factor: int) -> ClassTable:
    """The class table with diameters in voxels of the grid binned by ``factor``."""
    f = int(factor)
    if f <= 1:
        return classes
    return ClassTable([replace(c, diameter=c.diameter / f) for c in classes])


def unbin_map(arr: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """A map on the binned grid (any leading axes, then z, y, x) repeated back to the full
    grid of ``shape`` (z, y, x); the dropped remainder takes the nearest binned voxel."""
    f = int(factor)
    if f <= 1:
        return arr
    out = arr
    lead = arr.ndim - 3
    for ax, n in enumerate(shape):
        a = lead + ax
        out = np.repeat(out, f, axis=a)
        have = out.shape[a]
        if have < n:
            edge = np.take(out, [have - 1], axis=a)
            out = np.concatenate([out, np.repeat(edge, n - have, axis=a)], axis=a)
        elif have > n:
            out = np.take(out, np.arange(n), axis=a)
    return out
