"""CZII CryoET Object Identification (Kaggle) submission CSV, read only.

``id,experiment,particle_type,x,y,z`` with x, y, z in Angstrom from voxel 0 (i = x / vs):
``experiment`` -> tomogram, ``particle_type`` -> class. There are no scores (1.0) and no
voxel size in the file: ``voxel_size`` is required (the competition's is 10.012 A).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..picks import Picks
from ._common import ReadOptions, fail, make_picks, require_voxel_size
from ._table import data_lines, frame, numeric

REQUIRED = ("experiment", "particle_type", "x", "y", "z")


def is_kaggle_header(cols: list[str]) -> bool:
    return "particle_type" in cols and "experiment" in cols


def read(path: Path, opts: ReadOptions) -> Picks:
    df = frame(path, data_lines(path), header=True)
    missing = [c for c in REQUIRED if c not in df]
    if missing:
        raise fail(path, f"has no {', '.join(missing)} column(s); "
                         f"a Kaggle submission needs {','.join(REQUIRED)}")
    vs = require_voxel_size(path, opts.voxel_size, "Kaggle submission")
    zyx = np.stack([numeric(path, df, a) for a in "zyx"], axis=1) / vs
    return make_picks(path, zyx, opts, class_name=df["particle_type"].str.strip().tolist(),
                      tomogram=df["experiment"].str.strip().tolist())
