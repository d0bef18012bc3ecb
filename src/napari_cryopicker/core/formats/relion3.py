"""RELION 3.x subtomogram STAR (Warp / TomoMan style), read and write.

Read: one particles loop with ``rlnCoordinateX/Y/Z`` in pixels and ``rlnMicrographName``
(or TomoMan's ``rlnTomoName``). True position = coordinate - ``rlnOriginX/Y/Z`` (pixels,
3.0) or - ``rlnOriginX/Y/ZAngst`` / pixel size (3.1). The pixel size comes from
``rlnImagePixelSize`` (optics), ``rlnPixelSize`` or ``rlnDetectorPixelSize /
rlnMagnification * 1e4``. Voxel index = position / binning, where binning defaults to
voxel_size / pixel size when a voxel size is given. Positions are taken as 0-based (as
the CZ portal does; unverified for Warp).

Write (RELION 3.1 layout): ``data_optics`` (``rlnImagePixelSize`` = voxel_size / binning,
``rlnImageDimensionality`` 3) and ``data_particles`` with ``rlnMicrographName`` =
``<tomogram>.mrc``, coordinates = voxel index * binning, zero ``rlnOrigin*Angst``, angles,
``rlnClassNumber``, ``rlnAutopickFigureOfMerit``; plus ``data_cryopicker_classes``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..picks import Picks
from . import _star as S
from ._common import (
    ReadOptions, WriteOptions, angles_or_zero, class_numbers, fail,
    make_picks, picks_for_writing, picks_voxel_size, tomo_name,
)


def pixel_size(df: pd.DataFrame, blocks: dict) -> np.ndarray | None:
    px = S.per_row_optics(df, blocks, ["rlnImagePixelSize", "rlnPixelSize"])
    if px is None and "rlnDetectorPixelSize" in df and "rlnMagnification" in df:
        px = (pd.to_numeric(df["rlnDetectorPixelSize"], errors="coerce")
              / pd.to_numeric(df["rlnMagnification"], errors="coerce") * 1e4).to_numpy(dtype=float)
    return px


def read(path: Path, opts: ReadOptions, blocks: dict | None = None) -> Picks:
    blocks = S.read_blocks(path) if blocks is None else blocks
    df = S.particles(path, blocks)
    S.require(path, df, S.XYZ, "RELION particles")
    xyz = S.floats(path, df, S.XYZ)
    px = pixel_size(df, blocks)
    if all(c in df for c in S.ORIGIN_PX):
        xyz = xyz - S.floats(path, df, S.ORIGIN_PX)
    elif all(c in df for c in S.ORIGIN_A):
        origin = S.floats(path, df, S.ORIGIN_A)
        if np.any(origin != 0):
            if px is None or not np.all(np.isfinite(px) & (px > 0)):
                raise fail(path, "has rlnOrigin*Angst shifts but no pixel size (rlnImagePixelSize); "
                                 "cannot convert them to pixels")
            xyz = xyz - origin / px[:, None]
    pixel = S.unique_pixel(path, px, "pixel size")
    binning = S.auto_binning(opts.binning, opts.voxel_size, pixel)
    tomo_col = next((c for c in ("rlnTomoName", "rlnMicrographName") if c in df), None)
    raw = df[tomo_col].astype(str).tolist() if tomo_col else None
    angles = S.floats(path, df, S.ANGLES) if all(c in df for c in S.ANGLES) else None
    return make_picks(
        path, xyz[:, ::-1] / binning, opts,
        class_name=S.classes(df, blocks, opts.class_name),
        score=S.scores(df), tomogram=None if raw is None else [tomo_name(r) for r in raw], raw_tomogram=raw,
        angles=angles, voxel_size=None if pixel is None else pixel * binning,
        stated_voxel_size=None if pixel is None else pixel * opts.binning,
    )


def optics_block(pixel: float, extra: dict | None = None) -> pd.DataFrame:
    d = {"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnSphericalAberration": [2.7],
         "rlnVoltage": [300.0], "rlnAmplitudeContrast": [0.1]}
    d.update(extra or {})
    d.update({"rlnImagePixelSize": [pixel], "rlnImageDimensionality": [3]})
    return pd.DataFrame(d)


def particle_columns(t: pd.DataFrame, classes: list[int]) -> dict:
    ang = angles_or_zero(t)
    return {"rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
            "rlnClassNumber": classes, S.SCORE: t["score"].to_numpy(float), "rlnOpticsGroup": 1}


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    vs = picks_voxel_size(path, picks, opts, "RELION 3")
    t = picks_for_writing(picks, opts)
    b = float(opts.binning)
    classes, mapping = class_numbers(picks)
    part = pd.DataFrame({"rlnMicrographName": [f"{n or 'tomogram'}.mrc" for n in t["tomogram"]]})
    for axis, col in zip("xyz", S.XYZ):
        part[col] = t[axis].to_numpy(float) * b
    for col in S.ORIGIN_A:
        part[col] = 0.0
    for col, val in particle_columns(t, classes).items():
        part[col] = val
    blocks = {"optics": optics_block(vs / b), "particles": part, S.CLASS_BLOCK: S.class_block(mapping)}
    return [S.write_star(path, blocks)]
