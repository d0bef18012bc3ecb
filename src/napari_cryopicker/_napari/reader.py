"""npe2 reader: MRC tomograms (memory-mapped) and picks files (one Points layer per class).

``get_reader`` returns ``None`` — it never raises — for anything it cannot read, so napari
can fall back to another plugin.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..core.classes import PALETTE
from .convert import META, points_layer_kwargs
from .messages import notify

log = logging.getLogger(__name__)

TOMOGRAM_EXTENSIONS = (".mrc", ".rec", ".map", ".st")
PICKS_EXTENSIONS = (".star", ".tbl", ".json", ".csv")
DEFAULT_DIAMETER = 10.0  # voxels, for picks files that do not say


def _single_path(path) -> str | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return os.fspath(path)
    except TypeError:
        return None


def get_reader(path):
    """Return a reader function for ``path`` or ``None`` if this plugin cannot read it."""
    p = _single_path(path)
    if p is None:
        return None
    if os.path.isdir(p):
        from ..core.omezarr import is_ome_zarr

        return read_ome_zarr_layers if is_ome_zarr(p) and _looks_like_ome_zarr(p) else None
    low = p.lower()
    if low.endswith(TOMOGRAM_EXTENSIONS):
        return read_tomogram_layers if _looks_like_mrc(p) else None
    if low.endswith(PICKS_EXTENSIONS):
        return read_picks_layers if _looks_like_picks(p) else None
    return None


def _looks_like_mrc(path: str) -> bool:
    try:
        import mrcfile

        with mrcfile.open(path, header_only=True, permissive=True) as m:
            return m.header is not None and int(m.header.nz) >= 1
    except Exception:
        return False


def _looks_like_ome_zarr(path: str) -> bool:
    try:
        from ..core.omezarr import levels

        return bool(levels(path))
    except Exception:
        return False


def read_ome_zarr_layers(path):
    """An OME-Zarr tomogram as one multiscale Image layer (every level, lazy; napari reads
    only the chunks it shows). The session works on level 0 unless the Tomogram panel's
    scale level says otherwise."""
    p = _single_path(path)
    try:
        from ..core.omezarr import levels, open_ome_zarr
        from ..core.tomogram import percentile_stats

        lv = levels(p)
        tomos = [open_ome_zarr(p, k) for k in range(len(lv))]
        lo, hi = percentile_stats(tomos[-1].data)
        t0 = tomos[0]
        meta = {
            "name": t0.name, "scale": t0.scale, "units": ("angstrom",) * 3, "contrast_limits": (lo, hi),
            "multiscale": len(tomos) > 1,
            "metadata": {META: {"kind": "tomogram", "path": os.path.abspath(p), "voxel_size": t0.voxel_size,
                                "tomogram": t0.name, "levels": [x.voxel_size for x in lv]}},
        }
        data = [t.data for t in tomos] if len(tomos) > 1 else t0.data
        return [(data, meta, "image")]
    except Exception as e:  # a readable message, never a traceback
        notify(f"Could not open {p} as an OME-Zarr tomogram: {e}", "warning")
        return None


def _looks_like_picks(path: str) -> bool:
    """Cheap check that ``path`` is a picks file (so unrelated .json/.csv go elsewhere)."""
    try:
        from ..core.formats import detect_format

        fmt = detect_format(path)
        if fmt == "copick":
            if os.path.getsize(path) > 200_000_000:
                return True
            import json

            with open(path) as f:
                payload = json.load(f)
            return isinstance(payload, dict) and isinstance(payload.get("points"), list)
        if fmt == "dynamo":
            with open(path) as f:
                for line in f:
                    if line.strip():
                        fields = line.split()
                        float(fields[0])
                        return len(fields) >= 26
            return False
        return bool(fmt)
    except Exception:
        return False


def tomogram_layer_data(path: str | os.PathLike) -> tuple:
    """(data, meta, "image") for an MRC tomogram: memory-mapped, scaled in Angstrom."""
    from ..core.tomogram import open_tomogram, percentile_stats

    tomo = open_tomogram(path)
    lo, hi = percentile_stats(tomo.data)
    meta = {
        "name": tomo.name,
        "scale": tomo.scale,
        "units": ("angstrom",) * 3,
        "contrast_limits": (lo, hi),
        "metadata": {
            META: {
                "kind": "tomogram",
                # absolute, but through any symbolic link: the autosave goes beside the path
                # the user opened, not beside the link's target (often read-only raw data)
                "path": os.path.abspath(path),
                "voxel_size": tomo.voxel_size,
                "tomogram": tomo.name,
            }
        },
    }
    return (tomo.data, meta, "image")


def read_tomogram_layers(path):
    p = _single_path(path)
    try:
        return [tomogram_layer_data(p)]
    except Exception as e:  # a readable message, never a traceback
        notify(f"Could not open {p} as a tomogram: {e}", "warning")
        return None


def picks_layer_data(picks, *, stem: str, kind: str = "imported") -> list[tuple]:
    """One Points layer-data tuple per class of ``picks`` (voxel coordinates, Angstrom scale)."""
    vs = picks.voxel_size or 1.0
    out = []
    tomos = picks.tomograms or [""]
    for t in tomos:  # a file of several tomograms: one layer per tomogram and class
        of_t = picks.select(tomogram=t) if len(tomos) > 1 else picks
        for i, name in enumerate(picks.class_names or []):
            sub = of_t.select(class_name=name)
            if not len(sub):
                continue
            kw = points_layer_kwargs(
                sub,
                kind=kind,
                class_name=name,
                colour=PALETTE[i % len(PALETTE)],
                diameter=DEFAULT_DIAMETER,
                scale=(vs, vs, vs),
                tomogram=(sub.tomograms[0] if sub.tomograms else ""),
                name=f"{stem}: {t}: {name}" if len(tomos) > 1 else f"{stem}: {name}",
                source="imported",
            )
            out.append((sub.zyx, kw, "points"))
    return out


def read_picks_layers(path):
    p = _single_path(path)
    try:
        from ..core.formats import read_picks

        picks = read_picks(p)
    except Exception as e:
        notify(f"Could not read picks from {p}: {e}", "warning")
        return None
    if len(picks) == 0:
        notify(f"{p}: holds no picks")
        return None
    return picks_layer_data(picks, stem=Path(p).stem)




__all__ = ["get_reader", "tomogram_layer_data", "picks_layer_data"]
