"""A picking project: many tomograms, each with its own annotation file (Qt-free).

A lab's job covers tens of tomograms. The project lists them (from files, folders, globs,
list files or copick runs) and, from each one's annotation file
(:mod:`.annotations`), counts its picks, predictions and rejections per class, gathers
the training set of the ticked ones and stores the picks of a batch run, without
opening any tomogram more than lazily. The napari Project panel shows it as a table; the
tomogram in the viewer is one row whose annotation file the session keeps current.

The project file (``*.cryopicker-project.json``) lists the tomograms and their ticks;
everything else stays in the per-tomogram annotation files, so a tomogram annotated
outside the project (or in another one) shows its picks here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .annotations import (
    ANNOTATION_SOURCES,
    find_autosave,
    payload_picks,
    payload_predictions,
    read_annotation_file,
    read_json,
    write_json_atomic,
)
from .batch_inputs import expand_tomograms
from .classes import ClassTable
from .errors import CryoPickerError
from .picks import Picks
from .tomogram import Tomogram, open_tomogram_near

PROJECT_FORMAT = "napari-cryopicker-project"
PROJECT_SUFFIX = ".cryopicker-project.json"
KINDS = ("picks", "predicted", "rejected")


@dataclass
class ProjectTomogram:
    path: Path
    name: str
    use: bool = True  # ticked: trained on and picked by the project's buttons
    # (file, mtime, size) -> count rows: the table refreshes after every edit, and a job's
    # annotation files with their predictions are tens of MB; only changed files are read
    _counted: tuple | None = field(default=None, repr=False, compare=False)

    def annotation_file(self) -> Path | None:
        return find_autosave(self.path)

    def payload(self) -> dict | None:
        """Its annotation payload, or None when it has none; CryoPickerError if damaged."""
        f = self.annotation_file()
        return read_annotation_file(f) if f is not None else None


def _name(path: Path) -> str:
    from .omezarr import is_ome_zarr, run_name

    return run_name(path) if is_ome_zarr(path) else path.stem


class Project:
    """The tomograms of a picking job, in the order they were added."""

    def __init__(self, tomograms: list[ProjectTomogram] | None = None, path: Path | None = None):
        self.tomograms: list[ProjectTomogram] = list(tomograms or [])
        self.path = path

    def __len__(self) -> int:
        return len(self.tomograms)

    def __iter__(self):
        return iter(self.tomograms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tomograms]

    def get(self, name: str) -> ProjectTomogram:
        for t in self.tomograms:
            if t.name == name:
                return t
        raise CryoPickerError(f"no tomogram {name!r} in the project; it has {', '.join(self.names) or 'none'}")

    def find(self, path: str | os.PathLike) -> ProjectTomogram | None:
        p = os.path.abspath(path)
        return next((t for t in self.tomograms if os.path.abspath(t.path) == p), None)

    # ------------------------------------------------------------------ membership
    def add(self, specs, *, use: bool = True) -> list[ProjectTomogram]:
        """Add tomograms from paths, folders, globs or list files; returns the new rows.
        Ones already listed are skipped; a missing file raises, naming it."""
        if isinstance(specs, (str, os.PathLike)):
            specs = [specs]
        new = []
        for p in expand_tomograms(specs):
            if not p.exists():
                raise CryoPickerError(f"{p}: no such tomogram")
            if self.find(p) is not None:
                continue
            name = _name(p)
            taken = set(self.names) | {t.name for t in new}
            if name in taken:  # two folders with a TS_01.mrc each: tell them apart
                name = f"{p.parent.name}/{name}"
            row = ProjectTomogram(p, name, use)
            new.append(row)
        self.tomograms.extend(new)
        return new

    def remove(self, name: str) -> None:
        """Drop a tomogram from the list (its files and annotations stay on disk)."""
        self.tomograms.remove(self.get(name))

    # ------------------------------------------------------------------ contents
    def counts(self) -> pd.DataFrame:
        """One row per tomogram and class: picks (training picks), predicted, rejected;
        a tomogram whose annotation file is damaged gets its problem in ``problem``."""
        rows = []
        for t in self.tomograms:
            rows.extend(self._count(t))
        return pd.DataFrame(rows, columns=["tomogram", "class_name", *KINDS, "problem"])

    @staticmethod
    def _count(t: ProjectTomogram) -> list[dict]:
        f = t.annotation_file()
        try:
            st = f.stat() if f is not None else None
        except OSError:
            st = None
        key = (str(f), st.st_mtime_ns, st.st_size) if st is not None else None
        if key is not None and t._counted is not None and t._counted[0] == key:
            return [dict(r, tomogram=t.name) for r in t._counted[1]]
        rows = []
        try:
            payload = read_annotation_file(f) if f is not None else None
        except CryoPickerError as e:
            payload = None
            rows.append({"tomogram": t.name, "class_name": "", "picks": 0, "predicted": 0, "rejected": 0,
                         "problem": str(e)})
        if payload is not None:
            picks, preds = payload_picks(payload), payload_predictions(payload)
            names = sorted(set(picks.class_names) | set(preds.class_names))
            src = picks.table["source"].to_numpy()
            cls = picks.table["class_name"].to_numpy()
            pcls = preds.table["class_name"].to_numpy()
            for n in names:
                rows.append({"tomogram": t.name, "class_name": n,
                             "picks": int(((cls == n) & (src != "rejected")).sum()),
                             "predicted": int((pcls == n).sum()),
                             "rejected": int(((cls == n) & (src == "rejected")).sum()), "problem": ""})
        t._counted = (key, rows) if key is not None else None
        return rows

    def totals(self) -> pd.DataFrame:
        """Per tomogram (every one, in order): picks, predicted, rejected, problem."""
        c = self.counts()
        out = pd.DataFrame({"tomogram": self.names})
        if len(c):
            agg = c.groupby("tomogram").agg({"picks": "sum", "predicted": "sum", "rejected": "sum",
                                             "problem": "max"})
            out = out.merge(agg, left_on="tomogram", right_index=True, how="left")
        for k in KINDS:
            out[k] = out.get(k, pd.Series(0, index=out.index)).fillna(0).astype(int)
        out["problem"] = out.get("problem", pd.Series("", index=out.index)).fillna("")
        return out

    def classes(self) -> ClassTable:
        """Every class named in the annotation files (the first diameter seen wins)."""
        table = ClassTable([])
        for t in self.tomograms:
            try:
                payload = t.payload()
            except CryoPickerError:
                continue
            for c in ClassTable.from_dict((payload or {}).get("classes") or []):
                if c.name not in table:
                    table.add(c.name, c.diameter, c.colour)
        return table

    def training_set(self, names: list[str] | None = None, *, imported: bool = True, level: int = 0
                     ) -> tuple[list[Tomogram], list[Picks]]:
        """The tomograms (opened lazily, at scale ``level`` or their coarsest) and their
        training picks and rejections, of the ``names`` given or else the ticked ones that
        have picks. ``imported``: picks read from files count as training picks (a user's
        own earlier picks)."""
        chosen = [self.get(n) for n in names] if names is not None else [t for t in self.tomograms if t.use]
        sources = list(ANNOTATION_SOURCES if imported else [s for s in ANNOTATION_SOURCES if s != "imported"])
        tomos, picks = [], []
        for t in chosen:
            payload = t.payload()
            if payload is None:
                continue
            p = payload_picks(payload)
            p = p.subset(p.table["source"].isin([*sources, "rejected"]).to_numpy())
            if not (p.table["source"] != "rejected").any():
                continue
            tomo = open_tomogram_near(t.path, level)
            if p.voxel_size and tomo.voxel_size and abs(p.voxel_size / tomo.voxel_size - 1) > 1e-3:
                p = p.rescaled(tomo.voxel_size)
            tomos.append(tomo)
            picks.append(p.with_tomogram(tomo.name))
        if not tomos:
            raise CryoPickerError("none of the chosen tomograms has picks yet: pick some particles first")
        return tomos, picks

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        return {"format": PROJECT_FORMAT, "version": 1,
                "tomograms": [{"path": str(t.path), "name": t.name, "use": bool(t.use)} for t in self.tomograms]}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else self.path
        if target is None:
            raise CryoPickerError("choose where to save the project")
        try:
            write_json_atomic(target, self.to_dict())
        except OSError as e:
            raise CryoPickerError(f"{target}: cannot save the project ({e.strerror or e})") from None
        self.path = target
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> Project:
        p = Path(path)
        d = read_json(p, "project file")
        if not isinstance(d, dict) or d.get("format") != PROJECT_FORMAT or not isinstance(d.get("tomograms"), list):
            raise CryoPickerError(f"{p}: not a napari-cryopicker project file")
        rows = []
        for i, e in enumerate(d["tomograms"]):
            if not isinstance(e, dict) or not isinstance(e.get("path"), str):
                raise CryoPickerError(f"{p}: tomogram {i + 1} has no path")
            tp = Path(e["path"])
            if not tp.is_absolute():
                tp = p.parent / tp
            rows.append(ProjectTomogram(tp, str(e.get("name") or _name(tp)), bool(e.get("use", True))))
        return cls(rows, p)
