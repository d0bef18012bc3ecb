"""RELION 4 tomography particles STAR (``data_optics`` + ``data_particles``), read and write.

``rlnCoordinateX/Y/Z`` are in UNBINNED tilt-series pixels: voxel index = (coordinate -
``rlnOrigin*Angst`` / px) / binning. px = ``rlnTomoTiltSeriesPixelSize`` (optics), or
``rlnImagePixelSize`` when that is missing (as the CZ portal reads such files), or
``rlnMicrographOriginalPixelSize``. Without ``binning`` it is voxel_size / px when a
voxel size is given; the voxel size defaults to px * binning.

Written: optics ``rlnTomoTiltSeriesPixelSize`` = voxel_size / binning (also as
``rlnImagePixelSize``), particles ``rlnTomoName``, ``rlnTomoParticleId`` (1..n),
coordinates = index * binning, zero ``rlnOrigin*Angst``, angles, ``rlnClassNumber``,
``rlnAutopickFigureOfMerit``, ``rlnOpticsGroup``; class names in ``data_cryopicker_classes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..picks import Picks
from . import _star as S
from ._common import (
    ReadOptions, WriteOptions, class_numbers, fail, make_picks,
    picks_for_writing, picks_voxel_size, tomo_name,
)
from .relion3 import optics_block, particle_columns

PIXEL = ["rlnTomoTiltSeriesPixelSize", "rlnImagePixelSize", "rlnMicrographOriginalPixelSize"]


def read(path: Path, opts: ReadOptions, blocks: dict | None = None) -> Picks:
    blocks = S.read_blocks(path) if blocks is None else blocks
    df = S.particles(path, blocks)
    S.require(path, df, S.XYZ + ["rlnTomoName"], "RELION 4 particles")
    xyz = S.floats(path, df, S.XYZ)
    px = S.per_row_optics(df, blocks, PIXEL)
    origin = S.optional(path, df, S.ORIGIN_A)
    if np.any(origin != 0):
        if px is None or not np.all(np.isfinite(px) & (px > 0)):
            raise fail(path, "has rlnOrigin*Angst shifts but no pixel size (rlnTomoTiltSeriesPixelSize); "
                             "cannot convert them to pixels")
        xyz = xyz - origin / px[:, None]
    pixel = S.unique_pixel(path, px, "tilt-series pixel size")
    binning = S.auto_binning(opts.binning, opts.voxel_size, pixel)
    raw = df["rlnTomoName"].astype(str).tolist()
    angles = S.floats(path, df, S.ANGLES) if all(c in df for c in S.ANGLES) else None
    return make_picks(
        path, xyz[:, ::-1] / binning, opts,
        class_name=S.classes(df, blocks, opts.class_name),
        score=S.scores(df), tomogram=[tomo_name(r) for r in raw], raw_tomogram=raw, angles=angles,
        voxel_size=None if pixel is None else pixel * binning,
    )


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    vs = picks_voxel_size(path, picks, opts, "RELION 4")
    t = picks_for_writing(picks, opts)
    b = float(opts.binning)
    classes, mapping = class_numbers(picks)
    part = pd.DataFrame({"rlnTomoName": [n or "tomogram" for n in t["tomogram"]],
                         "rlnTomoParticleId": np.arange(1, len(t) + 1)})
    for axis, col in zip("xyz", S.XYZ):
        part[col] = t[axis].to_numpy(float) * b
    for col in S.ORIGIN_A:
        part[col] = 0.0
    for col, val in particle_columns(t, classes).items():
        part[col] = val
    optics = optics_block(vs / b, {"rlnTomoTiltSeriesPixelSize": [vs / b]})
    blocks = {"optics": optics, "particles": part, S.CLASS_BLOCK: S.class_block(mapping)}
    return [S.write_star(path, blocks)]
