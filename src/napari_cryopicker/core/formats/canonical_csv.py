"""Canonical picks CSV (read and write), plus headerless and Angstrom-headed variants (read).

Written: ``x,y,z,class,score,source,tomogram[,rot,tilt,psi]``, x/y/z = 0-based voxel index
in the tomogram the picks belong to (xyz order, napari/numpy's z,y,x reversed), times
``binning`` if one is given (and divided by it on reading).

Read: any delimiter (comma, tab, pipe, semicolon, whitespace). A header naming ``x, y, z``
(any order; ``class`` or ``class_name``; optional score, source, tomogram, rot, tilt, psi);
headers like ``X [A]`` mean Angstrom (TARDIS) and need ``voxel_size``. Without a header
the first three columns are x, y, z in voxels.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..picks import ANGLES, Picks
from ._common import (
    ReadOptions, WriteOptions, fail, make_picks, picks_for_writing, require_voxel_size, write_text,
)
from ._table import data_lines, frame, has_header, numeric, sniff_delimiter, split

ANGSTROM = re.compile(r"^([xyz])\s*[\[(]\s*(a|å|angstrom|angst)\s*[\])]$")


def axis_column(name: str) -> tuple[str, bool] | None:
    """('x'|'y'|'z', in Angstrom?) for a coordinate column name, else None."""
    if name in ("x", "y", "z"):
        return name, False
    m = ANGSTROM.match(name)
    return (m.group(1), True) if m else None


def _columns(cols: list[str]) -> tuple[dict[str, str], bool]:
    """Map axis -> column name, and whether the columns are in Angstrom."""
    found, angstrom = {}, False
    for c in cols:
        hit = axis_column(c)
        if hit:
            found[hit[0]] = c
            angstrom |= hit[1]
    return found, angstrom


def read(path: Path, opts: ReadOptions) -> Picks:
    lines = data_lines(path)
    first = split(lines[0], sniff_delimiter(lines[0]))
    header = has_header(first)
    df = frame(path, lines, header)
    if not header:
        if df.shape[1] < 3:
            raise fail(path, f"has {df.shape[1]} column(s); a headerless picks file needs x, y, z")
        xyz = np.stack([numeric(path, df, i) for i in range(3)], axis=1)
        return make_picks(path, _scaled(xyz, opts)[:, ::-1], opts)
    axes, angstrom = _columns(list(df.columns))
    missing = [a for a in "xyz" if a not in axes]
    if missing:
        raise fail(path, f"has no {', '.join(missing)} column(s) (header: {list(df.columns)}); "
                         "expected a header like x,y,z,class")
    xyz = np.stack([numeric(path, df, axes[a]) for a in "xyz"], axis=1)
    if angstrom:
        xyz = xyz / require_voxel_size(path, opts.voxel_size, "this CSV (header in [A])")
    else:
        xyz = _scaled(xyz, opts)
    cls_col = next((c for c in ("class_name", "class", "class name", "particle_type") if c in df), None)
    classes = None if cls_col is None else [c or (opts.class_name or "particle") for c in df[cls_col]]
    score = numeric(path, df, "score", "score") if "score" in df else None
    angles = None
    if all(a in df for a in ANGLES):
        angles = np.stack([numeric(path, df, a, "angle", blanks=True) for a in ANGLES], axis=1)
    tomo = df["tomogram"].tolist() if "tomogram" in df else None
    source = df["source"].str.strip().tolist() if "source" in df else None
    return make_picks(path, xyz[:, ::-1], opts, class_name=classes, score=score, tomogram=tomo,
                      angles=angles, source=source)


def _scaled(xyz: np.ndarray, opts: ReadOptions) -> np.ndarray:
    return xyz / float(opts.binning)


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    t = picks_for_writing(picks, opts)
    b = float(opts.binning)
    out = pd.DataFrame({
        "x": t["x"] * b, "y": t["y"] * b, "z": t["z"] * b, "class": t["class_name"], "score": t["score"],
        "source": t["source"], "tomogram": t["tomogram"],
    })
    if picks.has_angles:
        for a in ANGLES:
            out[a] = t[a]
    return [write_text(path, out.to_csv(index=False, lineterminator="\n"))]
