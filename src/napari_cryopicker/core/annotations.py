"""Annotation files: the picks, rejections, predictions, thresholds and model of one
tomogram, autosaved beside it as ``<stem>.cryopicker.json`` (Qt-free).

The napari session writes them on every edit; :mod:`.project` reads them to count,
train on and pick many tomograms without opening each in the viewer.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import atomic_output
from .classes import ClassTable
from .errors import CryoPickerError
from .picks import Picks
from .tomogram import Tomogram

AUTOSAVE_SUFFIX = ".cryopicker.json"
AUTOSAVE_FORMAT = "napari-cryopicker-annotations"
#: the sources of a user's own picks (training picks; "rejected" are negatives)
ANNOTATION_SOURCES = ("manual", "accepted", "imported")
COLUMNS = ("z", "y", "x", "class_name", "score", "source")


def default_autosave_path(tomo: Tomogram | Path) -> Path | None:
    path = tomo if isinstance(tomo, Path) else tomo.path
    if path is None:
        return None
    return path.with_name(path.stem + AUTOSAVE_SUFFIX)


def fallback_autosave_path(tomo: Tomogram | Path) -> Path | None:
    """Per-user location used when the tomogram's folder is not writable."""
    path = tomo if isinstance(tomo, Path) else tomo.path
    if path is None:
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-cryopicker" / "autosave"
    h = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    return base / f"{path.stem}-{h}{AUTOSAVE_SUFFIX}"


def backup_path(autosave: Path) -> Path:
    """Where the autosave before the last deletion is kept."""
    return autosave.with_name(autosave.name + ".bak")


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_json_atomic(path: Path, payload: dict) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))
    return path


def read_json(path: Path, what: str):
    """The JSON in ``path``; CryoPickerError naming the file (and ``what`` it should be) if not."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CryoPickerError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise CryoPickerError(f"{path}: not a readable {what} ({e})") from None


def read_annotation_file(path: str | os.PathLike) -> dict:
    """The payload of a saved annotation file, checked; CryoPickerError naming the file if not."""
    p = Path(path)
    if p.is_dir():
        raise CryoPickerError(f"{p}: is a directory; give the .cryopicker.json file")
    payload = read_json(p, "annotation file")
    if not isinstance(payload, dict) or payload.get("format") != AUTOSAVE_FORMAT:
        raise CryoPickerError(f"{p}: not a napari-cryopicker annotation file")
    problem = _payload_problem(payload)
    if problem:
        raise CryoPickerError(f"{p}: damaged annotation file ({problem})")
    return payload


def _payload_problem(payload: dict) -> str:
    """What is wrong with an annotation payload's picks and classes, or ''."""
    picks = payload.get("picks") or {}
    if not isinstance(picks, dict):
        return "'picks' is not a table"
    cols = {k: picks.get(k, []) for k in ("z", "y", "x", "class_name", "score", "source")}
    if not all(isinstance(v, list) for v in cols.values()):
        return "a 'picks' column is not a list"
    n = len(cols["z"])
    if any(len(v) != n for k, v in cols.items() if k in ("y", "x") or v):
        return "the 'picks' columns have different lengths"
    try:
        zyx = np.asarray([cols["z"], cols["y"], cols["x"]], dtype=float)
    except (TypeError, ValueError):
        return "a pick coordinate is not a number"
    if not np.isfinite(zyx).all():
        return "a pick coordinate is not a finite number"
    try:
        ClassTable.from_dict(payload.get("classes") or [])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        return f"bad class table: {e}"
    preds = payload.get("predictions") or {}
    if not isinstance(preds, dict) or not all(isinstance(v, list) for v in preds.values()):
        return "'predictions' is not a table"
    if len({len(v) for k, v in preds.items() if k in ("z", "y", "x", "class_name", "score")}) > 1:
        return "the 'predictions' columns have different lengths"
    model = payload.get("model")
    if model is not None and not isinstance(model, str):
        return "'model' is not a file name"
    thresholds = payload.get("thresholds") or {}
    if not isinstance(thresholds, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in thresholds.values()):
        return "'thresholds' is not a table of numbers"
    vs = payload.get("voxel_size")
    if vs is not None and not (isinstance(vs, (int, float)) and vs > 0):
        return f"voxel_size {vs!r} is not a positive number"
    level = payload.get("level", 0)
    if not (isinstance(level, int) and not isinstance(level, bool) and level >= 0):
        return f"level {level!r} is not a scale level (0, 1, ...)"
    return ""


def saved_level(tomogram_path: str | os.PathLike | None) -> int | None:
    """The scale level the annotations of a tomogram were last saved at (None: no file)."""
    path = find_autosave(tomogram_path) if tomogram_path else None
    if path is None:
        return None
    try:
        return int(read_annotation_file(path).get("level", 0))
    except CryoPickerError:
        return None


