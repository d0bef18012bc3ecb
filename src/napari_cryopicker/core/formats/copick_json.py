"""copick picks JSON, read and write.

One file per (run, object): ``pickable_object_name``, ``user_id``, ``session_id``,
``run_name`` (-> tomogram), ``voxel_spacing``, ``unit: "angstrom"``, ``points[]`` with
``location {x, y, z}`` in Angstrom from voxel 0 (``x_A = i_x * vs``), ``transformation_``
(4x4, rotation = RELION ZYZ inverted, identity without angles), ``instance_id``, ``score``.

Writing to a copick project's config file (``copick.json``: a JSON with
``pickable_objects``) stores the picks in the project through the copick library
(:func:`..copick_project.write_project_picks`: ``ExperimentRuns/<run>/Picks/``, where copick
and napari-copick read them; runs are the tomograms' names, classes its objects). Writing
to ``name.json``: one class and one tomogram -> that file; several classes ->
``name_<class>.json`` beside it (several tomograms need a folder). Writing to a folder
(any path without ``.json``): ``<folder>/<run>/Picks/<user>_<session>_<class>.json``, or
under ``<folder>/ExperimentRuns/`` where the folder is a project's root
(``<folder>/<user>_<session>_<class>.json`` when the tomogram has no name). Reading a
folder reads every copick picks JSON below it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..picks import ANGLES, Picks
from ._angles import matrices_to_relion, relion_to_matrices
from ._common import (
    ReadOptions, WriteOptions, fail, make_picks, picks_for_writing, picks_voxel_size, read_text,
    require_voxel_size, write_text,
)

KEYS = ("pickable_object_name", "points")


def load(path: Path) -> dict:
    text = read_text(path)
    if not text.strip():
        raise fail(path, "is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise fail(path, f"is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or any(k not in data for k in KEYS):
        raise fail(path, "has no pickable_object_name/points; is this a copick picks file?")
    return data


def is_copick(path: Path) -> bool:
    try:
        load(path)
    except Exception:
        return False
    return True


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.json") if is_copick(p))


def _read_one(path: Path, opts: ReadOptions) -> tuple[pd.DataFrame, float | None, float | None]:
    """One copick file as a table (z, y, x in voxels, class, score, tomogram, angles), the voxel
    size used and the file's own ``voxel_spacing``."""
    data = load(path)
    pts = data["points"] or []
    if not isinstance(pts, list):
        raise fail(path, "'points' is not a list")
    unit = str(data.get("unit") or "angstrom").lower()
    if unit not in ("angstrom", "a"):
        raise fail(path, f"unit {unit!r} is not supported (copick picks are in angstrom)")
    try:
        loc = np.array([[float(p["location"][a]) for a in "zyx"] for p in pts], dtype=float).reshape(-1, 3)
        mats = np.array([np.asarray(p.get("transformation_", np.eye(4)), float)[:3, :3] for p in pts])
        score = [1.0 if p.get("score") is None else float(p["score"]) for p in pts]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise fail(path, f"has a malformed point ({type(exc).__name__}: {exc})") from None
    vs = opts.voxel_size if opts.voxel_size is not None else data.get("voxel_spacing")
    if len(pts):
        vs = require_voxel_size(path, vs, "copick")
    table = pd.DataFrame(loc / (vs or 1.0), columns=["z", "y", "x"])
    table["class_name"] = str(data["pickable_object_name"])
    table["score"] = score
    table["tomogram"] = str(data.get("run_name") or "")
    if len(pts) and np.any(np.abs(mats.reshape(-1, 3, 3) - np.eye(3)) > 1e-9):
        table[ANGLES] = matrices_to_relion(mats)
    stated = data.get("voxel_spacing")
    stated = float(stated) if isinstance(stated, (int, float)) and not isinstance(stated, bool) else None
    return table, (float(vs) if vs is not None else None), stated


