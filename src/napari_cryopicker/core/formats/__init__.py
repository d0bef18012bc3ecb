"""Picks file formats: one module per format, and this registry.

Every format converts to and from the canonical :class:`~..picks.Picks` (0-based voxel
indices z, y, x of the tomogram, plus its voxel size in Angstrom) at the edge. See
``docs/formats.md`` for each format's conventions.

Write formats: ``csv`` (canonical), ``relion3``, ``relion4``, ``relion5``, ``dynamo``,
``copick``, ``napari``. Read-only: ``stopgap``, ``imod``, ``shrec``, ``kaggle``. The
default writer by extension is ``.csv`` -> csv, ``.star`` -> relion4 (the layout RELION 4
and 5 both import as coordinates in tilt-series pixels), ``.tbl`` -> dynamo, ``.json`` or a
folder -> copick. Every problem raises :class:`~..errors.PicksFormatError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..errors import PicksFormatError
from ..picks import Picks
from . import (
    canonical_csv, copick_json, dynamo, imod, kaggle, napari_csv, relion3, relion4, relion5, shrec, stopgap,
)
from . import _star
from ._common import ReadOptions, WriteOptions, check_binning, fail
from ._table import data_lines, has_header, sniff_delimiter, split

__all__ = [
    "FORMAT_NAMES", "WRITE_FORMATS", "read_picks", "write_picks", "detect_format", "format_from_extension",
]

READERS = {
    "csv": canonical_csv.read, "napari": napari_csv.read, "kaggle": kaggle.read, "shrec": shrec.read,
    "relion3": relion3.read, "relion4": relion4.read, "relion5": relion5.read, "stopgap": stopgap.read,
    "dynamo": dynamo.read, "copick": copick_json.read, "imod": imod.read,
}
WRITERS = {
    "csv": canonical_csv.write, "relion3": relion3.write, "relion4": relion4.write, "relion5": relion5.write,
    "dynamo": dynamo.write, "copick": copick_json.write, "napari": napari_csv.write,
}
FORMAT_NAMES = list(READERS)
WRITE_FORMATS = list(WRITERS)

EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".txt": "csv", ".star": "relion4", ".tbl": "dynamo",
    ".json": "copick", ".mod": "imod",
}
TOMOGRAM_EXT = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali", ".zarr", ".tif", ".tiff", ".h5", ".hdf")


def format_from_extension(path: str | os.PathLike) -> str:
    """Default format for a file name (the writer used when ``format`` is None)."""
    p = Path(path)
    ext = p.suffix.lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if ext in TOMOGRAM_EXT:
        raise fail(p, f"'{ext}' is a tomogram or image, not a picks file; picks files end in "
                      f"{', '.join(sorted(EXTENSIONS))}")
    if ext == ".doc":
        raise fail(p, "is a Dynamo table map; open the .tbl table that goes with it")
    if ext == "" and (p.is_dir() or not p.exists()):
        return "copick"
    raise fail(p, f"unknown picks file extension {ext or '(none)'!r}; known: {', '.join(sorted(EXTENSIONS))} "
                  "(or pass format=)")


def detect_format(path: str | os.PathLike) -> str:
    """The format of an existing picks file, from its extension and its content."""
    p = Path(path)
    if not p.exists():
        raise fail(p, "no such file")
    if p.is_dir():
        if copick_json.files_in(p):
            return "copick"
        raise fail(p, "is a directory, not a picks file (and holds no copick picks JSON); "
                      "give the file inside it")
    fmt = format_from_extension(p)
    if fmt == "csv":
        return _detect_text(p)
    if fmt == "relion4":
        blocks = _star.read_blocks(p)
        found = _star.flavour(blocks)
        if found == "tomograms":
            raise fail(p, "is a RELION 5 tomograms.star (no particles); open the particles.star next to it")
        if found is None:
            raise _star.no_coordinates(p, blocks)
        return found
    return fmt


def _detect_text(p: Path) -> str:
    first = data_lines(p)[0]
    fields = [f.lower() for f in split(first, sniff_delimiter(first))]
    if kaggle.is_kaggle_header(fields):
        return "kaggle"
    if napari_csv.is_napari_header(fields):
        return "napari"
    if p.suffix.lower() == ".txt" and shrec.looks_like_shrec(first):
        return "shrec"
    if not has_header(fields) or any(canonical_csv.axis_column(f) for f in fields):
        return "csv"
    raise fail(p, f"header {fields[:8]} names no x, y, z columns; expected a picks CSV like x,y,z,class")


def read_picks(
    path: str | os.PathLike,
    format: str | None = None,
    *,
    voxel_size: float | None = None,
    tomogram: str | None = None,
    binning: float = 1.0,
    class_name: str | None = None,
    tomograms_star: str | os.PathLike | None = None,
) -> Picks:
    """Read a picks file (format auto-detected when None) into canonical voxel picks.

    ``voxel_size``: voxel size (A) of the tomogram the picks will index; converts Angstrom
    formats and fills ``Picks.voxel_size``. ``binning``: file pixel units per target voxel
    (i = coordinate / binning) for pixel-based formats; for RELION 3/4 and Dynamo it defaults
    to voxel_size / the file's pixel size. ``tomogram``: fills the tomogram name, or keeps
    only that tomogram's picks. ``class_name``: the class for formats without one.
    ``tomograms_star``: RELION 5 tomograms.star or Dynamo .doc table map, when not beside
    the file.
    """
    p = Path(path)
    fmt = detect_format(p) if format is None else _check_name(p, format, READERS)
    if not p.exists():
        raise fail(p, "no such file")
    if p.is_dir() and fmt != "copick":
        raise fail(p, "is a directory, not a picks file; give the file inside it")
    if voxel_size is not None and not float(voxel_size) > 0:
        raise fail(p, f"voxel_size must be a positive number of Angstrom, got {voxel_size!r}")
    opts = ReadOptions(
        voxel_size=None if voxel_size is None else float(voxel_size), tomogram=tomogram,
        binning=check_binning(p, binning), class_name=class_name,
        companion=None if tomograms_star is None else Path(tomograms_star),
    )
    try:
        return READERS[fmt](p, opts)
    except PicksFormatError:
        raise
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, UnicodeDecodeError,
            OSError, ArithmeticError, pd.errors.ParserError) as exc:
        raise fail(p, f"cannot be read as {fmt} ({type(exc).__name__}: {exc})") from None


def write_picks(
    picks: Picks,
    path: str | os.PathLike,
    format: str | None = None,
    *,
    voxel_size: float | None = None,
    binning: float = 1.0,
    tomogram_shape=None,
    tomogram: str | None = None,
    user_id: str = "cryopicker",
    session_id: str = "0",
) -> list[Path]:
    """Write picks (atomically) and return the written paths (several for some formats).

    ``voxel_size`` overrides ``picks.voxel_size``; ``binning`` scales voxel indices to the
    file's pixel units (RELION coordinates are index * binning); ``tomogram_shape`` (z, y, x)
    voxels of the binned tomogram (RELION 5); ``tomogram`` names picks without a tomogram.
    """
    p = Path(path)
    if not isinstance(picks, Picks):
        raise fail(p, f"write_picks needs a Picks, got {type(picks).__name__}")
    fmt = format_from_extension(p) if format is None else _check_name(p, format, READERS | WRITERS)
    if fmt not in WRITERS:
        raise fail(p, f"format {fmt!r} is read-only; write one of {', '.join(WRITE_FORMATS)}")
    if voxel_size is not None and not float(voxel_size) > 0:
        raise fail(p, f"voxel_size must be a positive number of Angstrom, got {voxel_size!r}")
    opts = WriteOptions(
        voxel_size=None if voxel_size is None else float(voxel_size), binning=check_binning(p, binning),
        tomogram_shape=tomogram_shape, tomogram=tomogram, user_id=str(user_id), session_id=str(session_id),
    )
    try:
        return WRITERS[fmt](picks, p, opts)
    except PicksFormatError:
        raise
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise fail(p, f"cannot be written as {fmt} ({type(exc).__name__}: {exc})") from None


def _check_name(p: Path, fmt: str, table: dict) -> str:
    name = str(fmt).lower().strip()
    if name not in table:
        raise fail(p, f"unknown picks format {fmt!r}; use one of {', '.join(table)}")
    return name
