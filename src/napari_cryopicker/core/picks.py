"""The one canonical picks representation that flows through the whole picker.

A :class:`Picks` holds a pandas table with one row per particle:

============ ======= =====================================================
column       dtype   meaning
============ ======= =====================================================
z, y, x      float   0-based voxel index in the tomogram (``data[z, y, x]``)
class_name   str     particle class (see :mod:`.classes`)
score        float   confidence in [0, 1]; manual picks have 1.0
source       str     one of :data:`SOURCES`
tomogram     str     name of the tomogram the coordinates index (file stem)
============ ======= =====================================================

plus optional Euler angles ``rot, tilt, psi`` (ZYZ, degrees, RELION convention) when a
format provides them. ``voxel_size`` (Angstrom) is the voxel size of the tomogram that
the coordinates index; ``None`` means unknown. Every file format converts to and from
this at the edge (:mod:`.formats`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

SOURCES = ("manual", "predicted", "accepted", "rejected", "imported")
COLUMNS = ["z", "y", "x", "class_name", "score", "source", "tomogram"]
ANGLES = ["rot", "tilt", "psi"]
DEFAULT_CLASS = "particle"


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "z": pd.Series(dtype=float),
            "y": pd.Series(dtype=float),
            "x": pd.Series(dtype=float),
            "class_name": pd.Series(dtype=object),
            "score": pd.Series(dtype=float),
            "source": pd.Series(dtype=object),
            "tomogram": pd.Series(dtype=object),
        }
    )


def _normalise_table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.reset_index(drop=True).copy()
    n = len(df)
    for c in ("z", "y", "x"):
        if c not in df:
            raise ValueError(f"picks table needs column {c!r}")
        df[c] = pd.to_numeric(df[c], errors="raise").astype(float)
    if "class_name" not in df:
        df["class_name"] = DEFAULT_CLASS
    if "score" not in df:
        df["score"] = 1.0
    if "source" not in df:
        df["source"] = "manual"
    if "tomogram" not in df:
        df["tomogram"] = ""
    df["class_name"] = df["class_name"].astype(str).astype(object)
    df["score"] = pd.to_numeric(df["score"], errors="coerce").fillna(1.0).astype(float)
    df["source"] = df["source"].astype(str).astype(object)
    df["tomogram"] = df["tomogram"].fillna("").astype(str).astype(object)
    extra = [c for c in df.columns if c not in COLUMNS]
    for c in ANGLES:
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    out = df[COLUMNS + extra]
    assert len(out) == n
    return out


@dataclass
class Picks:
    """Particle positions in voxel coordinates of one or more tomograms."""

    table: pd.DataFrame = field(default_factory=_empty_table)
    voxel_size: float | None = None

    def __post_init__(self) -> None:
        self.table = _normalise_table(self.table)
        if self.voxel_size is not None:
            self.voxel_size = float(self.voxel_size)

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_zyx(
        cls,
        zyx: np.ndarray | Sequence[Sequence[float]],
        class_name: str | Sequence[str] = DEFAULT_CLASS,
        score: float | Sequence[float] = 1.0,
        source: str | Sequence[str] = "manual",
        tomogram: str | Sequence[str] = "",
        voxel_size: float | None = None,
        angles: np.ndarray | None = None,
    ) -> Picks:
        zyx = np.asarray(zyx, dtype=float).reshape(-1, 3)
        df = pd.DataFrame(
            {
                "z": zyx[:, 0],
                "y": zyx[:, 1],
                "x": zyx[:, 2],
                "class_name": class_name,
                "score": score,
                "source": source,
                "tomogram": tomogram,
            },
            index=range(len(zyx)),
        )
        if angles is not None:
            angles = np.asarray(angles, dtype=float).reshape(-1, 3)
            for i, c in enumerate(ANGLES):
                df[c] = angles[:, i]
        return cls(df, voxel_size)

    @classmethod
    def concat(cls, parts: Iterable[Picks]) -> Picks:
        parts = list(parts)
        if not parts:
            return cls()
        sizes = {p.voxel_size for p in parts if p.voxel_size is not None and len(p)}
        if len(sizes) > 1:
            raise ValueError(
                f"cannot merge picks with different voxel sizes {sorted(sizes)}; "
                "rescale them first (Picks.rescaled)"
            )
        vs = sizes.pop() if sizes else next(
            (p.voxel_size for p in parts if p.voxel_size is not None), None
        )
        tables = [p.table for p in parts if len(p)]
        if not tables:
            return cls(voxel_size=vs)
        return cls(pd.concat(tables, ignore_index=True), vs)

    # -- access -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.table)

    @property
    def zyx(self) -> np.ndarray:
        return self.table[["z", "y", "x"]].to_numpy(dtype=float)

    @property
    def xyz(self) -> np.ndarray:
        return self.table[["x", "y", "z"]].to_numpy(dtype=float)

    @property
    def class_names(self) -> list[str]:
        """Class names in order of first appearance."""
        return list(dict.fromkeys(self.table["class_name"].tolist()))

    @property
    def tomograms(self) -> list[str]:
        return list(dict.fromkeys(self.table["tomogram"].tolist()))

    @property
    def has_angles(self) -> bool:
        return all(c in self.table for c in ANGLES)

    def angles(self) -> np.ndarray:
        if not self.has_angles:
            return np.zeros((len(self), 3))
        return self.table[ANGLES].to_numpy(dtype=float)

    def copy(self) -> Picks:
        return Picks(self.table.copy(), self.voxel_size)

    def subset(self, mask) -> Picks:
        """The rows where ``mask`` (booleans, one per row) is true, as new Picks.

        Row numbers are refused (TypeError; :meth:`take` takes them): cast to booleans they
        would silently select every row but row 0, in the original order. Until session 12
        two benchmarks ordered their review queue that way and measured an unordered one."""
        m = np.asarray(mask)
        if m.dtype.kind not in "b" and m.size:
            raise TypeError(f"Picks.subset takes a boolean mask, not {m.dtype} values; use take() for row numbers")
        return self._subset(m.astype(bool).reshape(-1))

    def take(self, rows) -> Picks:
        """The rows at the positions ``rows`` (integers, in that order), as new Picks."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        return Picks(self.table.iloc[rows].copy(), self.voxel_size)

    def _subset(self, mask) -> Picks:
        return Picks(self.table[np.asarray(mask, dtype=bool)].copy(), self.voxel_size)

    def select(
        self,
        class_name: str | Iterable[str] | None = None,
        tomogram: str | None = None,
        source: str | Iterable[str] | None = None,
        min_score: float | None = None,
    ) -> Picks:
        mask = np.ones(len(self), dtype=bool)
        t = self.table
        if class_name is not None:
            names = [class_name] if isinstance(class_name, str) else list(class_name)
            mask &= t["class_name"].isin(names).to_numpy()
        if tomogram is not None:
            mask &= (t["tomogram"] == tomogram).to_numpy()
        if source is not None:
            srcs = [source] if isinstance(source, str) else list(source)
            mask &= t["source"].isin(srcs).to_numpy()
        if min_score is not None:
            mask &= (t["score"] >= min_score).to_numpy()
        return self._subset(mask)

    def exclude_source(self, source: str | Iterable[str]) -> Picks:
        srcs = [source] if isinstance(source, str) else list(source)
        return self._subset(~self.table["source"].isin(srcs).to_numpy())

    def with_tomogram(self, name: str) -> Picks:
        out = self.copy()
        out.table["tomogram"] = name
        return out

    def rescaled(self, voxel_size: float) -> Picks:
        """The same physical positions expressed in voxels of size ``voxel_size``."""
        if self.voxel_size is None or self.voxel_size == voxel_size:
            out = self.copy()
            out.voxel_size = float(voxel_size)
            return out
        f = self.voxel_size / float(voxel_size)
        out = self.copy()
        for c in ("z", "y", "x"):
            out.table[c] = out.table[c] * f
        out.voxel_size = float(voxel_size)
        return out

    def inside(self, shape: Sequence[int]) -> np.ndarray:
        """Boolean mask of picks whose rounded position lies inside a (z, y, x) volume."""
        r = np.rint(self.zyx)
        shape_arr = np.asarray(shape)[None, :]
        return np.all((r >= 0) & (r < shape_arr), axis=1)

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.table["class_name"].value_counts(sort=False).items()}

    def __repr__(self) -> str:  # pragma: no cover - cosmetic
        return (
            f"Picks(n={len(self)}, classes={self.class_names}, "
            f"tomograms={self.tomograms}, voxel_size={self.voxel_size})"
        )

    def equals(self, other: Picks, atol: float = 1e-6) -> bool:
        """Same rows (positions within ``atol``), classes, sources and tomograms."""
        if len(self) != len(other):
            return False
        a, b = self.table, other.table
        if not np.allclose(self.zyx, other.zyx, atol=atol):
            return False
        for c in ("class_name", "source", "tomogram"):
            if a[c].tolist() != b[c].tolist():
                return False
        return bool(np.allclose(a["score"], b["score"], atol=1e-6))