def read(path: Path, opts: ReadOptions) -> Picks:
    paths = files_in(path) if path.is_dir() else [path]
    if not paths:
        raise fail(path, "is a folder without copick picks JSON files")
    parts = [_read_one(p, opts) for p in paths]
    sizes = {round(vs, 6) for t, vs, _ in parts if vs is not None and len(t)}
    if len(sizes) > 1:
        raise fail(path, f"holds picks at several voxel spacings {sorted(sizes)}; pass voxel_size=")
    stated = {round(s, 6) for t, _, s in parts if s is not None and len(t)}
    t = pd.concat([t for t, _, _ in parts], ignore_index=True)
    angles = t[ANGLES].fillna(0.0).to_numpy() if all(a in t for a in ANGLES) else None
    return make_picks(
        path, t[["z", "y", "x"]].to_numpy(float), opts, class_name=t["class_name"].tolist(),
        score=t["score"].to_numpy(float), tomogram=t["tomogram"].tolist(), angles=angles,
        voxel_size=sizes.pop() if sizes else None, stated_voxel_size=stated.pop() if len(stated) == 1 else None,
    )


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "particle"


def document(picks_t, vs: float, cls: str, run: str, opts: WriteOptions, has_angles: bool) -> dict:
    if has_angles:
        mats = relion_to_matrices(picks_t[ANGLES].fillna(0).to_numpy(float))
    else:
        mats = np.tile(np.eye(3), (len(picks_t), 1, 1))
    points = []
    for k, (x, y, z, s) in enumerate(picks_t[["x", "y", "z", "score"]].to_numpy(float)):
        m = np.eye(4)
        m[:3, :3] = mats[k]
        points.append({"location": {"x": x * vs, "y": y * vs, "z": z * vs}, "transformation_": m.tolist(),
                       "instance_id": 0, "score": s})
    return {"pickable_object_name": cls, "user_id": opts.user_id, "session_id": str(opts.session_id),
            "run_name": run or None, "voxel_spacing": vs, "unit": "angstrom", "points": points,
            "trust_orientation": bool(has_angles)}


def is_project_config(path: Path) -> bool:
    """A copick project's config file (never to be overwritten by a picks file)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    try:
        data = json.loads(read_text(path))
    except Exception:
        return False
    return isinstance(data, dict) and "pickable_objects" in data and "points" not in data


def _write_project(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    from ..copick_project import open_project, write_project_picks
    from ..errors import CryoPickerError

    vs = picks_voxel_size(path, picks, opts, "copick")
    picks = picks.copy()
    picks.voxel_size = vs
    if opts.tomogram and not any(picks.tomograms):
        picks = picks.with_tomogram(opts.tomogram)
    try:
        root = open_project(path)
        written = write_project_picks(root, picks, user_id=opts.user_id, session_id=str(opts.session_id))
    except CryoPickerError as e:
        raise fail(path, str(e).removeprefix(f"{path}: ")) from None
    runs = {r.name: r for r in root.runs}
    out = []
    for item in written:
        run, cls = item.split("/", 1)
        for pk in runs[run].get_picks(object_name=cls, user_id=opts.user_id, session_id=str(opts.session_id)):
            out.append(Path(getattr(pk, "path", "") or path))
    return out


def write(picks: Picks, path: Path, opts: WriteOptions) -> list[Path]:
    if is_project_config(path):
        return _write_project(picks, path, opts)
    vs = picks_voxel_size(path, picks, opts, "copick")
    t = picks_for_writing(picks, opts)
    tomos = list(dict.fromkeys(t["tomogram"])) or [opts.tomogram or ""]
    classes = list(dict.fromkeys(t["class_name"])) or ["particle"]
    folder = path.suffix.lower() != ".json"
    if not folder and len(tomos) > 1:
        raise fail(path, f"a copick file holds one run but the picks are in {len(tomos)} tomograms; "
                         "write to a folder instead")
    out = []
    for run in tomos:
        for cls in classes:
            sel = t[(t["tomogram"] == run) & (t["class_name"] == cls)] if len(t) else t
            if len(t) and not len(sel):
                continue
            name = f"{_safe(opts.user_id)}_{_safe(str(opts.session_id))}_{_safe(cls)}.json"
            if folder:
                runs = path / "ExperimentRuns" if (path / "ExperimentRuns").is_dir() else path
                target = (runs / run / "Picks" / name) if run else path / name
                target.parent.mkdir(parents=True, exist_ok=True)
            else:
                target = path if len(classes) == 1 else path.with_name(f"{path.stem}_{_safe(cls)}.json")
            doc = document(sel, vs, cls, run, opts, picks.has_angles)
            out.append(write_text(target, json.dumps(doc, indent=1) + "\n"))
    return out
