"""Background work: training, picking, filters and label previews off the GUI thread.

The runs (training, picking, filters, label previews, loading a model) are built on
:class:`~.tasks.BackgroundTask`; their results are shown as layers by ``overlays.py``.
Each long job runs in a napari ``thread_worker`` and reports through the core's
:class:`~..core.progress.Progress` protocol. Progress and per-epoch reports are marshalled
to the GUI thread (``superqt.utils.ensure_main_thread``) and shown in napari's activity
dock (a cancellable ``napari.utils.progress``). Stop -> ``Progress.cancel()``; the core
stops at the next batch. Jobs never raise into napari: each ends as a
:class:`Outcome` (ok / cancelled / error) whose message is shown as a notification, and
nothing in the viewer changes unless the job succeeded.

torch is imported only inside the job functions (``core.train`` / ``core.predict``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..core.errors import CryoPickerError
from ..core.progress import Progress
from .messages import notify
from .overlays import CANDIDATE_FLOOR, FIDUCIALS_LAYER, show_fiducials, show_probability, show_suggestions
from .tasks import BackgroundTask, Outcome, _config, _on_main

# What live training keeps (Stop, and Pick while it runs): the mean of its last epochs'
# networks since the picks last changed (core TrainConfig.keep_average)
LIVE_KEPT = "latest (averaged)"

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession

log = logging.getLogger(__name__)

CONTINUOUS_EPOCHS = 100_000  # "until Stop"


# ----------------------------------------------------------------------------- training
class TrainingRun:
    """Train (or fine-tune) the session's model on its picks; one run at a time."""

    epoch = Signal(dict)      # one on_epoch report (GUI thread)
    started = Signal()
    finished = Signal(object)  # Outcome
    suggested = Signal(int, int)  # live suggestions shown: (how many, epoch)
    best = Signal()           # the running training kept a better model (see pick_model)

    def __init__(self, session: PickingSession):
        self.session = session
        self.live = False  # live suggestions: each epoch's network picks the slab in view
        self.continuous = False  # keep training until Stop (learning-rate cycles, no planned end)
        self.live_updates = 0
        self.live_counts: dict[str, int] = {}  # the last live suggestions per class
        self._unfollow: Callable[[], None] | None = None
        self.task = BackgroundTask("Training", session, "train")
        self.task.finished.connect(self._finished)
        self.history: list[dict] = []
        self.fine_tune = False
        self._previous = None  # the session's model when the run started
        self._previous_file = None  # and its file
        self.discarded = None  # a stopped run's model that did not beat the previous one
        self.set_aside = None  # the file of the model a stopped run did not keep (or replaced)
        self.interim = None  # the running training's best model so far (what a Stop would keep)

    @property
    def running(self) -> bool:
        return self.task.running

    def config_values(self) -> dict:
        s = self.session
        values = dict(s.train_settings)
        values["label_mode"] = s.label_mode
        values["diameter"] = s.label_diameter
        if s.label_scale is not None:
            values["label_scale"] = s.label_scale
        values.update(s.train_overrides)
        if self.continuous:
            values.update(continuous=True, epochs=CONTINUOUS_EPOCHS, time_limit=None)
        return values

    def start(self, *, fine_tune: bool = False, project=None, names: list[str] | None = None) -> None:
        """Train on the viewer's tomogram, or on the tomograms ``names`` of ``project``
        (a core Project: each one's picks from its annotation file)."""
        s = self.session
        tomo = s._require_tomogram()
        if self.running:
            raise CryoPickerError("training is already running")
        if project is not None:
            return self._start_project(project, names, fine_tune)
        classes = s.training_classes()
        if not len(classes):
            raise CryoPickerError(
                "no picks yet: choose a class, click a few particles in the tomogram, then train"
            )
        missing = [n for n in s.classes.names if n not in classes]
        if missing:
            notify(f"Class(es) {', '.join(missing)} have no picks and are left out of training")
        init = s.checkpoint if fine_tune else None
        if fine_tune and init is None:
            raise CryoPickerError("there is no model to fine-tune yet; train from scratch first")
        picks = s.training_picks()
        picks = picks.subset(picks.table["class_name"].isin(classes.names).to_numpy()
                              | (picks.table["source"] == "rejected").to_numpy())
        picks = picks.with_tomogram(tomo.name)
        values = self.config_values()
        self.history = []
        self.fine_tune = fine_tune
        self._previous, self._previous_file = s.checkpoint, s.model_path
        self.discarded = self.interim = self.set_aside = None

        def job(progress: Progress):
            from ..core.train import TrainConfig, train_model

            cfg = _config(TrainConfig, values)
            return train_model([tomo], [picks], classes, cfg, init=init, progress=progress,
                               on_epoch=self._epoch_from_worker, on_model=live, refresh=follow,
                               on_best=self._best_from_worker)

        live = self._live_model(tomo, values)
        follow = self._follow_picks(tomo.name)
        try:
            self.task.start(job, self._result)
        except Exception:
            self._unfollow()  # the run never started: stop following the session's edits
            self._unfollow = None
            raise
        self.started.emit()

    def _start_project(self, project, names, fine_tune: bool) -> None:
        s = self.session
        init = s.checkpoint if fine_tune else None
        if fine_tune and init is None:
            raise CryoPickerError("there is no model to fine-tune yet; train from scratch first")
        if not names:
            raise CryoPickerError("tick the tomograms to train on first")
        table, vs, values, level = s.classes, s.voxel_size, self.config_values(), s.level
        self.history, self.fine_tune, self._previous, self.discarded = [], fine_tune, s.checkpoint, None
        self._previous_file, self.interim, self.set_aside = s.model_path, None, None
        live = self._live_model(s.tomogram, values)  # suggestions in the tomogram shown

        def job(progress: Progress):
            from ..core.classes import ClassTable
            from ..core.train import TrainConfig, train_model

            tomos, picks = project.training_set(names, level=level)
            for t in tomos:
                if vs and t.voxel_size and abs(t.voxel_size / vs - 1) > 0.01:
                    raise CryoPickerError(
                        f"{t.name} has {t.voxel_size:.4g} A voxels, the tomogram in the viewer {vs:.4g} A: "
                        "train on tomograms of one voxel size (untick the others)")
            used = set().union(*[set(p.exclude_source("rejected").class_names) for p in picks])
            unknown = sorted(used - set(table.names))
            if unknown:
                raise CryoPickerError(f"class(es) {', '.join(unknown)} have picks in the chosen tomograms but "
                                      "are not in the class table; add them (Classes panel) first")
            classes = ClassTable([c for c in table if c.name in used])
            keep = [p.subset(p.table["class_name"].isin(classes.names).to_numpy()) for p in picks]
            return train_model(tomos, keep, classes, _config(TrainConfig, values), init=init, progress=progress,
                               on_epoch=self._epoch_from_worker, on_model=live, on_best=self._best_from_worker)

        self.task.start(job, self._result)
        self.started.emit()

    def stop(self) -> None:
        self.task.stop()

    def _follow_picks(self, tomo_name: str):
        """The refresh hook of a run on the viewer's tomogram: the user's clicks, deletions
        and answers while it trains reach it at its next epoch. The picks are read on the
        GUI thread after each edit; the training thread only takes the latest copy."""
        s = self.session
        latest = {"version": 0, "seen": 0, "picks": None}

        def changed(*_):
            if s.tomogram is None or s.tomogram_name != tomo_name:
                return  # another tomogram is shown now: its picks are not this run's
            latest["picks"] = s.training_picks().with_tomogram(tomo_name)
            latest["version"] += 1

        s.events.picks.connect(changed)
        self._unfollow = lambda: s.events.picks.disconnect(changed)

        def refresh():
            if latest["version"] == latest["seen"]:
                return None
            latest["seen"] = latest["version"]
            return [latest["picks"]]

        return refresh

    # ------------------------------------------------------------------ live suggestions
    def _live_model(self, tomo, values: dict):
        """The on_model hook of a live run: pick the slab around the slice in view with
        each epoch's network, in the training thread (training waits a second or two)."""
        if not self.live:
            return None
        self.live_updates = 0
        s = self.session
        viewer = s.viewer
        device = values.get("device", "auto")

        def pick(ckpt) -> None:
            from ..core.predict import PredictConfig, predict_picks
            from ..core.tomogram import Tomogram

            z = int(round(viewer.dims.point[-3] / s.scale[0])) if s.tomogram is tomo else tomo.shape[0] // 2
            f = max(1, int(ckpt.binning))
            half = int(max(24, 1.5 * max(ckpt.classes.diameters or [16])))
            z0 = max(0, (z - half) // f * f)
            z1 = min(tomo.shape[0], z0 + 2 * half + f)
            if z1 - z0 < 16 * f:  # a slab the network can tile
                z0, z1 = max(0, min(z0, tomo.shape[0] - 16 * f)), min(tomo.shape[0], max(z1, z0 + 16 * f))
            slab = Tomogram(tomo.data[z0:z1], tomo.voxel_size, tomo.path, tomo.voxel_size_xyz, tomo.name)
            res = predict_picks(slab, ckpt, PredictConfig(device=device, mask_fiducials=False))
            picks = res.picks.copy()
            picks.table["z"] = picks.table["z"] + z0
            _on_main(self._show_live, picks.with_tomogram(tomo.name), ckpt.best_epoch or 0)

        return pick

    def _show_live(self, picks, epoch: int) -> None:
        if self.session.tomogram is None:
            return
        show_suggestions(self.session, picks, epoch)
        self.live_updates += 1
        self.live_counts = {str(k): int(v) for k, v in picks.table["class_name"].value_counts().items()} \
            if len(picks) else {}
        self.suggested.emit(len(picks), int(epoch))

    def _best_from_worker(self, ckpt) -> None:
        _on_main(self._set_interim, ckpt)

    def _set_interim(self, ckpt) -> None:
        if self.running:  # (a late call after the run ended changes nothing)
            self.interim = ckpt
            self.best.emit()

    def pick_model(self):
        """The model *Pick* uses now: while training runs, its best model so far if it
        validates better than the session's model (or there is none yet), so the whole
        tomogram can be picked at any time without stopping; live training's latest model
        (averaged over its last epochs) always, as its suggestions show it (its validation
        score is in-sample: :func:`keeps_stopped`); else the session's model."""
        s = self.session
        if self.running and self.interim is not None and (
                s.checkpoint is None or is_live(self.interim) or validates_better(self.interim, s.checkpoint)):
            return self.interim
        return s.checkpoint

    def _epoch_from_worker(self, info: dict) -> None:
        _on_main(self._epoch, dict(info))

    def _epoch(self, info: dict) -> None:
        self.history.append(info)
        self.epoch.emit(info)

    def _result(self, ckpt) -> None:
        stopped = self.task.progress is not None and self.task.progress.cancelled
        s = self.session
        if stopped and self._previous is not None:
            # the model not kept stays on disk, to load back: no Stop loses a model
            if not keeps_stopped(ckpt, self._previous):
                self.discarded = ckpt
                self.set_aside = s.set_model_aside(ckpt)
                return
            self.set_aside = s.set_model_aside(self._previous, self._previous_file)
        s.set_checkpoint(ckpt)

    def _finished(self, outcome: Outcome) -> None:
        self.interim = None  # the run's result is the session's model now (or was discarded)
        if self._unfollow is not None:
            with contextlib.suppress(Exception):
                self._unfollow()
            self._unfollow = None
        ckpt = self.session.checkpoint
        aside = f" {self.set_aside.name} in {self.set_aside.parent}" if self.set_aside is not None else None
        if outcome.ok and self.discarded is not None:
            new = getattr(self.discarded, "best_score", None)
            old = getattr(ckpt, "best_score", None)
            notify("Training stopped; the previous model is kept: the stopped run's model "
                   + (f"validated at {new:.2f}" if new is not None else "was not validated")
                   + (f", the previous one at {old:.2f}" if old is not None else "")
                   + ". Train longer to replace it"
                   + (f"; the stopped run's model is saved as{aside} (Load model... to use it)." if aside else "."))
        elif outcome.ok:
            best = getattr(ckpt, "best_epoch", None)
            score = getattr(ckpt, "best_score", None)
            newest = is_live(ckpt)  # live: the latest
            extra = f" ({'epoch' if newest else 'best epoch'} {best}" \
                + (f", validation score {score:.2f})" if score is not None else ")") if best is not None else ""
            stopped = self.task.progress is not None and self.task.progress.cancelled
            notify((f"Training stopped; the {LIVE_KEPT if newest else 'best'} model so far is kept" if stopped
                    else "Training finished")
                   + extra
                   + (f"; the previous model is saved as{aside} (Load model... to go back)" if aside and stopped
                      else ""))
        elif outcome.status == "cancelled":
            notify("Training stopped before the first epoch ended; the previous model is unchanged")
        self.finished.emit(outcome)
        self.best.emit()


def validates_better(new, old) -> bool:
    """Does checkpoint ``new`` have a validation score above ``old``'s (or old none)?"""
    a = getattr(new, "best_score", None)
    b = getattr(old, "best_score", None)
    return a is not None and (b is None or a > b)


def is_live(ckpt) -> bool:
    """Was ``ckpt`` trained live (``continuous``: until Stop, on picks that came as it ran)?"""
    return bool((getattr(ckpt, "train_config", None) or {}).get("continuous"))


def keeps_stopped(new, old) -> bool:
    """Does a stopped run's model ``new`` replace the session's model ``old``?

    A planned run cut short: only if it validates better. A live run: always. The user
    stopped it watching its suggestions, and its validation score cannot be weighed
    against another model's: live training trains on its validation slab's picks too
    (``TrainConfig.hold_out``), so its score is in-sample and would win every comparison
    with a model validated on held-out picks. The model not kept is set aside on disk."""
    return is_live(new) or validates_better(new, old)


# ----------------------------------------------------------------------------- picking
class PickingRun:
    """Run the session's model over its tomogram and show the picks."""

    started = Signal()
    finished = Signal(object)

    def __init__(self, session: PickingSession):
        self.session = session
        self.task = BackgroundTask("Picking", session, "predict")
        self.task.finished.connect(self._finished)
        self.show_probability = False

    @property
    def running(self) -> bool:
        return self.task.running

    def start(self, *, probability: bool = False, device: str | None = None, model=None) -> None:
        """Pick with ``model`` (default: the session's model)."""
        s = self.session
        tomo = s._require_tomogram()
        ckpt = model if model is not None else s.checkpoint
        if ckpt is None:
            raise CryoPickerError("no model yet: train one (Training panel) or load a saved model")
        if self.running:
            raise CryoPickerError("picking is already running")
        values = dict(s.predict_overrides)
        values["device"] = device or values.get("device") or s.train_settings.get("device", "auto")
        values.setdefault("score_floor", CANDIDATE_FLOOR)  # the sliders can show weaker picks too
        self.show_probability = probability

        def job(progress: Progress):
            from ..core.predict import PredictConfig, predict_picks

            cfg = _config(PredictConfig, values)
            return predict_picks(tomo, ckpt, cfg, progress=progress)

        self._ckpt = ckpt
        self.task.start(job, self._result)
        self.started.emit()

    def stop(self) -> None:
        self.task.stop()

    def _result(self, result) -> None:
        s = self.session
        picks = result.picks.with_tomogram(s.tomogram_name)
        if picks.voxel_size is None:
            picks.voxel_size = s.voxel_size
        for name, t in (getattr(result, "thresholds", None) or {}).items():
            s.thresholds[name] = float(t)  # each slider starts at the model's threshold
        s.set_predictions(picks, checkpoint_classes=self._ckpt.classes)
        if self.show_probability and getattr(result, "score_map", None) is not None:
            show_probability(s, result.score_map, self._ckpt.classes)
        fid = getattr(result, "fiducials", None)
        if fid is not None and (len(fid) or FIDUCIALS_LAYER in s.viewer.layers):
            show_fiducials(s, fid)
        n = len(picks)
        per = ", ".join(f"{k}: {v}" for k, v in picks.counts().items())
        known = f"; {s.last_skipped} of them are already in your picks or rejected" if s.last_skipped else ""
        notify(f"Picked {n} particle(s)" + (f" ({per})" if per else "") + known)

    def _finished(self, outcome: Outcome) -> None:
        if outcome.status == "cancelled":
            notify("Picking stopped; the earlier picks are unchanged")
        self.finished.emit(outcome)


# ----------------------------------------------------------------------------- filters / labels
class VolumeJob:
    """Compute a derived volume (filter, weak labels) in a thread and show it as a layer."""

    finished = Signal(object)

    def __init__(self, session: PickingSession, title: str, busy_name: str):
        self.session = session
        self.task = BackgroundTask(title, session, busy_name)
        self.task.finished.connect(self.finished.emit)

    @property
    def running(self) -> bool:
        return self.task.running

    def start(self, compute: Callable[[Progress], np.ndarray], show: Callable[[np.ndarray], Any]) -> None:
        """``compute(progress)`` in the thread (it may report progress and stop between
        steps), then ``show(result)`` in the GUI thread."""
        def job(progress: Progress):
            progress.update(0, 1, "computing")
            out = compute(progress)
            progress.check()
            return out

        self.task.start(job, show, total=1)

    def stop(self) -> None:
        self.task.stop()


class ModelLoad:
    """Load a saved model in a thread (importing torch and reading weights takes a while)."""

    finished = Signal(object)

    def __init__(self, session: PickingSession):
        self.session = session
        self.task = BackgroundTask("Loading model", session, "model")
        self.task.finished.connect(self.finished.emit)

    @property
    def running(self) -> bool:
        return self.task.running

    def start(self, path) -> None:
        from pathlib import Path

        path = Path(path)

        def job(progress: Progress):
            from ..core.model import load_checkpoint

            return load_checkpoint(path)

        def done(ckpt):
            self.session.set_checkpoint(ckpt, path)
            names = ", ".join(ckpt.classes.names)
            notify(f"Loaded {path.name}: a model for {names}")

        self.task.start(job, done)

    def stop(self) -> None:
        self.task.stop()


def runs_for(session: PickingSession) -> dict[str, Any]:
    """The shared background runs of a session (one training, one picking, ...)."""
    runs = getattr(session, "_runs", None)
    if runs is None:
        runs = {
            "train": TrainingRun(session),
            "predict": PickingRun(session),
            "filter": VolumeJob(session, "Filter", "filter"),
            "labels": VolumeJob(session, "Weak labels", "labels"),
            "model": ModelLoad(session),
        }
        session._runs = runs
    return runs
