"""napari's own Points CSV (what ``layer.save('points.csv')`` writes), read and write.

Header ``index,axis-0,axis-1,axis-2[,feature...]``; axis-0/1/2 = z/y/x in the layer's data
coordinates, which for a picks layer are voxel indices (napari does not write the scale).
Features written and read back: class_name, score, source, tomogram (and rot, tilt, psi).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..picks import ANGLES, Picks
from ._common import ReadOptions, WriteOptions, fail, make_picks, picks_for_writing, write_text
from ._table import data_lines, frame, numeric

AXES = ["axis-0", "axis-1", "axis-2"]


def is_napari_header(cols: list[str]) -> bool:
    return "axis-0" in cols and "axis-1" in cols


def read(path: Path, opts: ReadOptions) -> Picks:
    df = frame(path, data_lines(path), header=True)
    axes = sorted(c for c in df.columns if c.startswith("axis-"))
    if axes != AXES:
        raise fail(path, f"napari points with axes {axes}; "
                         "the picker needs 3D points (axis-0, axis-1, axis-2)")
    zyx = np.stack([numeric(path, df, a) for a in AXES], axis=1) / float(opts.binning)
    cls = next((c for c in ("class_name", "class", "label") if c in df), None)
    angles = None
    if all(a in df for a in ANGLES):
        angles = np.stack([numeric(path, df, a, "angle", blanks=True) for a in ANGLES], axis=1)
    return make_picks(
        path, zyx, opts,
        class_name=None if cls is None else df[cls].tolist(),
        score=numeric(path, df, "score", "score") if "score" in df else None,
        tomogram=df["tomogram"].tolist() if "tomogram" in df else None,
        source=df["source"].tolist() if "source" in df else None,
        angles=angles,
    )


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    t = picks_for_writing(picks, opts)
    b = float(opts.binning)
    out = pd.DataFrame({"index": np.arange(len(t))})
    for axis, c in zip(AXES, "zyx"):
        out[axis] = t[c].to_numpy(float) * b
    for c in ["class_name", "score", "source", "tomogram"] + (ANGLES if picks.has_angles else []):
        out[c] = t[c].to_numpy()
    return [write_text(path, out.to_csv(index=False, lineterminator="\n"))]
