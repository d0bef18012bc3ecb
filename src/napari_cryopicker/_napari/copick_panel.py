"""A copick project in the viewer (:class:`CopickPanel`, behind the Tomogram and Export
panels): its runs as rows of the Project panel, a run's tomogram opened with a user's
picks, and the session's picks (or the ticked runs') stored back in the project."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.errors import CryoPickerError
from .exporter import Exporter

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession


class CopickPanel:
    """A copick project in the viewer (through the copick library): open a run's tomogram
    with a user's picks, and store the session's picks back in the project."""

    PLUGIN = "napari-cryopicker"

    def __init__(self, session: PickingSession):
        self.session = session
        self.config: Path | None = None
        self.root = None
        self._inputs: dict = {}
        self.types: list[str] = []       # the project's tomogram types (wbp, denoised, ...)
        self.spacings: list[float] = []  # and voxel spacings (A)
        self.tomo_type: str | None = None
        self.voxel_size: float | None = None

    def load(self, config: str | os.PathLike) -> list[str]:
        """Open the project; returns its run names (those with a tomogram first). Where runs
        have several tomogram types, ``wbp`` (else the first) is chosen; where a type has
        several voxel spacings, the finest: :meth:`choose` another."""
        from ..core.copick_project import open_project, tomogram_types, voxel_spacings

        root = open_project(config)
        self.config, self.root = Path(config), root
        self.types, self.spacings = tomogram_types(root), voxel_spacings(root)
        tomo_type = ("wbp" if "wbp" in self.types else self.types[0]) if len(self.types) > 1 else None
        return self.choose(tomo_type, self.spacings[0] if len(self.spacings) > 1 else None)

    def choose(self, tomo_type: str | None = None, voxel_size: float | None = None) -> list[str]:
        """Use the tomograms of one type and voxel spacing (None: any); returns the runs."""
        from ..core.copick_project import run_tomograms

        runs = run_tomograms(self._require(), tomo_type or None, voxel_size or None)
        self.tomo_type, self.voxel_size = tomo_type or None, voxel_size or None
        self._inputs = {r.run: r for r in runs}
        self._to_project([r for r in runs if r.path is not None])
        return sorted(self._inputs, key=lambda n: (self._inputs[n].problem is not None, n))

    def _to_project(self, inputs) -> None:
        """The runs' tomograms become rows of the Project panel, named by their run."""
        from .project import project_for

        ctl = project_for(self.session)
        new = ctl.project.add([str(i.path) for i in inputs])
        runs = {os.path.abspath(i.path): i.run for i in inputs}
        taken = set(ctl.project.names)
        for row in new:
            run = runs.get(os.path.abspath(row.path))
            if run and run != row.name and run not in taken:
                taken.discard(row.name)
                row.name = run
                taken.add(run)
        if new:
            ctl._keep()
            ctl.changed.emit()

    def runs(self) -> list[str]:
        return sorted(self._inputs)

    def _require(self):
        if self.root is None:
            raise CryoPickerError("open a copick project first (its config .json)")
        return self.root

    def open_run(self, run: str, *, user_id: str | None = None, session_id: str | None = None) -> int:
        """Open the run's tomogram (OME-Zarr or MRC) as the session tomogram, the project's
        particle objects as classes, and the picks of ``user_id``/``session_id`` (None:
        nobody's) as training picks. Returns how many picks were added."""
        from ..core.copick_project import project_classes, read_project_picks

        root = self._require()
        inp = self._inputs.get(run)
        if inp is None:
            raise CryoPickerError(f"{self.config}: no run {run!r}")
        if inp.problem:
            raise CryoPickerError(f"run {run}: {inp.problem}")
        s = self.session
        layers = s.viewer.open(str(inp.path), plugin=self.PLUGIN)
        image = next((lyr for lyr in layers if lyr.__class__.__name__ == "Image"), None)
        if image is None:
            raise CryoPickerError(f"{inp.path}: could not be opened as a tomogram")
        s.set_tomogram(image)
        vs = s.voxel_size or 1.0
        s.ensure_classes(project_classes(root, vs))
        if not user_id and not session_id:
            return 0
        picks = read_project_picks(root, vs, user_id=user_id or None, session_id=session_id or None, runs=[run])
        if not len(picks):
            return 0
        keep = np.isin(picks.table["class_name"].to_numpy(), s.classes.names)
        # opened before: the autosave brought these picks back already; add only new ones
        known = s.annotations(include_rejected=True)
        for name in set(picks.class_names) & set(known.class_names):
            rows = np.flatnonzero(picks.table["class_name"].to_numpy() == name)
            ref = known.select(class_name=name).zyx
            d = np.min(np.linalg.norm(picks.zyx[rows][:, None] - ref[None], axis=2), axis=1)
            keep[rows[d <= 1.0]] = False
        picks = picks.subset(keep)
        return s.import_picks(picks.with_tomogram(s.tomogram_name)) if len(picks) else 0

    def save(self, *, user_id: str, session_id: str, what: str = "annotations") -> list[str]:
        """Store this tomogram's picks (``what`` as in :meth:`Exporter.collect`) in the
        project as ``user_id``/``session_id``, where copick and napari-copick read them."""
        from ..core.copick_project import write_project_picks

        root = self._require()
        s = self.session
        tomo = s._require_tomogram()
        if tomo.name not in self._inputs:
            raise CryoPickerError(f"the tomogram {tomo.name!r} is not a run of {self.config}")
        picks = Exporter(s).collect(what).with_tomogram(tomo.name)
        if not len(picks):
            raise CryoPickerError("there are no picks to store")
        picks.voxel_size = s.voxel_size
        return write_project_picks(root, picks, user_id=user_id, session_id=session_id)

    def save_ticked(self, *, user_id: str, session_id: str, what: str = "annotations") -> list[str]:
        """Store the picks of every ticked run in the Project panel (from their saved
        annotations) in the project as ``user_id``/``session_id``."""
        from ..core.copick_project import write_project_picks
        from ..core.picks import Picks
        from .project import project_for

        root = self._require()
        ctl = project_for(self.session)
        names = [n for n in ctl.ticked() if n in self._inputs]
        if not names:
            raise CryoPickerError(f"tick runs of {self.config.name} in the Project panel first")
        parts = [picks for picks, _payload in ctl.collect(names, what=what).values() if len(picks)]
        if not parts:
            raise CryoPickerError(f"the ticked runs have no {what} to store")
        vs = parts[0].voxel_size  # each run's picks are in its own voxels; copick keeps Angstrom
        picks = Picks.concat([p.rescaled(vs) if p.voxel_size and vs and p.voxel_size != vs else p for p in parts])
        picks.voxel_size = vs
        return write_project_picks(root, picks, user_id=user_id, session_id=session_id)
