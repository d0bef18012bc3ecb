"""Which classes get a template averaged from their clicks (``TrainConfig.template``), and
building those templates into a trained model (:func:`attach_templates`); see
:mod:`.template` for the method and docs/method.md for what it measured."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from .errors import CryoPickerError, CryoPickerWarning
from .progress import Progress, ensure
from .template import build_template

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
#: seconds of 2 CPU cores a template takes per pick (4 alignments of 40 picks: ~35 s,
#: benchmarks/realistic.py --retemplate); a time budget keeps this much for the templates
SECONDS_PER_PICK = 0.9


def carried_templates(init: Checkpoint | None, classes: ClassTable, config: TrainConfig) -> dict:
    """The templates of the model a fine-tuning starts from, for its classes still trained
    (none with ``template`` off): what a run that makes no new one (stopped, or live) keeps."""
    if init is None or not init.templates or _off(config.template):
        return {}
    return {k: v for k, v in init.templates.items() if k in classes.names}


def _off(spec) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() in ("off", "none", "", "false", "0"))


def template_reserve(picks: Sequence[Picks], names: Sequence[str]) -> float:
    """Seconds of a time budget to keep for the templates of ``names``."""
    n = 0
    for p in picks:
        sel = p.exclude_source("rejected")
        n += int(np.isin(sel.table["class_name"].to_numpy(), list(names)).sum())
    return SECONDS_PER_PICK * n


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


def attach_templates(ckpt: Checkpoint, tomograms: Sequence[Tomogram], picks: Sequence[Picks], names: Sequence[str],
                     config: TrainConfig, progress: Progress | None = None) -> Checkpoint:
    """``ckpt`` with a template for each class of ``names`` averaged from its picks (not the
    rejected ones) in ``tomograms`` (full resolution, the picks in their voxels). A class
    with fewer than MIN_PARTICLES picks gets none."""
    progress = ensure(progress)
    out = dict(ckpt.templates)
    seconds = {}
    for k, name in enumerate(names):
        pts = []
        for p in picks:
            sel = p.select(class_name=name)
            keep = (sel.table["source"] != "rejected").to_numpy() if "source" in sel.table else np.ones(len(sel), bool)
            pts.append(sel.zyx[keep])
        n = sum(len(z) for z in pts)
        if n < MIN_PARTICLES:
            warnings.warn(f"{name}: {n} pick(s); a template needs at least {MIN_PARTICLES}, so the network "
                          "alone scores this class", CryoPickerWarning, stacklevel=2)
            continue
        progress.update(k, len(names), f"averaging the {name} picks into a template")
        t0 = time.monotonic()
        radius = ckpt.classes[name].diameter / 2.0
        tpl = build_template([t.data for t in tomograms], pts, radius, tilt_range=config.template_tilt_range,
                             seed=config.seed, progress=progress)
        out[name] = tpl.to_dict()
        seconds[name] = round(time.monotonic() - t0, 1)
    if not seconds:
        return ckpt
    train_config = {**ckpt.train_config, "template_seconds": seconds}
    return replace(ckpt, templates=out, train_config=train_config)


__all__ = ["TEMPLATE_BELOW", "attach_templates", "carried_templates", "template_classes", "template_reserve"]
