"""The inputs and outputs of a batch: tomograms from globs, list files, folders and copick
projects; one picks file per tomogram; and the record that marks a tomogram finished
(see :mod:`.batch` for how a run uses them)."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CryoPickerError


RECORD_DIR = ".cryopicker"
RECORD_VERSION = 1
MERGED_NAME = "all_picks.star"
LIST_SUFFIXES = (".txt", ".lst", ".list")
TOMOGRAM_SUFFIXES = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali")
GLOB_CHARS = set("*?[")


class BatchError(CryoPickerError):
    """The batch as a whole cannot start (no tomograms, clashing names, no scheduler)."""


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class BatchInput:
    """One tomogram to pick: its file, the name its picks carry, a known problem if any."""

    tomogram: Path
    name: str
    problem: str | None = None  # set when it is known to fail before running (copick run)


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in GLOB_CHARS)


def _is_tomogram_file(p: Path) -> bool:
    return p.suffix.lower() in TOMOGRAM_SUFFIXES or p.suffix.lower() == ".zarr"


def _glob(pattern: str) -> list[Path]:
    return sorted(Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True)
                  if _is_tomogram_file(Path(m)))


def _read_list(path: Path) -> list[Path]:
    """Tomogram paths (or globs) from a text file, one a line; '#' starts a comment.
    Relative entries are relative to the list file's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BatchError(f"{path}: is neither a tomogram ({', '.join(TOMOGRAM_SUFFIXES)}) nor a text "
                         "list of tomogram paths") from None
    except OSError as exc:
        raise BatchError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    out: list[Path] = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        p = Path(os.path.expanduser(entry))
        if not p.is_absolute():
            p = path.parent / p
        if _is_glob(entry):
            matched = _glob(str(p))
            if not matched:
                raise BatchError(f"{path}: pattern {entry!r} matches no tomogram files")
            out.extend(matched)
        else:
            out.append(p)
    if not out:
        raise BatchError(f"{path}: lists no tomograms")
    return out


def expand_tomograms(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Tomogram paths from globs (``data/**/*.mrc``), list files (one path a line), folders
    (their tomogram files) and plain paths; sorted, without duplicates.

    A plain path that does not exist is kept (its task reports it); a glob, list or folder
    that yields nothing raises :class:`BatchError`.
    """
    found: list[Path] = []
    for spec in specs:
        s = str(spec)
        p = Path(os.path.expanduser(s))
        if p.is_dir() and p.suffix.lower() != ".zarr":
            matched = sorted(q for q in p.iterdir() if _is_tomogram_file(q))
            if not matched:
                raise BatchError(f"{p}: folder holds no tomogram files ({', '.join(TOMOGRAM_SUFFIXES)})")
            found.extend(matched)
        elif p.exists() or not _is_glob(s):
            if p.is_file() and (p.suffix.lower() in LIST_SUFFIXES or not _is_tomogram_file(p)):
                found.extend(_read_list(p))
            else:
                found.append(p)
        else:
            matched = _glob(s)
            if not matched:
                raise BatchError(f"{s}: pattern matches no tomogram files ({', '.join(TOMOGRAM_SUFFIXES)})")
            found.extend(matched)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    return sorted(unique.values(), key=lambda q: (q.name, str(q)))


def inputs_from_paths(paths: Sequence[Path]) -> list[BatchInput]:
    from .formats._common import tomo_name
    from .omezarr import run_name

    out = []
    for p in map(Path, paths):
        name = run_name(p) if p.suffix.lower() == ".zarr" else (tomo_name(p.name) or p.stem)
        out.append(BatchInput(p, name))
    return out


# ------------------------------------------------------------------------------ copick
def copick_tomograms(config: str | os.PathLike, tomo_type: str | None = None,
                     voxel_size: float | None = None) -> list[BatchInput]:
    """One :class:`BatchInput` per run of a local copick project, through the copick
    library (:func:`.copick_project.run_tomograms`): ``tomo_type`` picks the type when a
    run has several, ``voxel_size`` (the model's) the spacing. A run whose tomogram is
    missing or ambiguous gets a ``problem``."""
    from .copick_project import open_project, run_tomograms

    try:
        runs = run_tomograms(open_project(config), tomo_type, voxel_size)
    except CryoPickerError as e:
        raise BatchError(f"{config}: {e}" if str(config) not in str(e) else str(e)) from None
    if not runs:
        raise BatchError(f"{config}: the copick project has no runs")
    return [BatchInput(r.path, r.run) if r.path is not None else
            BatchInput(Path(config).parent, r.run, r.problem.replace("choose a type", "choose one with "
                                                                     "--copick-tomogram TYPE"))
            for r in runs]


# ------------------------------------------------------------------------------ planning
def output_dir(out: Path) -> Path:
    """The folder that holds the per-tomogram outputs (and, by default, the merged star)."""
    return out if out.suffix == "" else out.parent


def plan_outputs(out: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """One picks file per tomogram name: ``--out DIR`` -> ``DIR/<name>.csv``; ``--out
    P.ext`` -> ``P_<name>.ext`` beside it. Always named by tomogram, however many there
    are, so that a rerun on more (or fewer) tomograms finds the earlier outputs."""
    out = Path(out)
    if out.suffix == "":
        return [out / f"{n}.csv" for n in names]
    return [out.parent / f"{out.stem}_{n}{out.suffix}" for n in names]


def record_path(output: Path) -> Path:
    return output.parent / RECORD_DIR / f"{output.name}.json"


def _file_id(path: Path) -> dict:
    p = Path(path)
    try:
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(p.absolute())}


def settings_for(model: Path, threshold: float | None, options: dict | None = None) -> dict:
    """What a record must have been made with to count as finished (``options``: the
    PredictConfig fields set, e.g. ``{"mask_fiducials": False}``; none set adds no key, so
    records of earlier versions still count)."""
    out = {"model": _file_id(model), "threshold": threshold}
    if options:
        out["options"] = dict(sorted(options.items()))
    return out


def read_record(output: Path, settings: dict | None = None) -> tuple[dict | None, str]:
    """(record, "") when ``output``'s tomogram is finished, else (None, why not)."""
    rp = record_path(output)
    if not rp.exists():
        return None, "no record"
    try:
        rec = json.loads(rp.read_text(encoding="utf-8"))
        outputs = [Path(output).parent / p for p in rec["outputs"]]
        rec["outputs"] = [str(p) for p in outputs]
        rec["picks"]["columns"]  # noqa: B018 - must be there
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"unreadable record {rp}"
    missing = [p for p in outputs if not p.exists()]
    if missing:
        return None, f"{missing[0]} is missing"
    if settings is not None and rec.get("settings") != settings:
        return None, "made with another model file or threshold"
    return rec, ""


def record_picks(rec: dict):
    import pandas as pd

    from .picks import Picks

    p = rec["picks"]
    return Picks(pd.DataFrame(p["data"], columns=p["columns"]), rec.get("voxel_size"))
