"""Delimited-text parsing shared by the CSV-like formats (canonical, napari, Kaggle, SHREC)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from ._common import fail, read_text

DELIMITERS = {"\t": "tab", "|": "pipe", ",": "comma", ";": "semicolon"}


def data_lines(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a text file."""
    lines = [ln for ln in read_text(path).splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise fail(path, "is empty (no picks and no header)")
    return lines


def sniff_delimiter(line: str) -> str | None:
    """The delimiter of a line; None means runs of whitespace."""
    for d in DELIMITERS:
        if d in line:
            return d
    return None


def split(line: str, delim: str | None) -> list[str]:
    parts = line.split(delim) if delim is not None else line.split()
    return [p.strip().strip('"').strip("'").strip() for p in parts]


def is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def has_header(fields: list[str]) -> bool:
    return not all(is_number(f) for f in fields if f != "")


def frame(path: Path, lines: list[str], header: bool) -> pd.DataFrame:
    """Parse lines into a string DataFrame (header row -> lower-case column names)."""
    delim = sniff_delimiter(lines[0])
    sep = delim if delim is not None else r"\s+"
    try:
        df = pd.read_csv(
            io.StringIO("\n".join(lines)), sep=sep, header=0 if header else None, dtype=str,
            keep_default_na=False, engine="python", skipinitialspace=True,
        )
    except (pd.errors.ParserError, ValueError, csv_error()) as exc:
        raise fail(path, f"cannot be parsed as a delimited table ({exc})") from None
    if header:
        df.columns = [str(c).strip().lower() for c in df.columns]
    return df


def csv_error():
    import csv

    return csv.Error


def numeric(path: Path, df: pd.DataFrame, col, what: str = "coordinate", blanks: bool = False) -> np.ndarray:
    """A numeric column; any non-number is an error naming the row (blank cells -> NaN if ``blanks``)."""
    text = df[col].astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(values) | (blanks & text.isin(["", "nan", "NaN"]).to_numpy())
    bad = np.flatnonzero(~ok)
    if len(bad):
        i = int(bad[0])
        raise fail(path, f"row {i + 1}: {what} column {col!r} has {df[col].iloc[i]!r}, not a number")
    return values
