"""copick projects through the copick library (the ``copick`` extra): pickable objects as
classes, a user's and session's picks read as canonical picks, and picks written back with
a user and session id, where copick and napari-copick see them at once
(``ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json``).

Positions: copick keeps Angstrom from voxel 0 (x_A = i_x * voxel size); canonical picks
are voxels of the tomogram at ``voxel_size``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .classes import ClassTable, ParticleClass
from .errors import CryoPickerError
from .formats._angles import matrices_to_relion, relion_to_matrices
from .picks import ANGLES, Picks


def open_project(config: str | os.PathLike):
    """The copick root of ``config`` (a copick config JSON)."""
    p = Path(config)
    if not p.is_file():
        raise CryoPickerError(f"{p}: no such copick config file")
    try:
        import copick
    except ImportError as e:
        raise CryoPickerError(f"copick projects need the copick library ({e}); "
                              "pip install 'napari-cryopicker[copick]'") from None
    try:
        return copick.from_file(str(p))
    except Exception as e:
        raise CryoPickerError(f"{p}: copick cannot open this config ({type(e).__name__}: {e})") from None


def _local(fs, path: str) -> Path | None:
    """``path`` on the local disk, or None where the filesystem is remote."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return Path(path) if {"file", "local"} & set(protocols) else None


def _remote_roots(root) -> list[str]:
    cfg = root.config
    return [str(v) for v in (getattr(cfg, "overlay_root", None), getattr(cfg, "static_root", None))
            if v and "://" in str(v) and not str(v).startswith(("local://", "file://"))]


@dataclass(frozen=True)
class RunTomogram:
    """A run's tomogram of a copick project on disk (``path``), or why there is none."""

    run: str
    path: Path | None
    voxel_size: float | None = None
    tomo_type: str | None = None
    problem: str | None = None


def tomogram_types(root) -> list[str]:
    """Every tomogram type (``wbp``, ``denoised``, ...) of the project's runs."""
    return sorted({t.tomo_type for run in root.runs for vs in run.voxel_spacings for t in vs.tomograms})


def voxel_spacings(root) -> list[float]:
    return sorted({float(vs.voxel_size) for run in root.runs for vs in run.voxel_spacings})


def run_tomograms(root, tomo_type: str | None = None, voxel_size: float | None = None) -> list[RunTomogram]:
    """One tomogram per run of a local copick project, as the copick library lists runs,
    voxel spacings and tomograms (OME-Zarr ``<type>.zarr``); an MRC ``<type>.mrc`` exported
    into a voxel-spacing folder counts too, and wins over the OME-Zarr of its type.

    ``tomo_type`` picks the type when a run has several; ``voxel_size`` the spacing (within
    5 %) when there are several. A run whose tomogram is missing or ambiguous gets a ``problem``.
    """
    remote = _remote_roots(root)
    if remote:
        raise CryoPickerError(f"the copick project's root {remote[0]} is not a local folder; cryopicker reads "
                              "local copick projects only (copy the runs to disk first)")
    out = []
    for run in sorted(root.runs, key=lambda r: r.name):
        cands: dict[tuple[float, str], Path] = {}
        for vs in run.voxel_spacings:
            v = float(vs.voxel_size)
            for t in vs.tomograms:
                fs, where = (t.fs_static, t.static_path) if t.read_only else (t.fs_overlay, t.overlay_path)
                local = _local(fs, where)
                if local is not None:
                    cands[(v, t.tomo_type)] = local
            for fs, where in {(vs.fs_overlay, vs.overlay_path), (vs.fs_static, vs.static_path)}:
                folder = _local(fs, where)
                for mrc in sorted(folder.glob("*.mrc")) if folder is not None and folder.is_dir() else []:
                    cands[(v, mrc.stem)] = mrc
        if tomo_type:
            cands = {k: f for k, f in cands.items() if k[1] == tomo_type}
        if voxel_size and len({k[0] for k in cands}) > 1:
            cands = {k: f for k, f in cands.items() if math.isclose(k[0], voxel_size, rel_tol=0.05)} or cands
        if len(cands) == 1:
            (v, kind), path = next(iter(cands.items()))
            out.append(RunTomogram(run.name, path, v, kind))
        elif cands:
            choices = ", ".join(f"{kind} at {v:g} A" for v, kind in sorted(cands))
            out.append(RunTomogram(run.name, None, problem=f"several tomograms ({choices}); choose a type "
                                                            "(and a voxel spacing)"))
        else:
            what = f"no '{tomo_type}' tomogram" if tomo_type else "no tomogram"
            out.append(RunTomogram(run.name, None, problem=f"{what} in any voxel spacing"))
    return out


