"""Background work: training, picking, filters and label previews off the GUI thread.

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
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from ..core.errors import Cancelled, CryoPickerError
from ..core.progress import Progress
from .convert import META
from .messages import notify

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- outcome
@dataclass
class Outcome:
    status: str  # "ok" | "cancelled" | "error"
    value: Any = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def readable_error(e: BaseException) -> str:
    """A message for a notification: the core's own words, or the gist of anything else."""
    if isinstance(e, CryoPickerError):
        return str(e)
    if isinstance(e, MemoryError):
        return "out of memory; try a smaller tomogram, a smaller batch or patch size, or the GPU"
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "out of memory" in text.lower():
        return "the GPU ran out of memory; lower the batch or patch size, or use the CPU"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def guarded(job: Callable[..., Any], *args, **kwargs) -> Outcome:
    """Run ``job`` and turn every exception into an :class:`Outcome` (worker thread)."""
    try:
        return Outcome("ok", job(*args, **kwargs))
    except Cancelled as e:
        return Outcome("cancelled", None, str(e) or "cancelled")
    except Exception as e:
        log.debug("background job failed:\n%s", traceback.format_exc())
        return Outcome("error", None, readable_error(e))


def _on_main(fn: Callable, *args) -> None:
    """Call ``fn(*args)`` on the GUI thread (directly if already there)."""
    from superqt.utils import ensure_main_thread

    ensure_main_thread(fn)(*args)


# ----------------------------------------------------------------------------- task
REPORT_INTERVAL = 1.0  # seconds between progress updates in the GUI
CONTINUOUS_EPOCHS = 100_000  # "until Stop"
BUSY_ANIMATION_SPEED = 10  # percent of normal speed for animated "busy" labels


def calm_busy_animations() -> int:
    """Slow napari's animated "in progress" indicator (a QMovie in the status bar) to a
    tenth of its speed; called when one of our jobs starts, and it stays slow. Every frame
    repaints the window; with a software OpenGL (a VNC session or remote X on a cluster
    node, Xvfb) napari then composites the whole window each time: measured, the indicator's 27 frames/s took the
    GUI thread and llvmpipe ~1.9 of 2 cores and made training 3-5x slower. Only public Qt
    calls; returns how many animations were slowed."""
    from qtpy.QtWidgets import QApplication, QLabel

    app = QApplication.instance()
    n = 0
    if app is None:
        return 0
    for top in app.topLevelWidgets():
        for label in top.findChildren(QLabel):
            movie = label.movie()
            if movie is not None and movie.speed() > BUSY_ANIMATION_SPEED:
                movie.setSpeed(BUSY_ANIMATION_SPEED)
                n += 1
    return n


class BackgroundTask:
    """One cancellable background job with a progress bar in napari's activity dock."""

    started = Signal()
    finished = Signal(object)  # Outcome

    def __init__(self, title: str, session: PickingSession | None = None, busy_name: str | None = None):
        self.title = title
        self.session = session
        self.busy_name = busy_name
        self.progress: Progress | None = None
        self.worker = None
        self._pbar = None
        self._last_report = 0.0
        self.last_outcome: Outcome | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, job: Callable[[Progress], Any], on_result: Callable[[Any], None] | None = None,
              *, total: int = 0) -> None:
        """Run ``job(progress)`` in a thread; ``on_result(value)`` on success (GUI thread)."""
        from napari.qt.threading import create_worker

        if self.running:
            raise CryoPickerError(f"{self.title} is already running; stop it first")
        self.progress = Progress(callback=self._report)
        self._pbar = _make_pbar(self.title, total, self.stop)
        calm_busy_animations()
        self._on_result = on_result
        self.worker = create_worker(guarded, job, self.progress, _start_thread=False)
        self.worker.returned.connect(self._returned)
        self.worker.errored.connect(self._errored)  # only if guarded itself failed
        if self.session is not None and self.busy_name:
            self.session.set_busy(self.busy_name, True)
        self.worker.start()
        self.started.emit()

    def stop(self) -> None:
        """Ask the job to stop at its next check (training keeps the best model so far)."""
        if self.progress is not None:
            self.progress.cancel()
            if self._pbar is not None:
                self._pbar.set_description(f"{self.title}: stopping...")

    # worker thread
    def _report(self, done: int, total: int, message: str) -> None:
        now = time.monotonic()
        # at most once a second: each update repaints the window, and with a software
        # OpenGL (no GPU, Xvfb) napari's main thread then composites the whole window,
        # which at 10 updates/s took most of a 2-core CPU away from training
        if done < total and now - self._last_report < REPORT_INTERVAL:
            return
        self._last_report = now
        _on_main(self._show_progress, done, total, message)

    # GUI thread
    def _show_progress(self, done: int, total: int, message: str) -> None:
        pbar = self._pbar
        if pbar is None:
            return
        if total and pbar.total != total:
            pbar.total = total
        if done != pbar.n:
            pbar.update(done - pbar.n)
        desc = f"{self.title}: {message}" if message else self.title
        if self.progress is not None and self.progress.cancelled:
            desc = f"{self.title}: stopping..."
        if desc != pbar.desc:
            pbar.set_description(desc)

    def _returned(self, outcome: Outcome) -> None:
        self._finish(outcome)

    def _errored(self, exc: BaseException) -> None:  # pragma: no cover - guarded catches all
        self._finish(Outcome("error", None, readable_error(exc)))

    def _finish(self, outcome: Outcome) -> None:
        self.worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        if self.session is not None and self.busy_name:
            self.session.set_busy(self.busy_name, False)
        if outcome.ok and self._on_result is not None:
            try:
                self._on_result(outcome.value)
            except Exception as e:  # showing a result must not crash the GUI
                log.debug("showing result failed:\n%s", traceback.format_exc())
                outcome = Outcome("error", None, readable_error(e))
        if outcome.status == "error":
            notify(f"{self.title} failed: {outcome.message}", "error")
        self.last_outcome = outcome
        self.finished.emit(outcome)


