"""copick projects through the copick library (the ``copick`` extra): pickable objects as
classes, a user's and session's picks read as canonical picks, and picks written back with
a user and session id, where copick and napari-copick see them at once
(``ExperimentRuns/<run>/Picks/<user>_<session>_<object>.json``).

Positions: copick keeps Angstrom from voxel 0 (x_A = i_x * voxel size); canonical picks
are voxels of the tomogram at ``voxel_size``.
"""

from __future__ import annotations

import os
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
