"""The napari side of a project (many tomograms): switching the viewer between them,
training on the ticked ones and picking them all in the background.

The tomograms, their ticks and their counts are the core's :class:`~..core.project.Project`;
each tomogram's picks live in its own annotation file, which the session keeps current
for the one in the viewer. This module binds the two; the Project panel is its view.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from psygnal import Signal

from ..core.errors import CryoPickerError
from ..core.progress import Progress
from ..core.project import PROJECT_SUFFIX, Project
from .convert import cp_meta
from .messages import notify
from .tasks import BackgroundTask, Outcome
from .workers import runs_for

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession

PLUGIN = "napari-cryopicker"


def last_project_path() -> Path:
    """Where the project without a file of its own is kept between napari sessions."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-cryopicker"
    return base / f"last{PROJECT_SUFFIX}"


class ProjectController:
    """The session's project: one per viewer, shared by the panels (``project_for``)."""

    changed = Signal()

    def __init__(self, session: PickingSession):
        self.session = session
        self.project = Project()
        self.pick_task = BackgroundTask("Picking tomograms", session, "predict")
        self.pick_task.finished.connect(self._picked)
        self._picking: list[str] = []
        session.events.tomogram.connect(self._on_tomogram)
        session.events.picks.connect(self._on_picks)
        self._on_tomogram()

    # ------------------------------------------------------------------ membership
    def _on_tomogram(self, *_) -> None:
        """The tomogram in the viewer is always a row of the project."""
        t = self.session.tomogram
        if t is not None and t.path is not None and self.project.find(t.path) is None:
            with contextlib.suppress(CryoPickerError):
                self.project.add(t.path)
                if self.project.path is not None:
                    self._keep()
                # (not into the per-user last project: a fresh napari opening one tomogram
                # would overwrite the job that Reopen last is there to bring back)
        self.changed.emit()

    def _on_picks(self, *_) -> None:
        self.changed.emit()

    def add(self, specs) -> int:
        n = len(self.project.add(specs))
        self._keep()
        self.changed.emit()
        return n

    def remove(self, name: str) -> None:
        row = self.project.get(name)
        t = self.session.tomogram
        if t is not None and t.path is not None and os.path.abspath(t.path) == os.path.abspath(row.path):
            raise CryoPickerError(f"{name} is the tomogram in the viewer; open another one before removing it")
        self.project.remove(name)
        self._keep()
        self.changed.emit()

    def set_use(self, name: str, use: bool) -> None:
        self.project.get(name).use = bool(use)
        self._keep()
        self.changed.emit()

    def open(self, path) -> int:
        self.project = Project.load(path)
        self._on_tomogram()
        return len(self.project)

    def save(self, path=None) -> Path:
        return self.project.save(path)

    def reopen_last(self) -> int:
        p = last_project_path()
        if not p.exists():
            raise CryoPickerError("there is no earlier project to reopen")
        last = Project.load(p)
        self.project.add([t.path for t in last if t.path.exists()])
        for t in last:
            row = self.project.find(t.path)
            if row is not None:
                row.use = t.use
        self._keep()
        self.changed.emit()
        return len(self.project)

    def _keep(self) -> None:
        """Save the list on every change: to the project file, or else the per-user one."""
        try:
            if self.project.path is not None:
                self.project.save()
            elif len(self.project):
                Project(self.project.tomograms).save(last_project_path())
        except CryoPickerError as e:
            notify(str(e), "warning")

    # ------------------------------------------------------------------ table
    def current_name(self) -> str | None:
        t = self.session.tomogram
        row = self.project.find(t.path) if t is not None and t.path is not None else None
        return row.name if row is not None else None

    def table(self) -> pd.DataFrame:
        """One row per tomogram: use, tomogram, picks, predicted, rejected, problem, current,
        and a per-class summary for the tooltip (from the annotation files: the session
        writes the viewer's tomogram's on every edit)."""
        out = self.project.totals()
        out.insert(0, "use", [t.use for t in self.project])
        cur = self.current_name()
        out["current"] = out["tomogram"] == cur
        counts = self.project.counts()
        detail = {}
        for name, g in counts.groupby("tomogram"):
            detail[name] = "; ".join(f"{r.class_name}: {r.picks} picks, {r.predicted} predicted, {r.rejected} rejected"
                                     for r in g.itertuples() if r.class_name)
        out["detail"] = [detail.get(n, "no annotations yet") for n in out["tomogram"]]
        return out

    def session_flush(self) -> None:
        """Write the viewer's tomogram's annotations so the counts and runs see its latest edits."""
        s = self.session
        if s.tomogram is not None and s.autosave_path is not None and s.autosave_enabled:
            s._autosave()

    # ------------------------------------------------------------------ switching
    def switch_to(self, name: str):
        """Show tomogram ``name`` in the viewer: the previous one's annotations are saved and
        its layers leave; this one's picks, predictions and thresholds come back."""
        row = self.project.get(name)
        s = self.session
        if s.is_busy():
            raise CryoPickerError("wait for the running job to finish (or stop it) before switching tomograms")
        if name == self.current_name():
            return s.image_layer
        if not row.path.exists():
            raise CryoPickerError(f"{row.path}: no such tomogram")
        viewer = s.viewer
        old = s.image_layer
        old_name = s.tomogram_name
        with s._muted():
            layers = viewer.open(str(row.path), plugin=PLUGIN)
        new = next((ly for ly in layers if ly in s.image_layers()), None)
        if new is None:
            raise CryoPickerError(f"{row.path}: napari did not open it as a tomogram")
        s.set_tomogram(new)
        for ly in list(viewer.layers):  # the previous tomogram and what was derived from it
            derived = cp_meta(ly).get("tomogram") == old_name and cp_meta(ly).get("kind") in (
                "probability", "filtered", "fiducials", "suggestions")
            if ly is old or derived:
                viewer.layers.remove(ly)
        viewer.layers.selection.active = new
        if s.active_class is not None and s.active_class in s.classes:
            s.set_active_class(s.active_class)
        self.changed.emit()
        return new

    # ------------------------------------------------------------------ training
    def ticked(self) -> list[str]:
        return [t.name for t in self.project if t.use]

    def train(self, names: list[str] | None = None, *, fine_tune: bool = False) -> None:
        """Train on the ticked tomograms (or ``names``) that have picks."""
        self.session_flush()
        runs_for(self.session)["train"].start(fine_tune=fine_tune, project=self.project,
                                              names=names if names is not None else self.ticked())

    # ------------------------------------------------------------------ export
    def collect(self, names: list[str] | None = None, *, what: str = "annotations") -> dict[str, tuple]:
        """(picks, annotation payload) of every ticked tomogram (or ``names``), from its saved
        file: ``annotations`` (manual, accepted, imported), ``predictions`` (those at or
        above each class's threshold) or ``both``; picks named by the tomogram's row."""
        from ..core.annotations import ANNOTATION_SOURCES, payload_picks, payload_predictions
        from ..core.picks import Picks

        self.session_flush()
        rows = [self.project.get(n) for n in (names if names is not None else self.ticked())]
        if not rows:
            raise CryoPickerError("tick the tomograms to export first")
        out = {}
        for row in rows:
            payload = row.payload() or {}
            parts = []
            if what in ("annotations", "both"):
                p = payload_picks(payload)
                parts.append(p.subset(p.table["source"].isin(ANNOTATION_SOURCES).to_numpy()))
            if what in ("predictions", "both"):
                p = payload_predictions(payload)
                th = payload.get("thresholds") or {}
                keep = p.table["score"].to_numpy() >= p.table["class_name"].map(lambda c: th.get(c, 0.0)).to_numpy()
                parts.append(p.subset(keep))
            picks = Picks.concat(parts).with_tomogram(row.name) if parts else Picks()
            picks.voxel_size = picks.voxel_size or payload.get("voxel_size")
            out[row.name] = (picks, payload)
        return out

    def export(self, formats: list[str], folder, *, what: str = "annotations", per_class: bool = False,
               binning: float = 1.0, names: list[str] | None = None) -> list[Path]:
        """Write the picks of every ticked tomogram (or ``names``), one file per tomogram
        and format (copick's in a folder per run), as the Export panel does for one:
        ``annotations`` (manual, accepted, imported), ``predictions`` (those at or above
        each class's threshold) or ``both``."""
        from ..core.formats import write_picks
        from .exporter import Exporter

        if not formats:
            raise CryoPickerError("choose at least one format")
        folder = Path(folder)
        written: list[Path] = []
        collected = self.collect(names, what=what)
        empty = [n for n, (picks, _) in collected.items() if not len(picks)]
        for name, (picks, payload) in collected.items():
            if not len(picks):
                continue
            groups = [(c, picks.select(class_name=c)) for c in picks.class_names] if per_class else [(None, picks)]
            for fmt in formats:
                where = folder / name if fmt == "copick" else folder
                try:
                    where.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise CryoPickerError(f"{where}: cannot create the export folder ({e.strerror or e})") from None
                for cls, sub in groups:
                    path = where / Exporter.filename(fmt, name, cls)
                    written.extend(Path(q) for q in write_picks(
                        sub, path, fmt, voxel_size=sub.voxel_size, binning=binning,
                        tomogram_shape=tuple(payload.get("shape") or ()) or None, tomogram=name))
        if not written:
            raise CryoPickerError(f"the ticked tomograms have no {what} to export")
        if empty:
            notify(f"Nothing to export for {', '.join(empty)}")
        return written

    # ------------------------------------------------------------------ picking
    @property
    def picking(self) -> bool:
        return self.pick_task.running

    def pick(self, names: list[str] | None = None, device: str | None = None) -> None:
        """Pick the ticked tomograms (or ``names``) with the session's model in the
        background; each one's picks land in its annotation file, the viewer's on screen."""
        s = self.session
        ckpt = s.checkpoint
        if ckpt is None:
            raise CryoPickerError("no model yet: train one (Training panel) or load a saved model")
        names = names if names is not None else self.ticked()
        if not names:
            raise CryoPickerError("tick the tomograms to pick first")
        self.session_flush()
        rows = [self.project.get(n) for n in names]
        current = self.current_name()
        values = dict(s.predict_overrides)
        values["device"] = device or values.get("device") or s.train_settings.get("device", "auto")
        from .overlays import CANDIDATE_FLOOR
        from .tasks import _config

        values.setdefault("score_floor", CANDIDATE_FLOOR)
        live, level = s.tomogram, s.level
        model = str(s.model_path) if s.model_path is not None else None

        def job(progress: Progress):
            from ..core.annotations import store_predictions
            from ..core.predict import PredictConfig, predict_picks
            from ..core.tomogram import open_tomogram_near

            cfg = _config(PredictConfig, values)
            done, shown = [], None
            for i, row in enumerate(rows):
                progress.check()
                tomo = live if row.name == current else open_tomogram_near(row.path, level)
                sub = Progress(callback=lambda d, t, m, i=i, n=row.name: progress.update(
                    int(1000 * (i + (d / t if t else 0))), 1000 * len(rows), f"{n}: {m}"),
                    cancel_event=progress.cancel_event)
                res = predict_picks(tomo, ckpt, cfg, progress=sub)
                picks = res.picks.with_tomogram(tomo.name)
                if row.name == current:
                    shown = (tomo, picks, res.thresholds, ckpt)  # the viewer's: set on the GUI thread
                else:
                    store_predictions(tomo, picks, ckpt.classes, res.thresholds, model=model)
                done.append((row.name, len(picks)))
            return done, shown

        self._picking = names
        self.pick_task.start(job, self._result)

    def stop(self) -> None:
        self.pick_task.stop()

    def _result(self, value) -> None:
        done, shown = value
        s = self.session
        if shown is not None:
            tomo, picks, thresholds, ckpt = shown
            if s.tomogram is not None and s.tomogram.name == tomo.name:
                for name, t in (thresholds or {}).items():
                    s.thresholds[name] = float(t)
                s.set_predictions(picks, checkpoint_classes=ckpt.classes)
            else:  # another tomogram was opened meanwhile: its picks go to its annotation file
                from ..core.annotations import store_predictions

                try:
                    store_predictions(tomo, picks, ckpt.classes, thresholds)
                except CryoPickerError as e:
                    notify(str(e), "warning")
        notify(f"Picked {len(done)} tomogram(s): " + ", ".join(f"{n} {k}" for n, k in done))

    def _picked(self, outcome: Outcome) -> None:
        if outcome.status == "cancelled":
            notify("Picking the tomograms stopped; those finished keep their new picks, the others their old ones")
        self.changed.emit()


def project_for(session: PickingSession) -> ProjectController:
    ctl = getattr(session, "_project", None)
    if ctl is None:
        ctl = ProjectController(session)
        session._project = ctl
    return ctl

