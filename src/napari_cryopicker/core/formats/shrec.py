"""SHREC (2019-2021) ``particle_locations.txt``, read only.

One particle a line, ``PDBID x y z rot1 rot2 rot3`` separated by whitespace; x, y, z are
0-based voxel indices of the SHREC tomogram (10 A voxels in SHREC'21, not stored in the
file: pass ``voxel_size`` to record it). The class is the PDB ID (also ``vesicle`` and
``fiducial``). The rotations (ZXZ, simulator convention) are not imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..picks import Picks
from ._common import ReadOptions, fail, make_picks
from ._table import data_lines, is_number


def looks_like_shrec(line: str) -> bool:
    parts = line.split()
    return len(parts) >= 4 and not is_number(parts[0]) and all(is_number(p) for p in parts[1:4])


def read(path: Path, opts: ReadOptions) -> Picks:
    names, xyz = [], []
    for n, line in enumerate(data_lines(path), 1):
        parts = line.split()
        if not looks_like_shrec(line):
            raise fail(path, f"line {n} {line[:60]!r} is not 'PDBID x y z ...'; "
                             "is this a SHREC particle_locations.txt?")
        names.append(parts[0])
        xyz.append([float(p) for p in parts[1:4]])
    zyx = np.asarray(xyz, dtype=float)[:, ::-1] / float(opts.binning)
    return make_picks(path, zyx, opts, class_name=names)
