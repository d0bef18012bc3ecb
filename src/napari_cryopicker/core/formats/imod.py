"""IMOD model (.mod), read only (via ``imodmodel``).

Every point of every contour is a pick. IMOD puts voxel centre (ix, iy, iz) at model
(ix + 0.5, iy + 0.5, iz), so i = ((x - 0.5) / binning, (y - 0.5) / binning, z / binning).
The class is the object's name, else ``class_name``, else the default class (one object)
or ``object<N>`` (several). The model's pixel size gives the voxel size when its units
are Angstrom or nm and no voxel size is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from imodmodel import ImodModel

from ..picks import DEFAULT_CLASS, Picks
from ._common import ReadOptions, fail, make_picks

UNITS_TO_A = {-10: 1.0, -9: 10.0}  # IMOD unit codes: -10 Angstrom, -9 nm


def read(path: Path, opts: ReadOptions) -> Picks:
    try:
        head = path.read_bytes()[:4]
    except IsADirectoryError:
        raise fail(path, "is a directory, not an IMOD model") from None
    if head != b"IMOD":
        raise fail(path, "does not start with 'IMOD'; is this an IMOD model file?")
    try:
        model = ImodModel.from_file(path)
    except Exception as exc:  # the parser raises assorted errors on truncated files
        raise fail(path, f"cannot be parsed as an IMOD model ({type(exc).__name__}: {exc})") from None
    xyz, names = [], []
    n_obj = len(model.objects)
    for k, obj in enumerate(model.objects):
        fallback = DEFAULT_CLASS if n_obj == 1 else f"object{k + 1}"
        name = obj.header.name.strip() or opts.class_name or fallback
        for contour in obj.contours:
            pts = np.asarray(contour.points, dtype=float).reshape(-1, 3)
            xyz.append(pts)
            names += [name] * len(pts)
    xyz = np.concatenate(xyz) if xyz else np.zeros((0, 3))
    xyz = (xyz - [0.5, 0.5, 0.0]) / float(opts.binning)
    h = model.header
    vs = None
    if h.units in UNITS_TO_A and h.pixelsize > 0:
        vs = h.pixelsize * UNITS_TO_A[h.units] * float(opts.binning)
    return make_picks(path, xyz[:, ::-1], opts, class_name=names, voxel_size=vs)
