"""STAR file helpers shared by the RELION 3/4/5 and STOPGAP modules (via ``starfile``).

Class names survive a round trip through RELION files in an extra block
``data_cryopicker_classes`` (loop of ``_rlnClassNumber`` and ``_cryopickerClassName``).
RELION reads only the blocks it asks for (``data_optics``, ``data_particles``, ...), so the
extra block is invisible to it; ``rlnClassNumber`` in the particles stays a plain number.
Scores go to ``rlnAutopickFigureOfMerit`` (a RELION label).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from ._common import atomic_path, class_names_from_numbers, fail, read_text

CLASS_BLOCK = "cryopicker_classes"
CLASS_NAME = "cryopickerClassName"
SCORE = "rlnAutopickFigureOfMerit"
XYZ = ["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]
CENTERED = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
ORIGIN_PX = ["rlnOriginX", "rlnOriginY", "rlnOriginZ"]
ORIGIN_A = ["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]
ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
AS_STRING = ["rlnTomoName", "rlnMicrographName", "rlnTomoParticleName", "rlnOpticsGroupName", CLASS_NAME]


def read_blocks(path: Path) -> dict[str, pd.DataFrame]:
    """All loop blocks of a STAR file as DataFrames (key-value blocks become one-row frames)."""
    text = read_text(path)
    if not text.strip():
        raise fail(path, "is empty")
    if "data_" not in text:
        raise fail(path, "has no data_ block; is this a STAR file?")
    try:
        blocks = starfile.read(path, always_dict=True, parse_as_string=AS_STRING)
    except Exception as exc:  # starfile raises assorted errors on malformed input
        raise fail(path, f"cannot be parsed as a STAR file ({type(exc).__name__}: {exc})") from None
    out = {}
    for name, block in blocks.items():
        if isinstance(block, dict):
            block = pd.DataFrame([block])
        out[name] = block
    return out


def particles(path: Path, blocks: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The particles block: 'particles' if present, else the first with coordinates."""
    if "particles" in blocks:
        return blocks["particles"]
    for block in blocks.values():
        if XYZ[0] in block or CENTERED[0] in block:
            return block
    raise no_coordinates(path, blocks)


def no_coordinates(path: Path, blocks: dict[str, pd.DataFrame]):
    cols = sorted({c for b in blocks.values() for c in b.columns})[:12]
    return fail(path, f"has no rlnCoordinateX column (columns: {cols}); is this a RELION particles file?")


def flavour(blocks: dict[str, pd.DataFrame]) -> str | None:
    """'relion3' | 'relion4' | 'relion5' | 'stopgap' | 'tomograms' | None, from the columns."""
    cols = {c for b in blocks.values() for c in b.columns}
    if "orig_x" in cols and "x_shift" in cols:
        return "stopgap"
    if CENTERED[0] in cols:
        return "relion5"
    if XYZ[0] in cols:
        part = blocks.get("particles")
        if part is not None and "rlnTomoName" in part and ("optics" in blocks or "rlnTomoParticleId" in part):
            return "relion4"
        return "relion3"
    if "rlnTomoSizeX" in cols:
        return "tomograms"
    return None


def require(path: Path, df: pd.DataFrame, cols: list[str], what: str) -> None:
    missing = [c for c in cols if c not in df]
    if missing:
        raise fail(path, f"has no {', '.join(missing)} column(s); is this a {what} file?")


def floats(path: Path, df: pd.DataFrame, cols: list[str]) -> np.ndarray:
    try:
        arr = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    except (TypeError, ValueError) as exc:
        raise fail(path, f"columns {cols} are not numeric ({exc})") from None
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise fail(path, f"row {row} has a missing or non-numeric value in {cols}")
    return arr


def optional(path: Path, df: pd.DataFrame, cols: list[str], default: float = 0.0) -> np.ndarray:
    if all(c in df for c in cols):
        return floats(path, df, cols)
    return np.full((len(df), len(cols)), default, dtype=float)


def per_row_optics(df: pd.DataFrame, blocks: dict[str, pd.DataFrame], names: list[str]) -> np.ndarray | None:
    """Per-particle value of the first optics column in ``names`` (or particle column)."""
    for name in names:
        if name in df:
            return pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=float)
        optics = blocks.get("optics")
        if optics is not None and name in optics:
            if "rlnOpticsGroup" in optics and "rlnOpticsGroup" in df and len(optics) > 1:
                values = pd.to_numeric(optics[name], errors="coerce")
                lut = dict(zip(optics["rlnOpticsGroup"].tolist(), values))
                return np.array([lut.get(g, np.nan) for g in df["rlnOpticsGroup"]], dtype=float)
            return np.full(len(df), float(pd.to_numeric(optics[name], errors="coerce").iloc[0]))
    return None


def class_map(blocks: dict[str, pd.DataFrame]) -> dict[int, str]:
    b = blocks.get(CLASS_BLOCK)
    if b is None or CLASS_NAME not in b or "rlnClassNumber" not in b:
        return {}
    return {int(k): str(v) for k, v in zip(b["rlnClassNumber"], b[CLASS_NAME])}


def classes(df: pd.DataFrame, blocks: dict[str, pd.DataFrame], class_name: str | None) -> list[str]:
    """Class names of the particles: rlnClassNumber through the class block if present."""
    return class_names_from_numbers(df.get("rlnClassNumber"), len(df), class_map(blocks), class_name)


def class_block(mapping: dict[int, str]) -> pd.DataFrame:
    return pd.DataFrame({"rlnClassNumber": list(mapping), CLASS_NAME: list(mapping.values())})


def scores(df: pd.DataFrame) -> np.ndarray | None:
    if SCORE not in df:
        return None
    return pd.to_numeric(df[SCORE], errors="coerce").fillna(1.0).to_numpy(dtype=float)


def write_star(path: Path, blocks: dict[str, pd.DataFrame]) -> Path:
    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp)
    return Path(path)


def auto_binning(binning: float, voxel_size: float | None, pixel: float | None) -> float:
    """Binning from the target voxel size and the file's pixel size when not given (== 1)."""
    if binning == 1.0 and voxel_size and pixel and np.isfinite(pixel) and pixel > 0:
        ratio = float(voxel_size) / float(pixel)
        if abs(ratio - 1.0) > 1e-3:
            return ratio
    return binning


def unique_pixel(path: Path, px: np.ndarray | None, what: str) -> float | None:
    if px is None or len(px) == 0:
        return None
    vals = np.unique(np.round(px[np.isfinite(px)], 6))
    if len(vals) > 1:
        raise fail(path, f"has several {what} values {vals.tolist()}; split it per optics group")
    return float(vals[0]) if len(vals) else None
