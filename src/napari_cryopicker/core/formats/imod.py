"""IMOD model (.mod), read only (a bounded reader of its chunks; ``imodmodel`` checks it in the tests).

Every point of every contour is a pick. IMOD puts voxel centre (ix, iy, iz) at model
(ix + 0.5, iy + 0.5, iz), so i = ((x - 0.5) / binning, (y - 0.5) / binning, z / binning).
The class is the object's name, else ``class_name``, else the default class (one object)
or ``object<N>`` (several). The model's pixel size gives the voxel size when its units
are Angstrom or nm and no voxel size is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..picks import DEFAULT_CLASS, Picks
from ._common import ReadOptions, fail, make_picks

UNITS_TO_A = {-10: 1.0, -9: 10.0}  # IMOD unit codes: -10 Angstrom, -9 nm


# Sizes (bytes) of the fixed IMOD records (as in imodmodel's binary specification).
_ID, _MODEL_HEADER, _OBJECT_HEADER, _CONTOUR_HEADER, _MESH_HEADER = 8, 232, 176, 16, 16
_PIXELSIZE, _UNITS = _ID + 208, _ID + 212  # model header fields: float, int (big endian)


def _objects(path: Path, data: bytes) -> list[tuple[str, list[np.ndarray]]]:
    """(name, contour points) of each object, walking the chunks with every size checked.

    ``imodmodel``'s parser loops forever on a model without an IEOF marker and builds struct
    formats as long as a damaged point count, so the chunks are read here, bounded by the file.
    """
    n = len(data)
    if n < _ID + _MODEL_HEADER:
        raise fail(path, "is truncated (shorter than an IMOD model header); re-save the model in IMOD")
    pos = _ID + _MODEL_HEADER
    objects: list[tuple[str, list[np.ndarray]]] = []

    def count(at: int) -> int:
        return int.from_bytes(data[at:at + 4], "big", signed=True)

    while True:
        tag = data[pos:pos + 4]
        pos += 4
        if len(tag) < 4:
            raise fail(path, "is truncated or damaged (no IEOF end marker); re-save the model in IMOD")
        if tag == b"IEOF":
            return objects
        if tag == b"OBJT":
            name = data[pos:pos + 64].split(b"\0", 1)[0].decode("utf-8", "replace").strip()
            objects.append((name, []))
            size = _OBJECT_HEADER
        elif tag == b"CONT":
            psize = count(pos)
            if psize < 0 or not objects:
                raise fail(path, "has a damaged contour; re-save the model in IMOD")
            size = _CONTOUR_HEADER + 12 * psize
            if pos + size <= n:
                start = pos + _CONTOUR_HEADER
                objects[-1][1].append(np.frombuffer(data, ">f4", 3 * psize, start).astype(float).reshape(-1, 3))
        elif tag == b"MESH":
            vsize, lsize = count(pos), count(pos + 4)
            if vsize < 0 or lsize < 0:
                raise fail(path, "has a damaged mesh; re-save the model in IMOD")
            size = _MESH_HEADER + 12 * vsize + 4 * lsize
        else:  # chunks that carry their size (IMAT, MOST, OBST, COST, MEST, SIZE, SLAN, MINX, ...)
            size = 4 + count(pos)
            if size < 4:
                raise fail(path, f"has a {tag.decode('latin-1')!r} chunk of negative size; re-save the model in IMOD")
        pos += size
        if pos > n:
            raise fail(path, f"is truncated or damaged (a {tag.decode('latin-1')!r} chunk runs past the end); "
                             "re-save the model in IMOD")


def read(path: Path, opts: ReadOptions) -> Picks:
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise fail(path, "is a directory, not an IMOD model") from None
    if data[:4] != b"IMOD":
        raise fail(path, "does not start with 'IMOD'; is this an IMOD model file?")
    objects = _objects(path, data)
    xyz, names = [], []
    for k, (obj_name, contours) in enumerate(objects):
        fallback = DEFAULT_CLASS if len(objects) == 1 else f"object{k + 1}"
        name = obj_name or opts.class_name or fallback
        for pts in contours:
            xyz.append(pts)
            names += [name] * len(pts)
    xyz = np.concatenate(xyz) if xyz else np.zeros((0, 3))
    xyz = (xyz - [0.5, 0.5, 0.0]) / float(opts.binning)
    pixelsize = float(np.frombuffer(data, ">f4", 1, _PIXELSIZE)[0])
    units = int.from_bytes(data[_UNITS:_UNITS + 4], "big", signed=True)
    vs = None
    if units in UNITS_TO_A and np.isfinite(pixelsize) and pixelsize > 0:
        vs = pixelsize * UNITS_TO_A[units] * float(opts.binning)
    return make_picks(path, xyz[:, ::-1], opts, class_name=names, voxel_size=vs)
