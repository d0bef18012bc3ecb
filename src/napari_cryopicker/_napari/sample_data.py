"""npe2 sample data: a small realistic simulated tomogram and a few labelled picks per class."""

from __future__ import annotations

import numpy as np

from .convert import META, points_layer_kwargs

SAMPLE_SHAPE = (96, 256, 256)
SAMPLE_NAME = "sample"
PICKS_PER_CLASS = 6


def sample_picks_subset(picks, n_per_class: int = PICKS_PER_CLASS, shape=None, margin: float = 4.0):
    """A few well-separated picks per class, away from the borders (deterministic)."""
    from ..core.picks import Picks

    parts = []
    for name in picks.class_names:
        sub = picks.select(class_name=name)
        zyx = sub.zyx
        keep = np.ones(len(sub), dtype=bool)
        if shape is not None and len(sub):
            keep = np.all((zyx >= margin) & (zyx < np.asarray(shape) - margin), axis=1)
        idx = np.flatnonzero(keep)[:n_per_class]
        parts.append(sub.subset(np.isin(np.arange(len(sub)), idx)))
    out = Picks.concat(parts)
    out.table["source"] = "manual"
    out.table["score"] = 1.0
    return out


def make_sample(shape=SAMPLE_SHAPE, seed: int = 0, n_per_class: int = PICKS_PER_CLASS):
    """(simulated tomogram, the few picks to show, the full truth of the clicked classes).

    The realistic preset (a crowded slab of 13 classes imaged as a tilt series); the picks
    shown are a few of each of the four benchmark classes, the other particles unclicked.
    """
    from ..core.realistic import BENCHMARK_CLASSES, realistic_classes, simulate_realistic

    sim = simulate_realistic(tuple(shape), seed=seed, name=SAMPLE_NAME)
    sim.classes = realistic_classes(sim.voxel_size, BENCHMARK_CLASSES)
    sim.picks = sim.picks.select(class_name=list(BENCHMARK_CLASSES))
    truth = sim.picks.with_tomogram(SAMPLE_NAME)
    if truth.voxel_size is None:
        truth.voxel_size = float(sim.voxel_size)
    few = sample_picks_subset(truth, n_per_class, shape=tuple(shape))
    return sim, few, truth


def sample_layer_data(shape=SAMPLE_SHAPE, seed: int = 0, n_per_class: int = PICKS_PER_CLASS) -> list[tuple]:
    from ..core.tomogram import percentile_stats

    sim, few, _truth = make_sample(shape, seed, n_per_class)
    vs = float(sim.voxel_size)
    scale = (vs, vs, vs)
    data = np.asarray(sim.data, dtype=np.float32)
    lo, hi = percentile_stats(data)
    layers = [
        (
            data,
            {
                "name": f"{SAMPLE_NAME} tomogram",
                "scale": scale,
                "units": ("angstrom",) * 3,
                "contrast_limits": (lo, hi),
                "metadata": {META: {"kind": "tomogram", "tomogram": SAMPLE_NAME, "voxel_size": vs,
                                    "path": None, "sample": True}},
            },
            "image",
        )
    ]
    for c in sim.classes:
        sub = few.select(class_name=c.name)
        kw = points_layer_kwargs(
            sub, kind="picks", class_name=c.name, colour=c.colour, diameter=c.diameter,
            scale=scale, tomogram=SAMPLE_NAME, shape=data.shape,
        )
        kw["metadata"][META]["diameter"] = c.diameter
        layers.append((sub.zyx, kw, "points"))
    return layers


def sample_tomogram():
    """npe2 sample-data command."""
    return sample_layer_data()
