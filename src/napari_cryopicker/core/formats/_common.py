"""Shared helpers for the picks file formats: options, errors, atomic writes, names.

Every format module exposes ``read(path, opts) -> Picks`` and, if writable,
``write(picks, path, opts) -> list[Path]``; the registry in ``__init__`` dispatches.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_output
from ..errors import CryoPickerWarning, PicksFormatError
from ..picks import ANGLES, DEFAULT_CLASS, SOURCES, Picks

# Suffixes stripped (repeatedly) from tomogram file names to get the tomogram name.
TOMO_SUFFIXES = (".tomostar", ".mrc", ".rec", ".st", ".map", ".mrcs", ".ali", ".zarr")


@dataclass
class ReadOptions:
    voxel_size: float | None = None  # Angstrom, of the tomogram the picks will index
    tomogram: str | None = None  # fills (or filters) the tomogram name
    binning: float = 1.0  # file pixel units -> target voxels: i = coordinate / binning
    class_name: str | None = None  # class for formats that have none
    companion: Path | None = None  # tomograms.star (RELION 5) or .doc table map (Dynamo)


@dataclass
class WriteOptions:
    voxel_size: float | None = None
    binning: float = 1.0
    tomogram_shape: object = None  # (z, y, x) or {tomogram: (z, y, x)}
    tomogram: str | None = None
    user_id: str = "cryopicker"
    session_id: str = "0"


def fail(path: Path | str, problem: str) -> PicksFormatError:
    """A PicksFormatError whose message names the file first."""
    return PicksFormatError(f"{path}: {problem}")


def read_text(path: Path) -> str:
    """The file's text (UTF-8, BOM tolerated); a clear error for binary or non-UTF-8 files."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise fail(path, "is a directory, not a picks file") from None
    except OSError as exc:
        raise fail(path, f"cannot be read ({exc.strerror or exc})") from None
    encoding = _wide_encoding(data[:4096])
    if encoding:
        raise fail(path, f"is {encoding} text; re-save it as UTF-8 (e.g. 'CSV UTF-8' in a spreadsheet program) "
                         "and open that")
    if b"\x00" in data[:4096]:
        raise fail(path, "is a binary file, not a text picks file; is this a tomogram or a model?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(
            path,
            f"is not UTF-8 text (undecodable byte at offset {exc.start}); "
            "re-save it as UTF-8 or check that it is a picks file",
        ) from None


def _wide_encoding(head: bytes) -> str | None:
    """'UTF-16' / 'UTF-32' for text in those encodings (by BOM, or by the zero bytes of ASCII text)."""
    import codecs

    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "UTF-32"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "UTF-16"
    n = len(head) // 2
    if n >= 4:
        odd, even = head[1::2].count(0), head[0::2].count(0)
        if (odd >= 0.9 * n and even <= 0.1 * n) or (even >= 0.9 * n and odd <= 0.1 * n):
            return "UTF-16"
    return None


def require_voxel_size(path: Path, vs: float | None, fmt: str) -> float:
    if vs is None or not np.isfinite(vs) or vs <= 0:
        raise fail(
            path,
            f"{fmt} coordinates are in Angstrom and no voxel size is known; "
            "pass voxel_size= (the tomogram's voxel size in Angstrom)",
        )
    return float(vs)


def check_binning(path: Path, binning: float) -> float:
    b = float(binning)
    if not np.isfinite(b) or b <= 0:
        raise fail(path, f"binning must be a positive number, got {binning!r}")
    return b


def tomo_name(value: object) -> str:
    """Tomogram name from a file name or path: basename without tomogram suffixes."""
    s = str(value).strip()
    if not s or s.lower() == "nan":
        return ""
    name = s.replace("\\", "/").rsplit("/", 1)[-1]
    name = name.split(":", 1)[0]  # RELION 'file.st:mrc'
    changed = True
    while changed:
        changed = False
        for suf in TOMO_SUFFIXES:
            if name.lower().endswith(suf) and len(name) > len(suf):
                name = name[: -len(suf)]
                changed = True
    return name


def apply_tomogram(path: Path, table: pd.DataFrame, tomogram: str | None, raw: pd.Series | None = None):
    """Fill or filter ``table['tomogram']`` by the caller's tomogram name.

    No names in the file: fill. Names and a match (by name or by the raw value in the file):
    keep the matching rows. No match and one tomogram in the file: rename it. Otherwise error.
    """
    if tomogram is None:
        return table
    names = table["tomogram"].astype(str)
    if (names == "").all():
        table = table.copy()
        table["tomogram"] = tomogram
        return table
    match = names == tomogram
    if raw is not None:
        match |= raw.astype(str).to_numpy() == tomogram
    if match.any():
        out = table[match.to_numpy()].copy()
        out["tomogram"] = tomogram
        return out
    uniq = list(dict.fromkeys(names))
    if len(uniq) == 1:
        table = table.copy()
        table["tomogram"] = tomogram
        return table
    raise fail(path, f"has no picks for tomogram {tomogram!r}; it holds {uniq}")