def set_aside(path: Path) -> Path | None:
    """Rename a damaged file to ``<name>.damaged`` (or ``.damaged2`` ...) so nothing overwrites it."""
    for i in range(1, 100):
        target = path.with_name(path.name + (".damaged" if i == 1 else f".damaged{i}"))
        if not target.exists():
            try:
                os.replace(path, target)
            except OSError:
                return None
            return target
    return None




def find_autosave(tomogram_path: str | os.PathLike) -> Path | None:
    """The annotation file of the tomogram at ``tomogram_path``, beside it or in the per-user
    fallback folder; None when it has none yet."""
    p = Path(tomogram_path)
    for cand in (default_autosave_path(p), fallback_autosave_path(p)):
        if cand is not None and cand.is_file():
            return cand
    return None


def _table(payload: dict, key: str, source: str | None = None) -> Picks:
    p = payload.get(key) or {}
    df = pd.DataFrame({k: p.get(k, []) for k in COLUMNS[:5]})
    n = len(df)
    df["class_name"] = df["class_name"].astype(str)
    df["score"] = pd.to_numeric(df["score"]) if n else pd.Series([], dtype=float)
    df["source"] = source if source is not None else (p.get("source") or ["manual"] * n)
    return Picks(df, payload.get("voxel_size"))


def payload_picks(payload: dict) -> Picks:
    """A user's picks and rejections (source "rejected") in an annotation payload, in the
    voxels of the tomogram they were saved with (``payload["voxel_size"]``)."""
    out = _table(payload, "picks")
    return out.with_tomogram(str(payload.get("tomogram") or ""))


def payload_predictions(payload: dict) -> Picks:
    """The model's picks saved in an annotation payload (source "predicted")."""
    return _table(payload, "predictions", "predicted").with_tomogram(str(payload.get("tomogram") or ""))


def _columns(picks: Picks, with_source: bool) -> dict:
    t = picks.table
    out = {a: t[a].astype(float).round(3).tolist() for a in ("z", "y", "x")}
    out["class_name"] = t["class_name"].astype(str).tolist()
    out["score"] = t["score"].astype(float).round(5).tolist()
    if with_source:
        out["source"] = t["source"].astype(str).tolist()
    return out


def new_payload(tomo: Tomogram, classes: ClassTable) -> dict:
    """An annotation payload with no picks for ``tomo``."""
    empty = Picks.from_zyx(np.zeros((0, 3)), voxel_size=tomo.voxel_size)
    return {
        "format": AUTOSAVE_FORMAT, "version": 1, "tomogram": tomo.name,
        "tomogram_path": str(tomo.path) if tomo.path else None, "voxel_size": tomo.voxel_size,
        "shape": list(tomo.shape), "classes": classes.to_dict(), "active_class": None, "thresholds": {},
        "picks": _columns(empty, True), "predictions": _columns(empty, False), "model": None,
    }


def store_predictions(tomo: Tomogram, predictions: Picks, classes: ClassTable,
                      thresholds: dict[str, float] | None = None, model: str | None = None) -> Path:
    """Put ``predictions`` (in ``tomo``'s voxels) into the annotation file of ``tomo`` (made
    if it has none), keeping its picks; the file is replaced atomically. For picking many
    tomograms, where only the one in the viewer has a live session."""
    if tomo.path is None:
        raise CryoPickerError(f"{tomo.name}: has no file, so its picks cannot be stored beside it")
    path = find_autosave(tomo.path)
    payload = read_annotation_file(path) if path is not None else new_payload(tomo, classes)
    known = ClassTable.from_dict(payload.get("classes") or [])
    for c in classes:
        if c.name not in known:
            known.add(c.name, c.diameter, c.colour)
    payload["classes"] = known.to_dict()
    if predictions.voxel_size is None:
        predictions = predictions.copy()
        predictions.voxel_size = tomo.voxel_size
    vs = payload.get("voxel_size")
    if vs and predictions.voxel_size and abs(predictions.voxel_size / float(vs) - 1) > 1e-3:
        # the file holds the picks of another scale level: its voxels, not the run's
        predictions = predictions.rescaled(float(vs))
    payload["predictions"] = _columns(predictions, False)
    payload["thresholds"] = {**(payload.get("thresholds") or {}), **{k: float(v) for k, v in (thresholds or {}).items()}}
    if model is not None:
        payload["model"] = str(model)
    targets = [path] if path is not None else [default_autosave_path(tomo), fallback_autosave_path(tomo)]
    for i, target in enumerate(targets):
        try:
            return write_json_atomic(target, payload)
        except OSError as e:
            if i == len(targets) - 1:
                raise CryoPickerError(f"{target}: cannot store the picks ({e.strerror or e})") from None
    raise AssertionError("unreachable")  # pragma: no cover
