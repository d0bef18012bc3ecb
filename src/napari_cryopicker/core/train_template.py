"""Which classes get a template averaged from their clicks (``TrainConfig.template``), and
making those templates: before the networks of a run (:func:`make_templates`), as the
picks come in live training (:class:`LiveTemplates`), or for a model already trained
(:func:`attach_templates`); see
:mod:`.template` for the method and docs/method.md for what it measured."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import Cancelled, CryoPickerError, CryoPickerWarning
from .progress import Progress, ensure
from .template import Template, build_template, matcher

if TYPE_CHECKING:  # pragma: no cover
    from .classes import ClassTable
    from .model import Checkpoint
    from .picks import Picks
    from .tomogram import Tomogram
    from .train import TrainConfig

#: "auto" gives a template to each class under this many voxels across on a binned
#: working grid: there binning has halved its detail (the 14-voxel chaperonin spans 7 at
#: bin 2), and the full-resolution match is what tells it from its look-alikes
TEMPLATE_BELOW = 10.0
#: ... and under this many voxels at full resolution: the match runs there, its cost grows
#: with the cube of the size (a 25-voxel class: minutes), and larger classes were not measured
TEMPLATE_FULL_BELOW = 20.0
#: clicks a class needs for a template
MIN_PARTICLES = 5
#: live training: picks a class needs for its first template, and the growth of its picks
#: since the last that calls for a new one (8, 12, 18, 27, 40 ...: ~0.9 s per pick each time)
LIVE_FIRST = 8
LIVE_GROWTH = 1.5


def carried_templates(init: Checkpoint | None, classes: ClassTable, config: TrainConfig) -> dict:
    """The templates of the model a fine-tuning starts from, for its classes still trained
    (none with ``template`` off): what a run that makes no new one (stopped, or live) keeps."""
    if init is None or not init.templates or _off(config.template):
        return {}
    return {k: v for k, v in init.templates.items() if k in classes.names}


def _off(spec) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("off", "none", "", "false", "0"))


def template_classes(classes: ClassTable, config: TrainConfig, factor: int) -> list[str]:
    """The classes ``config.template`` names for this run (working at bin ``factor``)."""
    spec = config.template
    if _off(spec):
        return []
    if isinstance(spec, str) and spec.strip().lower() == "auto":
        if factor <= 1:
            return []
        return [c.name for c in classes if c.diameter / factor < TEMPLATE_BELOW and c.diameter < TEMPLATE_FULL_BELOW]
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if str(n).strip()]
    unknown = [n for n in names if n not in classes.names]
    if unknown:
        raise CryoPickerError(f"template: no class named {', '.join(map(repr, unknown))} "
                              f"(the classes are {', '.join(classes.names)})")
    return names


class ClickCentring:
    """Moves the clicks of the classes with a template onto their best match with it before
    the networks learn from them (``TrainConfig.centre_clicks``, off: measured to do worse),
    so that their labels sit on the particles' centres as the template sees them. The clicks
    the template was built from are known; clicks added while the run trains (``refresh``)
    are matched when they first come."""

    def __init__(self, data: Sequence, templates: dict[str, Template]):
        self.data, self.templates = list(data), templates
        self._known: dict[tuple, np.ndarray] = {}

    @staticmethod
    def _key(i: int, name: str, p: np.ndarray) -> tuple:
        return (i, name, *np.round(np.asarray(p, float), 3).tolist())

    def learn(self, picks: Sequence[Picks]) -> None:
        """Remember where each template's own clicks (in ``picks``, as it was built) moved."""
        for name, t in self.templates.items():
            rows = [_positives(p, name) for p in picks]
            for i, (r, p) in enumerate(zip(rows, picks)):
                for a, b in zip(p.zyx[r], t.centres[i] if t.centres is not None else []):
                    self._known[self._key(i, name, a)] = np.asarray(b, float)

    def merge(self, other: ClickCentring) -> None:
        """Take ``other``'s templates (and what it knows of their clicks) in place of this one's."""
        names = set(other.templates)
        self._known = {k: v for k, v in self._known.items() if k[1] not in names}
        self._known.update(other._known)
        self.templates = {**self.templates, **other.templates}

    def apply(self, picks: Sequence[Picks]) -> list[Picks]:
        """``picks`` (one per volume) with each template class's positive clicks moved."""
        out = []
        for i, p in enumerate(picks):
            p = p.copy()
            cols = [p.table.columns.get_loc(c) for c in ("z", "y", "x")]
            for name, t in self.templates.items():
                rows = _positives(p, name)
                zyx = p.zyx[rows]
                new = [k for k, a in enumerate(zyx) if self._key(i, name, a) not in self._known]
                if new:
                    _, moved = matcher(t).score(self.data[i], zyx[new])
                    for k, b in zip(new, moved):
                        self._known[self._key(i, name, zyx[k])] = b
                if len(rows):
                    p.table.iloc[rows, cols] = np.array([self._known[self._key(i, name, a)] for a in zyx])
            out.append(p)
        return out