def _make_pbar(title: str, total: int, on_cancel: Callable[[], None]):
    from napari.utils import cancelable_progress

    class _TaskProgress(cancelable_progress):
        def cancel(self) -> None:  # the activity dock's cancel button
            super().cancel()
            on_cancel()

    return _TaskProgress(total=total, desc=title)


def _config(cls, values: dict):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names and v is not None})


# ----------------------------------------------------------------------------- training
class TrainingRun:
    """Train (or fine-tune) the session's model on its picks; one run at a time."""

    epoch = Signal(dict)      # one on_epoch report (GUI thread)
    started = Signal()
    finished = Signal(object)  # Outcome
    suggested = Signal(int, int)  # live suggestions shown: (how many, epoch)

    def __init__(self, session: PickingSession):
        self.session = session
        self.live = False  # live suggestions: each epoch's network picks the slab in view
        self.continuous = False  # keep training until Stop (learning-rate cycles, no planned end)
        self.live_updates = 0
        self._unfollow: Callable[[], None] | None = None
        self.task = BackgroundTask("Training", session, "train")
        self.task.finished.connect(self._finished)
        self.history: list[dict] = []
        self.fine_tune = False
        self._previous = None  # the session's model when the run started
        self.discarded = None  # a stopped run's model that did not beat the previous one

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
        self._previous = s.checkpoint
        self.discarded = None

        def job(progress: Progress):
            from ..core.train import TrainConfig, train_model

            cfg = _config(TrainConfig, values)
            return train_model([tomo], [picks], classes, cfg, init=init, progress=progress,
                               on_epoch=self._epoch_from_worker, on_model=live, refresh=follow)

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
                               on_epoch=self._epoch_from_worker, on_model=live)

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
        self.suggested.emit(len(picks), int(epoch))

    def _epoch_from_worker(self, info: dict) -> None:
        _on_main(self._epoch, dict(info))

    def _epoch(self, info: dict) -> None:
        self.history.append(info)
        self.epoch.emit(info)

    def _result(self, ckpt) -> None:
        stopped = self.task.progress is not None and self.task.progress.cancelled
        if stopped and self._previous is not None and not validates_better(ckpt, self._previous):
            self.discarded = ckpt  # a run cut short keeps the previous model unless it beats it
            return
        self.session.set_checkpoint(ckpt)

    def _finished(self, outcome: Outcome) -> None:
        if self._unfollow is not None:
            with contextlib.suppress(Exception):
                self._unfollow()
            self._unfollow = None
        ckpt = self.session.checkpoint
        if outcome.ok and self.discarded is not None:
            new = getattr(self.discarded, "best_score", None)
            old = getattr(ckpt, "best_score", None)
            notify("Training stopped; the previous model is kept: the stopped run's model "
                   + (f"validated at {new:.2f}" if new is not None else "was not validated")
                   + (f", the previous one at {old:.2f}" if old is not None else "")
                   + ". Train longer to replace it.")
        elif outcome.ok:
            best = getattr(ckpt, "best_epoch", None)
            score = getattr(ckpt, "best_score", None)
            extra = f" (best epoch {best}" + (f", validation score {score:.2f})" if score is not None else ")") \
                if best is not None else ""
            stopped = self.task.progress is not None and self.task.progress.cancelled
            notify(("Training stopped; the best model so far is kept" if stopped else "Training finished")
                   + extra)
        elif outcome.status == "cancelled":
            notify("Training stopped before the first epoch ended; the previous model is unchanged")
        self.finished.emit(outcome)


