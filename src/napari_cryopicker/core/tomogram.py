"""Tomogram I/O: memory-mapped MRC reading with the header's voxel size, writing,
and robust intensity normalisation.

Arrays are indexed ``[z, y, x]`` (as mrcfile gives them); ``voxel_size`` is in Angstrom.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np

from .atomic import atomic_output
from .errors import CryoPickerWarning, TomogramError

TOMOGRAM_SUFFIXES = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali")


@dataclass
class Tomogram:
    """A tomogram: a (z, y, x) array (usually a read-only memory map) and its voxel size."""

    data: np.ndarray  # or a lazy array that slices like one (an OME-Zarr level)
    voxel_size: float  # Angstrom, isotropic (x of the header)
    path: Path | None = None
    voxel_size_xyz: tuple[float, float, float] | None = None
    label: str | None = None  # the name, where the file's stem is not it (a copick run)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return self.path.stem if self.path is not None else "tomogram"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape)  # type: ignore[return-value]

    @property
    def scale(self) -> tuple[float, float, float]:
        """napari scale (vz, vy, vx) in Angstrom."""
        if self.voxel_size_xyz is not None:
            x, y, z = self.voxel_size_xyz
            return (z, y, x)
        v = self.voxel_size
        return (v, v, v)


def is_tomogram_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(TOMOGRAM_SUFFIXES)


def read_voxel_size(path: str | os.PathLike) -> float | None:
    """Voxel size (Angstrom) from an MRC header without reading the data; None if unset."""
    try:
        with mrcfile.open(path, header_only=True, permissive=True) as m:
            vs = float(m.voxel_size.x)
    except Exception:
        return None
    return vs if vs > 0 else None


def open_tomogram_near(path: str | os.PathLike, level: int = 0) -> Tomogram:
    """:func:`open_tomogram` at scale ``level``, or at the coarsest level the file has (an
    MRC file has one): the tomograms of a project are read at the level chosen for the
    one in the viewer, whatever levels each of them has."""
    from .omezarr import is_ome_zarr, levels

    if level and is_ome_zarr(path):
        level = min(int(level), len(levels(path)) - 1)
    return open_tomogram(path, level=level if is_ome_zarr(path) else 0)


def open_tomogram(path: str | os.PathLike, mmap: bool = True, *, level: int = 0) -> Tomogram:
    """Open an MRC tomogram as a (z, y, x) memory map with its voxel size, or one scale
    ``level`` of an OME-Zarr tomogram (lazy; see :mod:`.omezarr`).

    Raises :class:`TomogramError` with a message naming the file for anything that is
    not a readable 3D volume. A zero voxel size warns and assumes 1 Angstrom.
    """
    p = Path(path)
    from .omezarr import is_ome_zarr, open_ome_zarr

    if is_ome_zarr(p):
        return open_ome_zarr(p, level)
    if level:
        raise TomogramError(f"{p}: an MRC file has one scale level; bin it, or open an OME-Zarr tomogram")
    if p.is_dir():
        raise TomogramError(f"{p}: is a directory, not a tomogram file; give the .mrc file inside it")
    if not p.exists():
        raise TomogramError(f"{p}: no such file")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if mmap:
                m = mrcfile.mmap(p, mode="r", permissive=True)
            else:
                m = mrcfile.open(p, mode="r", permissive=True)
    except Exception as e:  # mrcfile raises ValueError/OSError/EOFError etc.
        raise TomogramError(
            f"{p}: not a readable MRC file ({e}); check that this is the tomogram (.mrc/.rec) and "
            "not a renamed or partly copied file, or re-export it from your reconstruction program"
        ) from None
    data = m.data
    problems = [str(w.message) for w in caught]
    if data is None:
        m.close()
        detail = f" ({problems[0]})" if problems else ""
        raise TomogramError(
            f"{p}: not a valid MRC file or truncated{detail}; re-export it from your "
            "reconstruction program"
        )
    if data.ndim != 3 or min(data.shape) < 1:
        shape = tuple(data.shape)
        m.close()
        if data.ndim == 3:
            raise TomogramError(f"{p}: holds an empty volume of shape {shape}; re-export the tomogram")
        kind = "a 2D image" if data.ndim == 2 else f"{data.ndim}D data (a stack of volumes)"
        raise TomogramError(
            f"{p}: holds {kind} of shape {shape}; a tomogram must be a 3D volume (z, y, x). "
            "Open one tomogram, not a projection, tilt image or stack"
        )
    if data.dtype.kind == "c":
        m.close()
        raise TomogramError(f"{p}: complex-valued MRC data is not a tomogram")
    vs_rec = m.voxel_size
    vs_xyz = (float(vs_rec.x), float(vs_rec.y), float(vs_rec.z))
    if not all(np.isfinite(vs_xyz)) or vs_xyz[0] <= 0:
        warnings.warn(
            f"{p}: the MRC header has no voxel size (0); assuming 1 Angstrom per voxel. "
            "Set the real voxel size for correct export coordinates.",
            CryoPickerWarning,
            stacklevel=2,
        )
        vs_xyz = (1.0, 1.0, 1.0)
    elif vs_xyz[1] <= 0 or vs_xyz[2] <= 0:
        vs_xyz = (vs_xyz[0],) * 3
    bad, exhaustive = count_nonfinite(data)
    if bad:
        where = "" if exhaustive else " (counted in a sample of its slices)"
        warnings.warn(
            f"{p}: {bad} voxel(s) are NaN or infinite{where}; they are left out of the intensity "
            "normalisation and read as the mean intensity. Re-export the tomogram if this is unexpected.",
            CryoPickerWarning,
            stacklevel=2,
        )
    # keep the mrcfile object alive with the memory map; close it when data is collected
    tomo = Tomogram(data=data, voxel_size=vs_xyz[0], path=p, voxel_size_xyz=vs_xyz)
    tomo._mrc = m  # type: ignore[attr-defined]
    return tomo


def count_nonfinite(data: np.ndarray, max_voxels: int = 32_000_000, chunk: int = 4_000_000) -> tuple[int, bool]:
    """Number of NaN/infinite voxels of a float volume, and whether every voxel was looked at.

    Volumes above ``max_voxels`` are checked on a regular subset of z-slices (a memory map is
    read slab by slab, never whole).
    """
    if np.dtype(data.dtype).kind not in "fc" or data.size == 0:
        return 0, True
    nz = int(data.shape[0])
    per_slice = max(1, int(data.size // max(nz, 1)))
    step = max(1, int(np.ceil(data.size / max_voxels)))
    zs = range(0, nz, step)
    n_chunk = max(1, chunk // per_slice)
    bad = 0
    for i in range(0, len(zs), n_chunk):
        sl = zs[i : i + n_chunk]
        block = np.asarray(data[sl.start : sl.stop : step] if step > 1 else data[sl.start : sl.stop])
        bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    return bad, step == 1


def write_tomogram(
    path: str | os.PathLike, data: np.ndarray, voxel_size: float | tuple[float, float, float] = 1.0
) -> Path:
    """Write a (z, y, x) volume as MRC with the given voxel size, atomically."""
    p = Path(path)
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise TomogramError(f"{p}: can only write 3D volumes (z, y, x), got shape {arr.shape}")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.int8)
    elif arr.dtype == np.int64:
        arr = arr.astype(np.int32)
    with atomic_output(p) as tmp:
        with mrcfile.new(tmp, overwrite=True) as m:
            m.set_data(np.ascontiguousarray(arr))
            m.voxel_size = voxel_size
    return p


def percentile_stats(data: np.ndarray, lo: float = 0.5, hi: float = 99.5, max_samples: int = 2_000_000,
                     seed: int = 0) -> tuple[float, float]:
    """Robust (lo, hi) percentiles from a strided sample, without loading the whole volume.

    NaN and infinite voxels are left out; a volume without finite voxels gives (0, 1). A
    view that samples itself (``strided_sample(step)``, :class:`.binning.SubvoxelView`) is
    sampled that way.
    """
    arr = data
    n = int(np.prod(arr.shape))
    step = max(1, int(round((n / max_samples) ** (1 / 3)))) if n > max_samples else 1
    sampler = getattr(arr, "strided_sample", None)
    if sampler is not None:
        sample = np.asarray(sampler(step), dtype=np.float32)
    elif step > 1:
        # sample a regular grid of slices (cheap on a memory map)
        sample = np.asarray(arr[::step, ::step, ::step], dtype=np.float32)
    else:
        sample = np.asarray(arr, dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    a, b = np.percentile(sample, [lo, hi])
    if b <= a:
        b = a + 1.0
    return float(a), float(b)


def robust_normalisation(data: np.ndarray, lo: float = 0.5, hi: float = 99.5) -> tuple[float, float]:
    """(centre, scale) so that ``(x - centre) / scale`` maps the lo..hi percentiles to about -1..1."""
    a, b = percentile_stats(data, lo, hi)
    return (a + b) / 2.0, max((b - a) / 2.0, 1e-6)


def normalise(block: np.ndarray, centre: float, scale: float, clip: float = 5.0) -> np.ndarray:
    """``(block - centre) / scale`` clipped to +-clip; NaN/infinite voxels become 0 (the mean)."""
    block = np.asarray(block, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        out = (block - np.float32(centre)) / np.float32(scale)
    bad = ~np.isfinite(block)
    np.nan_to_num(out, copy=False, nan=0.0, posinf=clip, neginf=-clip)  # overflow of huge values
    if bad.any():
        out[bad] = 0.0
    np.clip(out, -clip, clip, out=out)
    return out


def normalise_tensor(x, centre: float, scale: float, clip: float = 5.0):
    """:func:`normalise` for a torch tensor of any number type, on its device (float32 out)."""
    import torch  # the core's I/O needs no torch; only prediction calls this

    x = x.to(torch.float32)
    out = (x - centre) / scale  # float32 arithmetic, as normalise's
    if not x.isfinite().all():
        out = out.masked_fill(~x.isfinite(), 0.0)
    out = torch.nan_to_num_(out, nan=0.0, posinf=clip, neginf=-clip)
    return out.clamp_(-clip, clip)
