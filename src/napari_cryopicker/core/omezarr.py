"""OME-Zarr (OME-NGFF 0.4) tomograms, read lazily through zarr: the layout of copick
projects and of the CryoET Data Portal (``<run>/VoxelSpacing10.000/wbp.zarr``, levels
0/1/2 each binned by 2, axes z, y, x in Angstrom).

A level is a zarr array: slicing it reads only the chunks it touches, so training and
picking read tiles from the chosen level as they do from an MRC memory map.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TomogramError

# OME-NGFF axis units -> Angstrom
UNITS = {"angstrom": 1.0, "nanometer": 10.0, "micrometer": 1e4, "picometer": 0.01, "": 1.0}


@dataclass(frozen=True)
class Level:
    """One scale level: its dataset path, shape (z, y, x) and voxel size (x, y, z) in A."""

    path: str
    shape: tuple[int, int, int]
    voxel_size_xyz: tuple[float, float, float]

    @property
    def voxel_size(self) -> float:
        return self.voxel_size_xyz[0]


def is_ome_zarr(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.suffix.lower() == ".zarr" or (p.is_dir() and ((p / ".zattrs").exists() or (p / "zarr.json").exists()))


def _zarr():
    try:
        import zarr
    except ImportError as e:  # pragma: no cover - zarr comes with the copick extra
        raise TomogramError(f"reading OME-Zarr needs zarr ({e}); pip install 'napari-cryopicker[copick]'") from None
    return zarr


def _group(p: Path):
    zarr = _zarr()
    if not p.exists():
        raise TomogramError(f"{p}: no such file or folder")
    try:
        return zarr.open_group(str(p), mode="r")
    except Exception as e:
        raise TomogramError(f"{p}: not a readable OME-Zarr folder ({e})") from None


def levels(path: str | os.PathLike) -> list[Level]:
    """The scale levels of an OME-Zarr image, finest first, from its multiscales metadata."""
    p = Path(path)
    g = _group(p)
    ms = g.attrs.get("multiscales")
    if not ms:
        raise TomogramError(f"{p}: a zarr folder without OME multiscales metadata (.zattrs 'multiscales'); "
                            "write it as OME-Zarr (ome-zarr, copick) or export the tomogram as MRC")
    ms = ms[0]
    axes = ms.get("axes") or [{"name": n, "type": "space"} for n in "zyx"]
    axes = [a if isinstance(a, dict) else {"name": a, "type": "space" if a in "zyx" else ""} for a in axes]
    space = [i for i, a in enumerate(axes) if a.get("type") == "space" or a.get("name") in ("z", "y", "x")]
    if len(space) != 3:
        raise TomogramError(f"{p}: OME-Zarr with {len(space)} spatial axes; a tomogram has 3 (z, y, x)")
    names = [str(axes[i].get("name", "zyx"[k])).lower() for k, i in enumerate(space)]
    if names != ["z", "y", "x"]:
        raise TomogramError(f"{p}: OME axes {names}; tomograms are read in z, y, x order")
    order = space
    unit = UNITS.get(str(axes[order[-1]].get("unit", "")).lower())
    if unit is None:
        raise TomogramError(f"{p}: unknown OME axis unit {axes[order[-1]].get('unit')!r}")
    glob = _scale(ms.get("coordinateTransformations"), len(axes))
    out = []
    for ds in ms.get("datasets", []):
        try:
            arr = g[ds["path"]]
        except KeyError:
            raise TomogramError(f"{p}: level {ds['path']!r} is in the metadata but not on disk") from None
        s = _scale(ds.get("coordinateTransformations"), len(axes)) * glob
        sz, sy, sx = (float(s[i]) * unit for i in order)
        shape = tuple(int(arr.shape[i]) for i in order)
        out.append(Level(str(ds["path"]), shape, (sx, sy, sz)))  # type: ignore[arg-type]
    if not out:
        raise TomogramError(f"{p}: OME-Zarr metadata lists no datasets")
    return out


def _scale(transforms, n: int) -> np.ndarray:
    s = np.ones(n)
    for t in transforms or []:
        if t.get("type") == "scale" and "scale" in t:
            s = s * np.asarray(t["scale"], float)
    return s


class _Spatial:
    """A zarr array with extra axes of length 1 (channel, time) seen as (z, y, x)."""

    def __init__(self, arr, keep: list[int]):
        self.arr, self.keep = arr, keep
        self.shape = tuple(int(arr.shape[i]) for i in keep)
        self.dtype = arr.dtype
        self.ndim = 3
        self.size = int(np.prod(self.shape))

    def __getitem__(self, idx):
        if not isinstance(idx, tuple):
            idx = (idx,)
        idx = idx + (slice(None),) * (3 - len(idx))
        full = [0] * self.arr.ndim
        for k, i in enumerate(self.keep):
            full[i] = idx[k]
        return self.arr[tuple(full)]

    def __array__(self, dtype=None, copy=None):
        a = np.asarray(self[:, :, :])
        return a.astype(dtype) if dtype is not None else a


def run_name(path: Path) -> str:
    """copick / portal layout ``<run>/VoxelSpacing10.000/<type>.zarr``: the run's name;
    otherwise the folder's stem."""
    if re.match(r"(?i)voxelspacing", path.parent.name):
        return path.parent.parent.name
    return path.stem


def open_ome_zarr(path: str | os.PathLike, level: int = 0):
    """Open one scale level of an OME-Zarr tomogram lazily (0: the finest)."""
    from .tomogram import Tomogram

    p = Path(path)
    lv = levels(p)
    if not 0 <= int(level) < len(lv):
        raise TomogramError(f"{p}: has scale levels 0-{len(lv) - 1} "
                            f"({', '.join(f'{k}: {x.voxel_size:.4g} A' for k, x in enumerate(lv))}), not {level}")
    chosen = lv[int(level)]
    arr = _group(p)[chosen.path]
    if arr.ndim != 3:
        singleton = [i for i, n in enumerate(arr.shape) if n == 1]
        keep = [i for i in range(arr.ndim) if i not in singleton][-3:]
        if len(keep) != 3 or arr.ndim - len(singleton) != 3:
            raise TomogramError(f"{p}: level {chosen.path} has shape {arr.shape}; a tomogram is 3D (z, y, x)")
        arr = _Spatial(arr, keep)
    if np.dtype(arr.dtype).kind == "c":
        raise TomogramError(f"{p}: complex-valued data is not a tomogram")
    return Tomogram(data=arr, voxel_size=chosen.voxel_size, path=p, voxel_size_xyz=chosen.voxel_size_xyz,
                    label=run_name(p))
