"""RELION 5 tomography: ``particles.star`` with centred Angstrom coordinates + ``tomograms.star``.

``rlnCenteredCoordinateX/Y/ZAngst`` are Angstrom from the tomogram centre:
``centred_A = i * vs - size_unbinned * px_ts / 2`` per axis, where ``size_unbinned`` is
``rlnTomoSizeX/Y/Z`` and ``px_ts`` ``rlnTomoTiltSeriesPixelSize`` from ``tomograms.star``
(``data_global``). Reading inverts it, i = (A - origin_A + size * px_ts / 2) / vs, with vs =
voxel_size or px_ts * ``rlnTomoTomogramBinning``.

The companion is ``tomograms.star`` next to ``particles.star``, else
``<stem>_tomograms.star`` for any other particles file name, or the ``tomograms_star``
argument. Writing needs ``tomogram_shape`` (z, y, x) of the binned tomogram (or a dict per
tomogram); sizes are written unbinned (shape * binning, rounded), as RELION 5 expects.
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

SIZES = ["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]


def companion(path: Path) -> Path:
    return path.with_name("tomograms.star" if path.stem == "particles" else f"{path.stem}_tomograms.star")


def find_companion(path: Path, given: Path | None) -> Path:
    if given is not None:
        if not Path(given).is_file():
            raise fail(given, "no such tomograms.star file")
        return Path(given)
    for cand in (companion(path), path.with_name("tomograms.star")):
        if cand.is_file():
            return cand
    raise fail(path, f"RELION 5 particles need their tomograms.star (tomogram sizes and pixel sizes); "
                     f"none found at {companion(path)}; pass tomograms_star=")


def read_tomograms(path: Path) -> dict[str, tuple[np.ndarray, float, float]]:
    """name -> (unbinned sizes x,y,z, tilt-series pixel size, tomogram binning)."""
    blocks = S.read_blocks(path)
    table = blocks.get("global", next(iter(blocks.values())))
    S.require(path, table, ["rlnTomoName", "rlnTomoTiltSeriesPixelSize"] + SIZES, "RELION 5 tomograms.star")
    sizes = S.floats(path, table, SIZES)
    px = S.floats(path, table, ["rlnTomoTiltSeriesPixelSize"])[:, 0]
    binning = S.optional(path, table, ["rlnTomoTomogramBinning"], 1.0)[:, 0]
    return {str(n): (sizes[i], px[i], binning[i]) for i, n in enumerate(table["rlnTomoName"].astype(str))}


def read(path: Path, opts: ReadOptions, blocks: dict | None = None) -> Picks:
    blocks = S.read_blocks(path) if blocks is None else blocks
    df = S.particles(path, blocks)
    S.require(path, df, S.CENTERED + ["rlnTomoName"], "RELION 5 particles")
    tomos_path = find_companion(path, opts.companion)
    tomos = read_tomograms(tomos_path)
    names = df["rlnTomoName"].astype(str).tolist()
    if opts.tomogram is not None and any(tomo_name(n) == opts.tomogram or n == opts.tomogram for n in names):
        keep = [tomo_name(n) == opts.tomogram or n == opts.tomogram for n in names]
        df, names = df[keep], [n for n, k in zip(names, keep) if k]
    unknown = sorted(set(names) - set(tomos))
    if unknown:
        raise fail(tomos_path, f"has no entry for tomogram(s) {unknown[:5]} used in {path.name}")
    a = S.floats(path, df, S.CENTERED) - S.optional(path, df, S.ORIGIN_A)
    sizes = np.array([tomos[n][0] for n in names]).reshape(-1, 3)
    px = np.array([tomos[n][1] for n in names])
    native = np.round(px * np.array([tomos[n][2] for n in names]), 6)
    stated = float(native[0]) if len(set(native.tolist())) == 1 else None
    if opts.voxel_size is not None:
        vs = float(opts.voxel_size)
    elif len(set(native.tolist())) > 1:
        sizes = sorted(set(native.tolist()))
        raise fail(path, f"tomograms have different voxel sizes {sizes}; pass voxel_size=")
    else:
        vs = float(native[0]) if len(native) else None
    xyz = (a + sizes * px[:, None] / 2) / (vs or 1.0)
    return make_picks(
        path, xyz[:, ::-1], opts,
        class_name=S.classes(df, blocks, opts.class_name),
        score=S.scores(df), tomogram=[tomo_name(n) for n in names], raw_tomogram=names,
        angles=S.floats(path, df, S.ANGLES) if all(c in df for c in S.ANGLES) else None, voxel_size=vs,
        stated_voxel_size=stated,
    )


def _shapes(path: Path, tomograms: list[str], shape) -> dict[str, np.ndarray]:
    if shape is None:
        raise fail(path, "writing RELION 5 needs tomogram_shape=(z, y, x) of the tomogram in voxels "
                         "(for the tomogram sizes in tomograms.star)")
    if isinstance(shape, dict):
        missing = [t for t in tomograms if t not in shape]
        if missing:
            raise fail(path, f"tomogram_shape has no entry for tomogram(s) {missing}")
        return {t: np.asarray(shape[t], dtype=float).reshape(3) for t in tomograms}
    arr = np.asarray(shape, dtype=float).reshape(-1)
    if arr.size != 3 or not np.all(arr > 0):
        raise fail(path, f"tomogram_shape must be (z, y, x) voxels, got {shape!r}")
    return {t: arr for t in tomograms}


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    vs = picks_voxel_size(path, picks, opts, "RELION 5")
    t = picks_for_writing(picks, opts)
    t["tomogram"] = [n or "tomogram" for n in t["tomogram"]]
    b = float(opts.binning)
    px = vs / b
    names = list(dict.fromkeys(t["tomogram"]))
    shapes = _shapes(path, names, opts.tomogram_shape)
    size_xyz = {n: np.rint(shapes[n][::-1] * b) for n in names}  # unbinned x, y, z
    sizes = np.array([size_xyz[n] for n in t["tomogram"]]).reshape(-1, 3)
    centred = t[["x", "y", "z"]].to_numpy(float) * vs - sizes * px / 2
    classes, mapping = class_numbers(picks)
    counter: dict[str, int] = {}
    part_names = []
    for n in t["tomogram"]:
        counter[n] = counter.get(n, 0) + 1
        part_names.append(f"{n}/{counter[n]}")
    part = pd.DataFrame({"rlnTomoName": t["tomogram"].tolist(), "rlnTomoParticleName": part_names})
    for i, col in enumerate(S.CENTERED):
        part[col] = centred[:, i]
    for col, val in particle_columns(t, classes).items():
        part[col] = val
    optics = optics_block(px, {"rlnTomoTiltSeriesPixelSize": [px]})
    tomos = pd.DataFrame({
        "rlnTomoName": names,
        "rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1,
        "rlnMicrographOriginalPixelSize": px, "rlnTomoHand": -1.0, "rlnOpticsGroupName": "opticsGroup1",
        "rlnTomoTiltSeriesPixelSize": px, "rlnTomoTomogramBinning": b,
        **{col: [int(size_xyz[n][i]) for n in names] for i, col in enumerate(SIZES)},
    })
    out = S.write_star(path, {"optics": optics, "particles": part, S.CLASS_BLOCK: S.class_block(mapping)})
    return [out, S.write_star(companion(path), {"global": tomos})]