def class_names_from_numbers(numbers: pd.Series | None, n: int, mapping: dict[int, str],
                             class_name: str | None) -> list[str]:
    """Class names for numeric class columns (RELION, Dynamo, STOPGAP).

    A class map (written by this package) wins; otherwise one class number (or none) gives
    ``class_name`` or the default, and several give ``class<N>``.
    """
    if numbers is None:
        return [class_name or DEFAULT_CLASS] * n
    nums = pd.to_numeric(numbers, errors="coerce").fillna(0).round().astype(int).tolist()
    if mapping:
        return [mapping.get(k, f"class{k}") for k in nums]
    if len(set(nums)) <= 1:
        return [class_name or DEFAULT_CLASS] * n
    return [f"class{k}" for k in nums]


def class_numbers(picks: Picks) -> tuple[list[int], dict[int, str]]:
    """1-based class numbers in order of first appearance, and the number -> name map."""
    names = picks.class_names
    index = {name: i + 1 for i, name in enumerate(names)}
    return [index[c] for c in picks.table["class_name"]], {i + 1: n for i, n in enumerate(names)}


def make_picks(path: Path, zyx: np.ndarray, opts: ReadOptions, *, class_name=None, score=None,
               tomogram=None, angles=None, voxel_size=None, raw_tomogram=None, source=None,
               stated_voxel_size=None) -> Picks:
    """Build the canonical Picks (source 'imported'), then apply the tomogram option.

    ``stated_voxel_size``: the voxel size (A) of the tomogram the file says its coordinates
    index; when the caller's ``voxel_size`` differs, the coordinates were converted and a
    :class:`CryoPickerWarning` says so.
    """
    note_rescale(path, stated_voxel_size, opts.voxel_size)
    zyx = np.asarray(zyx, dtype=float).reshape(-1, 3)
    if not np.isfinite(zyx).all():
        bad = int(np.flatnonzero(~np.isfinite(zyx).all(axis=1))[0])
        raise fail(path, f"row {bad + 1} has a missing or non-numeric coordinate")
    df = pd.DataFrame({"z": zyx[:, 0], "y": zyx[:, 1], "x": zyx[:, 2]})
    df["class_name"] = (opts.class_name or DEFAULT_CLASS) if class_name is None else list(class_name)
    df["score"] = 1.0 if score is None else np.asarray(score, dtype=float)
    df["source"] = "imported" if source is None else [s if s in SOURCES else "imported" for s in source]
    df["tomogram"] = "" if tomogram is None else [str(t) for t in tomogram]
    if angles is not None:
        ang = np.asarray(angles, dtype=float).reshape(-1, 3)
        for i, c in enumerate(ANGLES):
            df[c] = ang[:, i]
    raw = None if raw_tomogram is None else pd.Series(list(raw_tomogram))
    df = apply_tomogram(path, df, opts.tomogram, raw)
    return Picks(df, opts.voxel_size if opts.voxel_size is not None else voxel_size)


def note_rescale(path: Path, stated: float | None, target: float | None) -> None:
    """Warn that picks made at ``stated`` A per voxel were converted to ``target`` A voxels."""
    try:
        stated = None if stated is None else float(stated)
    except (TypeError, ValueError):
        return
    if not stated or not target or not math.isfinite(stated) or stated <= 0:
        return
    if math.isclose(stated, target, rel_tol=0.01):
        return
    warnings.warn(
        f"{path}: the picks were made at {stated:.4g} A per voxel; they were rescaled to this tomogram's "
        f"{target:.4g} A voxels (coordinates x {stated / target:.4g})",
        CryoPickerWarning, stacklevel=3,
    )


def picks_voxel_size(path: Path, picks: Picks, opts: WriteOptions, fmt: str) -> float:
    vs = opts.voxel_size if opts.voxel_size is not None else picks.voxel_size
    if vs is None or not vs > 0:
        raise fail(path, f"writing {fmt} needs the tomogram's voxel size; pass voxel_size= (Angstrom)")
    return float(vs)


def picks_for_writing(picks: Picks, opts: WriteOptions) -> pd.DataFrame:
    """The table to write, with empty tomogram names filled from ``opts.tomogram``."""
    t = picks.table.copy()
    if opts.tomogram is not None:
        t.loc[t["tomogram"] == "", "tomogram"] = opts.tomogram
    return t


def angles_or_zero(table: pd.DataFrame) -> np.ndarray:
    if all(c in table for c in ANGLES):
        return table[ANGLES].fillna(0.0).to_numpy(dtype=float)
    return np.zeros((len(table), 3))


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success os.replace it onto ``path``."""
    path = Path(path)
    if path.is_dir():
        raise fail(path, "is a directory; give a file name to write to")
    if not path.parent.exists():
        raise fail(path, f"cannot be written: folder {path.parent} does not exist")
    try:
        with atomic_output(path, suffix=".tmp" + path.suffix) as tmp:
            yield tmp
    except PicksFormatError:
        raise
    except OSError as exc:
        raise fail(path, f"cannot be written ({exc.strerror or exc})") from None


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