def validates_better(new, old) -> bool:
    """Does checkpoint ``new`` have a validation score above ``old``'s (or old none)?"""
    a = getattr(new, "best_score", None)
    b = getattr(old, "best_score", None)
    return a is not None and (b is None or a > b)


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

    def start(self, *, probability: bool = False, device: str | None = None) -> None:
        s = self.session
        tomo = s._require_tomogram()
        ckpt = s.checkpoint
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


FIDUCIALS_LAYER = "gold fiducials"
SUGGESTIONS = "suggestions: "


def show_suggestions(session: PickingSession, picks, epoch: int) -> list:
    """Live suggestions: one Points layer per class (a hollow diamond in the class colour,
    sized to the particle), replaced at each epoch; not picks, never saved or trained on."""
    viewer = session.viewer
    out = []
    for c in session.classes:
        sub = picks.select(class_name=c.name)
        name = SUGGESTIONS + c.name
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = sub.zyx
            layer.features = {"score": sub.table["score"].to_numpy()}
            layer.metadata[META]["epoch"] = int(epoch)
        elif len(sub):
            layer = viewer.add_points(
                sub.zyx, name=name, size=c.diameter, **session.layer_kwargs(), symbol="diamond",
                face_color="transparent", border_color=c.colour, border_width=0.08, border_width_is_relative=True,
                projection_mode="rescale_spherical", opacity=0.8, features={"score": sub.table["score"].to_numpy()},
                metadata={META: {"kind": "suggestions", "tomogram": session.tomogram_name, "epoch": int(epoch)}},
            )
        else:
            continue
        out.append(layer)
    if session.active_class is not None and session.active_class in session.classes:
        session.set_active_class(session.active_class)  # clicks keep going to the picks
    return out


def show_fiducials(session: PickingSession, fiducials):
    """The gold beads picking left out, as a Points layer of their masked extent."""
    viewer = session.viewer
    zyx = np.asarray(fiducials.zyx, float).reshape(-1, 3)
    size = 2 * (2.0 * np.asarray(fiducials.radius, float) + 1.0) if len(zyx) else 10.0
    if FIDUCIALS_LAYER in viewer.layers:
        layer = viewer.layers[FIDUCIALS_LAYER]
        layer.data = zyx
        layer.size = size
        return layer
    layer = viewer.add_points(
        zyx, name=FIDUCIALS_LAYER, size=size, **session.layer_kwargs(), face_color="transparent",
        border_color="#ffd700", border_width=0.05, border_width_is_relative=True, symbol="disc",
        projection_mode="rescale_spherical", opacity=0.7,
        metadata={META: {"kind": "fiducials", "tomogram": session.tomogram_name}},
    )
    if session.active_class is not None:  # clicks keep going to the picks, not to this layer
        session.set_active_class(session.active_class)
    return layer


#: Picking keeps candidates down to this score; the sliders start at the model's thresholds.
CANDIDATE_FLOOR = 0.05


def show_probability(session: PickingSession, score_map, classes) -> list:
    """One Image layer per class ("probability: <class>"), replacing earlier ones: the
    class's probability where it is the arg-max class (what MP-NMS picks from), 0 elsewhere.

    Lazy (dask, computed per displayed slice) over the :class:`~..core.predict.ScoreMap`
    that picking keeps anyway, on the network's working grid (scaled and shifted onto the
    tomogram): no copy of the volume, one byte per working voxel."""
    import dask.array as da

    viewer = session.viewer
    lab, conf = score_map.label, score_map.confidence
    chunks = (min(8, lab.shape[0]), *lab.shape[1:])
    lab_d = da.from_array(lab, chunks=chunks, asarray=False)
    conf_d = da.from_array(conf, chunks=chunks, asarray=False)
    f = int(score_map.factor)
    kw = session.layer_kwargs()
    scale = tuple(float(v) * f for v in kw["scale"])
    translate = tuple(float(v) * score_map.offset for v in kw["scale"])
    out = []
    for k, c in enumerate(classes, start=1):
        name = f"probability: {c.name}"
        vol = da.where(lab_d == k, conf_d, np.uint8(0))
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = vol
            layer.scale, layer.translate = scale, translate
        else:
            from napari.utils.colormaps import Colormap

            cmap = Colormap([[0, 0, 0, 0], _rgba(c.colour)], name=f"cryopicker-{c.name}")
            layer = viewer.add_image(
                vol, name=name, **{**kw, "scale": scale}, translate=translate, colormap=cmap,
                blending="additive", contrast_limits=(0, 255), opacity=0.6,
                metadata={META: {"kind": "probability", "class": c.name, "tomogram": session.tomogram_name}},
            )
        out.append(layer)
    return out


def _rgba(colour: str) -> list[float]:
    from napari.utils.colormaps.standardize_color import transform_color

    return [float(v) for v in transform_color(colour)[0]]


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