def _positives(picks: Picks, name: str) -> np.ndarray:
    """Row positions of ``name``'s picks that are not rejections."""
    cls = picks.table["class_name"].to_numpy().astype(str) == name
    if "source" in picks.table:
        cls &= (picks.table["source"] != "rejected").to_numpy()
    return np.flatnonzero(cls)


def make_templates(tomograms: Sequence[Tomogram], picks: Sequence[Picks], names: Sequence[str],
                   classes: ClassTable, config: TrainConfig, progress: Progress | None = None
                   ) -> tuple[dict, dict, ClickCentring]:
    """A template for each class of ``names`` averaged from its picks (not the rejected
    ones) in ``tomograms`` (full resolution, the picks in their voxels): (name ->
    :meth:`Template.to_dict`, name -> seconds it took, the :class:`ClickCentring` of those
    picks). A class with fewer than MIN_PARTICLES picks gets none."""
    progress = ensure(progress)
    made, seconds = {}, {}
    for k, name in enumerate(names):
        pts = [p.zyx[_positives(p, name)] for p in picks]
        n = sum(len(z) for z in pts)
        if n < MIN_PARTICLES:
            warnings.warn(f"{name}: {n} pick(s); a template needs at least {MIN_PARTICLES}, so the network "
                          "alone scores this class", CryoPickerWarning, stacklevel=2)
            continue
        progress.update(k, len(names), f"averaging the {name} picks into a template")
        t0 = time.monotonic()
        made[name] = build_template([t.data for t in tomograms], pts, classes[name].diameter / 2.0,
                                    tilt_range=config.template_tilt_range, seed=config.seed, progress=progress)
        seconds[name] = round(time.monotonic() - t0, 1)
    centring = ClickCentring([t.data for t in tomograms], made)
    centring.learn(picks)
    return {k: v.to_dict() for k, v in made.items()}, seconds, centring


class LiveTemplates:
    """Templates for live training, which has no planned end: a class of ``names`` gets its
    first once it has LIVE_FIRST picks, and a new one each time its picks have grown by
    LIVE_GROWTH since the last, in the training thread between epochs (a few seconds to
    half a minute); from then on every model the run gives ("pick now", the live
    suggestions, Stop) holds it (and, with ``centre_clicks``, the networks learn from its
    clicks moved onto their match).
    ``templates`` (name -> :meth:`Template.to_dict`) is updated in place."""

    def __init__(self, tomograms: Sequence[Tomogram], names: Sequence[str], classes: ClassTable,
                 config: TrainConfig, templates: dict, progress: Progress | None = None):
        self.tomograms, self.names, self.classes, self.config = list(tomograms), list(names), classes, config
        self.templates, self.progress = templates, ensure(progress)
        self.built: dict[str, int] = {}  # picks each class's template was made from
        self.seconds: dict[str, float] = {}
        self.centring = ClickCentring([t.data for t in self.tomograms], {})

    def due(self, picks: Sequence[Picks]) -> list[str]:
        """The classes whose picks call for a (new) template."""
        out = []
        for name in self.names:
            n = sum(len(_positives(p, name)) for p in picks)
            last = self.built.get(name)
            if n >= LIVE_FIRST and (last is None or n >= LIVE_GROWTH * last):
                out.append(name)
        return out

    def update(self, picks: Sequence[Picks]) -> list[Picks]:
        """Make the templates ``picks`` call for; ``picks`` as they are (with ``centre_clicks``:
        the clicks of every class with a template moved onto their match). A Stop meanwhile
        leaves the last templates."""
        for name in self.due(picks):
            try:
                made, seconds, centring = make_templates(self.tomograms, picks, [name], self.classes, self.config,
                                                         self.progress)
            except Cancelled:
                break  # the training loop stops at its next step
            if name in made:
                self.templates.update(made)
                self.seconds.update(seconds)
                self.centring.merge(centring)
                self.built[name] = sum(len(_positives(p, name)) for p in picks)
        return self.centring.apply(picks) if self.config.centre_clicks else list(picks)


def attach_templates(ckpt: Checkpoint, tomograms: Sequence[Tomogram], picks: Sequence[Picks], names: Sequence[str],
                     config: TrainConfig, progress: Progress | None = None) -> Checkpoint:
    """``ckpt`` with the templates :func:`make_templates` makes (for a model already trained)."""
    made, seconds, _ = make_templates(tomograms, picks, names, ckpt.classes, config, progress)
    return with_templates(ckpt, made, seconds)


def with_templates(ckpt: Checkpoint, made: dict, seconds: dict) -> Checkpoint:
    """``ckpt`` with the templates ``made`` added (replacing its own of those classes)."""
    if not made:
        return ckpt
    train_config = {**ckpt.train_config, "template_seconds": seconds}
    return replace(ckpt, templates={**ckpt.templates, **made}, train_config=train_config)


__all__ = ["TEMPLATE_BELOW", "ClickCentring", "LiveTemplates", "attach_templates", "carried_templates",
           "make_templates", "template_classes", "with_templates"]
