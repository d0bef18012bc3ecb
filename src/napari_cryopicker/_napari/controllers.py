"""Plain logic behind the Tomogram, Weak labels, Model and Export panels.

Widgets call these; tests can too. Long computations go through :mod:`.workers`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.classes import ClassTable
from ..core.errors import CryoPickerError, PicksFormatError
from ..core.picks import Picks
from . import filters
from .convert import META
from .workers import runs_for

if TYPE_CHECKING:  # pragma: no cover
    from .session import PickingSession

WRITE_FORMATS_FALLBACK = ["csv", "relion3", "relion4", "relion5", "dynamo", "copick", "napari"]
FORMAT_LABELS = {
    "relion5": "RELION 5 (.star)",
    "relion4": "RELION 4 (.star)",
    "relion3": "RELION 3 / Warp (.star)",
    "dynamo": "Dynamo table (.tbl)",
    "copick": "copick (.json)",
    "csv": "CSV (.csv)",
    "napari": "napari Points CSV (.csv)",
}
EXTENSIONS = {"relion5": ".star", "relion4": ".star", "relion3": ".star", "dynamo": ".tbl",
              "copick": ".json", "csv": ".csv", "napari": ".csv"}


def write_formats() -> list[str]:
    try:
        from ..core.formats import WRITE_FORMATS

        return list(WRITE_FORMATS)
    except Exception:  # the formats package is not there yet
        return list(WRITE_FORMATS_FALLBACK)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", str(text)).strip("_") or "picks"


# ----------------------------------------------------------------------------- tomogram
class TomogramPanel:
    """Choose the session tomogram; compute display filters as new layers."""

    def __init__(self, session: PickingSession):
        self.session = session
        self.job = runs_for(session)["filter"]

    def choices(self) -> list[str]:
        return [lyr.name for lyr in self.session.image_layers()]

    def choose(self, name: str | None) -> None:
        if not name:
            self.session.set_tomogram(None)
            return
        self.session.set_tomogram(self.session.viewer.layers[name])

    def level_choices(self) -> list[str]:
        """One line per scale level of the session tomogram: voxel size and shape (x y z)."""
        return [f"{k}: {vs:.4g} A, {x} x {y} x {z}" for k, (vs, (z, y, x)) in enumerate(self.session.levels())]

    def filter(self, kind: str, **params) -> None:
        """Compute ``kind`` over the session tomogram in a thread; shown as a new layer."""
        s = self.session
        if s.image_layer is None:
            raise CryoPickerError("choose a tomogram first")
        src = s.image_layer
        data = src.data[0] if getattr(src, "multiscale", False) else src.data
        if kind == "bandpass" and params.get("coarse", 8.0) <= params.get("fine", 1.0):
            raise CryoPickerError("band-pass: the coarse sigma must be larger than the fine sigma")
        name = f"{src.name} [{filters.describe(kind, **params)}]"
        scale = tuple(src.scale)
        units = tuple(str(u) for u in src.units)

        def compute(progress):
            return filters.apply(kind, data, progress, **params)

        def show(vol: np.ndarray):
            from ..core.tomogram import percentile_stats

            lo, hi = percentile_stats(vol)
            viewer = s.viewer
            if name in viewer.layers:
                layer = viewer.layers[name]
                layer.data = vol
                layer.contrast_limits = (lo, hi)
            else:
                layer = viewer.add_image(
                    vol, name=name, scale=scale, units=units, contrast_limits=(lo, hi),
                    metadata={META: {"kind": "filtered", "tomogram": s.tomogram_name, "filter": kind}},
                )
            # keep the picks on top of the new image
            for lyr in s.session_layers().values():
                i = viewer.layers.index(lyr)
                viewer.layers.move(i, len(viewer.layers))
            return layer

        self.job.start(compute, show)


# ----------------------------------------------------------------------------- labels
class LabelsPreview:
    """Weak labels (Cubic / Ball / TBall) from the current picks, as a Labels layer."""

    LAYER = "weak labels"

    def __init__(self, session: PickingSession):
        self.session = session
        self.job = runs_for(session)["labels"]

    @property
    def mode(self) -> str:
        return self.session.label_mode

    @mode.setter
    def mode(self, value: str) -> None:
        value = str(value).lower()
        if value not in ("tball", "ball", "cubic"):
            raise CryoPickerError(f"unknown label shape {value!r}; choose tball, ball or cubic")
        self.session.label_mode = value

    @property
    def diameter(self) -> float | None:
        return self.session.label_diameter

    @diameter.setter
    def diameter(self, value: float | None) -> None:
        self.session.label_diameter = float(value) if value else None

    @property
    def scale(self) -> float | None:
        """Label diameter as a fraction of the particle diameter (None: the engine default)."""
        return self.session.label_scale

    @scale.setter
    def scale(self, value: float | None) -> None:
        self.session.label_scale = float(value) if value else None

    def _inputs(self):
        s = self.session
        tomo = s._require_tomogram()
        picks = s.training_picks()
        if not len(picks.exclude_source("rejected")):
            raise CryoPickerError("no picks yet: the weak labels are made from your picks")
        return tomo.shape, picks, ClassTable.from_dict(s.classes.to_dict()), runs_for(s)["train"].config_values()

    @staticmethod
    def _compute(shape, picks, classes, values) -> np.ndarray:
        """The labels training will use (worker thread: imports the engine, and torch)."""
        from ..core.labels import make_labels
        from ..core.train import TrainConfig
        from ..core.train_data import label_diameters
        from .tasks import _config

        cfg = _config(TrainConfig, values)
        return make_labels(shape, picks, classes, mode=cfg.label_mode, diameter=label_diameters(classes, cfg))

    def compute(self) -> np.ndarray:
        return self._compute(*self._inputs())

    def preview(self, *, background: bool = True):
        args = self._inputs()
        if background:
            self.job.start(lambda progress: self._compute(*args), self.show)
            return None
        return self.show(self._compute(*args))

    def show(self, labels: np.ndarray):
        from napari.utils.colormaps import DirectLabelColormap

        s = self.session
        colours = {0: "transparent", None: "transparent"}
        for k, c in enumerate(s.classes, start=1):
            colours[k] = c.colour
        cmap = DirectLabelColormap(color_dict=colours)
        viewer = s.viewer
        if self.LAYER in viewer.layers:
            layer = viewer.layers[self.LAYER]
            layer.data = labels
            layer.colormap = cmap
        else:
            layer = viewer.add_labels(
                labels, name=self.LAYER, **s.layer_kwargs(), opacity=0.4, colormap=cmap,
                metadata={META: {"kind": "labels", "tomogram": s.tomogram_name, "mode": self.mode}},
            )
            # below the picks
            for lyr in s.session_layers().values():
                viewer.layers.move(viewer.layers.index(lyr), len(viewer.layers))
        layer.metadata = {**layer.metadata, META: {"kind": "labels", "tomogram": s.tomogram_name,
                                                   "mode": self.mode}}
        # napari selects a new layer: give the selection back to the active class's picks, else
        # the number keys and the next click act on the Labels layer (1 = erase)
        if s.active_class is not None:
            s.set_active_class(s.active_class)
        return layer


# ----------------------------------------------------------------------------- model
def save_model(session: PickingSession, path: str | os.PathLike) -> Path:
    if session.checkpoint is None:
        raise CryoPickerError("no model to save yet: train one first")
    from ..core.model import save_checkpoint

    p = Path(path)
    if p.suffix == "":
        p = p.with_suffix(".pt")
    try:
        out = save_checkpoint(session.checkpoint, p)
    except OSError as e:
        raise CryoPickerError(f"{p}: cannot save the model ({e.strerror or e})") from None
    session.model_path = out
    session._autosave()  # the annotations now name this model file
    return out


def load_model(session: PickingSession, path: str | os.PathLike):
    from ..core.model import load_checkpoint

    ckpt = load_checkpoint(path)
    session.set_checkpoint(ckpt, path)
    return ckpt


def model_summary(session: PickingSession) -> str:
    ck = session.checkpoint
    if ck is None:
        return "No model yet."
    names = ", ".join(ck.classes.names)
    parts = [f"Model for {names}"]
    if ck.voxel_size:
        b = ck.binning
        parts.append(f"{ck.voxel_size:.3g} A/voxel" + (f", works at bin {b} ({ck.voxel_size * b:.3g} A)" if b > 1 else ""))
    if ck.history:
        parts.append(f"{len(ck.history)} epoch(s)")
    if ck.best_score is not None:
        parts.append(f"validation score {ck.best_score:.2f}")
    if session.model_path is not None:
        parts.append(f"file {session.model_path.name}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- export
class Exporter:
    """Write the session's picks in any format the core can write."""

    def __init__(self, session: PickingSession):
        self.session = session

    def default_folder(self) -> Path:
        t = self.session.tomogram
        if t is not None and t.path is not None:
            return t.path.parent
        return Path.cwd()

    def collect(self, what: str = "annotations") -> Picks:
        """``annotations`` (manual/accepted/imported), ``predictions`` (shown ones) or ``both``."""
        s = self.session
        parts = []
        if what in ("annotations", "both"):
            parts.append(s.annotations())
        if what in ("predictions", "both"):
            parts.append(s.predictions(shown_only=True))
        if what not in ("annotations", "predictions", "both"):
            raise CryoPickerError(f"unknown selection {what!r}")
        out = Picks.concat(parts)
        if out.voxel_size is None:
            out.voxel_size = s.voxel_size
        return out

    @staticmethod
    def filename(fmt: str, tomogram: str, class_name: str | None) -> str:
        ext = EXTENSIONS.get(fmt, ".txt")
        part = safe_name(class_name) if class_name else "picks"
        if fmt == "copick":
            # copick's own naming: {user_id}_{session_id}_{object}.json
            return f"cryopicker_0_{part}{ext}"
        tag = {"relion3": "_relion3", "relion4": "_relion4", "napari": "_napari"}.get(fmt, "")
        return f"{safe_name(tomogram)}_{part}{tag}{ext}"

    def export(
        self,
        formats: str | list[str],
        folder: str | os.PathLike,
        *,
        what: str = "annotations",
        per_class: bool = False,
        tomogram_name: str | None = None,
        voxel_size: float | None = None,
        binning: float = 1.0,
    ) -> list[Path]:
        from ..core.formats import write_picks

        s = self.session
        tomo = s._require_tomogram()
        fmts = [formats] if isinstance(formats, str) else list(formats)
        if not fmts:
            raise CryoPickerError("choose at least one format")
        picks = self.collect(what)
        if not len(picks):
            what_words = {"annotations": "picks", "predictions": "shown predictions",
                          "both": "picks or shown predictions"}[what]
            raise CryoPickerError(f"there are no {what_words} to export")
        name = (tomogram_name or tomo.name).strip() or tomo.name
        picks = picks.with_tomogram(name)
        if voxel_size:
            # the coordinates stay voxel indices; only the stated voxel size changes
            picks.voxel_size = float(voxel_size)
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CryoPickerError(f"{folder}: cannot create the export folder ({e.strerror or e})") from None
        groups = [(c, picks.select(class_name=c)) for c in picks.class_names] if per_class else [(None, picks)]
        written: list[Path] = []
        for fmt in fmts:
            for cls, sub in groups:
                path = folder / self.filename(fmt, name, cls)
                try:
                    out = write_picks(sub, path, fmt, voxel_size=sub.voxel_size, binning=binning,
                                      tomogram_shape=tomo.shape, tomogram=name)
                except (PicksFormatError, CryoPickerError):
                    raise
                except OSError as e:
                    raise CryoPickerError(f"{path}: cannot write ({e.strerror or e})") from None
                except Exception as e:
                    raise CryoPickerError(f"{FORMAT_LABELS.get(fmt, fmt)}: {e}") from None
                written.extend(Path(p) for p in out)
        return written


# ----------------------------------------------------------------------------- copick
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