def project_classes(root, voxel_size: float) -> ClassTable:
    """The project's particle objects as classes: diameter = 2 x radius (A) in voxels."""
    out = []
    for o in root.pickable_objects:
        if not getattr(o, "is_particle", True):
            continue
        radius = float(getattr(o, "radius", None) or 50.0)
        colour = getattr(o, "color", None)
        hexcol = "" if not colour else "#" + "".join(f"{int(c):02x}" for c in list(colour)[:3])
        out.append(ParticleClass(o.name, 2.0 * radius / float(voxel_size), hexcol))
    return ClassTable(out)


def read_project_picks(root, voxel_size: float, *, user_id: str | None = None, session_id: str | None = None,
                       runs: list[str] | None = None) -> Picks:
    """Picks of ``user_id`` / ``session_id`` (None: anyone's) from every run (or ``runs``)."""
    parts = []
    for run in root.runs:
        if runs is not None and run.name not in runs:
            continue
        for pk in run.get_picks(user_id=user_id, session_id=session_id):
            if not pk.points:
                continue
            loc, mats = pk.numpy()
            # the particle centre: the location plus its transform's translation (shifts refined
            # by subtomogram averaging), as copick's full_positions() gives it
            xyz = np.asarray(loc, float) + np.asarray(mats, float)[:, :3, 3]
            zyx = xyz[:, ::-1] / float(voxel_size)
            scores = [1.0 if pt.score is None else float(pt.score) for pt in pk.points]
            p = Picks.from_zyx(zyx, class_name=pk.pickable_object_name, score=scores, source="imported",
                               tomogram=run.name, voxel_size=float(voxel_size))
            p.table[ANGLES] = matrices_to_relion(np.asarray(mats, float)[:, :3, :3])
            parts.append(p)
    out = Picks.concat(parts)
    out.voxel_size = float(voxel_size)
    return out


def write_project_picks(root, picks: Picks, *, user_id: str, session_id: str) -> list[str]:
    """Store ``picks`` in the project, one copick picks file per run and class, replacing
    that user's and session's earlier picks of it. Returns ``run/object`` per file."""
    if not user_id or not session_id:
        raise CryoPickerError("writing to a copick project needs a user id and a session id")
    vs = picks.voxel_size
    if not vs:
        raise CryoPickerError("picks without a voxel size cannot be written to a copick project")
    objects = {o.name for o in root.pickable_objects}
    unknown = sorted(set(picks.class_names) - objects)
    if unknown:
        raise CryoPickerError(f"class(es) {', '.join(unknown)} are not pickable objects of the copick project "
                              f"({', '.join(sorted(objects))}); rename them to the project's objects")
    runs = {r.name: r for r in root.runs}
    missing = sorted(set(picks.tomograms) - set(runs))
    if missing:
        raise CryoPickerError(f"tomogram(s) {', '.join(missing)} are not runs of the copick project")
    written = []
    for name in picks.tomograms:
        run = runs[name]
        # this user's and session's earlier picks of classes that have none now are emptied:
        # the project then holds exactly ``picks`` for them
        for old in run.get_picks(user_id=user_id, session_id=session_id):
            if old.pickable_object_name not in picks.select(tomogram=name).class_names and old.points:
                old.from_numpy(np.zeros((0, 3)))
        for cls in picks.class_names:
            sub = picks.select(class_name=cls, tomogram=name)
            if not len(sub):
                continue
            xyz = sub.zyx[:, ::-1] * float(vs)
            mats = np.tile(np.eye(4), (len(sub), 1, 1))
            if set(ANGLES) <= set(sub.table.columns):
                mats[:, :3, :3] = relion_to_matrices(sub.table[ANGLES].fillna(0).to_numpy(float))
            pk = run.new_picks(cls, session_id, user_id, exist_ok=True)
            pk.from_numpy(xyz, mats, scores=sub.table["score"].to_numpy(float))
            written.append(f"{name}/{cls}")
    return written
