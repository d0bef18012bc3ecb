"""What :func:`.train.train_model` checks in what it is given: picks in the voxels of their
tomogram, of known classes, every class picked inside the volume, and enough picks to hold
some out for validation (errors for what training cannot use, warnings for what it leaves
out)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .classes import ClassTable
from .errors import CryoPickerError, CryoPickerWarning
from .picks import Picks

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig


def _few_for_val(tomograms, picks: Sequence[Picks], config: TrainConfig) -> bool:
    """True when no tomogram has enough picks inside it for a validation split of ``val_fraction``."""
    return all(round(int((p.inside(t.shape) & (p.table["source"] != "rejected").to_numpy()).sum())
                     * config.val_fraction) < 2 for t, p in zip(tomograms, picks))


def _checked_picks(tomograms, picks, classes: ClassTable, config: TrainConfig) -> list[Picks]:
    """Picks in voxels of their tomogram; errors for what training cannot use, warnings for
    what it leaves out (picks outside the volume, a too small validation split)."""
    out = []
    for tomo, p in zip(tomograms, picks):
        where = str(tomo.path) if tomo.path is not None else f"tomogram {tomo.name!r}"
        if p.voxel_size is not None and tomo.voxel_size and not math.isclose(
                p.voxel_size, tomo.voxel_size, rel_tol=1e-3):
            warnings.warn(
                f"{where}: the picks are at {p.voxel_size:.4g} A per voxel, the tomogram at "
                f"{tomo.voxel_size:.4g} A; the pick coordinates were rescaled to the tomogram's voxels",
                CryoPickerWarning, stacklevel=3,
            )
            p = p.rescaled(tomo.voxel_size)
        unknown = [c for c in p.exclude_source("rejected").class_names if c not in classes]
        if unknown:
            raise CryoPickerError(
                f"{where}: picks of class(es) {', '.join(unknown)} are not in the class table "
                f"({', '.join(classes.names)}); add the class(es) with a diameter or remove those picks"
            )
        inside = p.inside(tomo.shape)
        if (~inside).any():
            warnings.warn(
                f"{where}: {int((~inside).sum())} of {len(p)} pick(s) lie outside the tomogram "
                f"(z, y, x = {tomo.shape}); they are ignored",
                CryoPickerWarning, stacklevel=3,
            )
        out.append(p)
    positives = [p.subset(p.inside(t.shape)).exclude_source("rejected") for t, p in zip(tomograms, out)]
    counts = Picks.concat([p.rescaled(1.0) for p in positives]).counts()
    everywhere = Picks.concat([p.exclude_source("rejected").rescaled(1.0) for p in out]).counts()
    empty = [c for c in classes.names if counts.get(c, 0) == 0]
    if empty:
        outside = sum(everywhere.get(c, 0) for c in empty)
        where = f" inside the tomogram(s) ({outside} lie outside)" if outside else ""
        raise CryoPickerError(
            f"class(es) {', '.join(empty)} have no picks{where}; pick a few of each class or remove the class"
        )
    if config.val_fraction > 0 and _few_for_val(tomograms, out, config):
        need = math.ceil(1.5 / config.val_fraction)
        n = max(len(p) for p in positives)
        warnings.warn(
            f"only {n} pick(s) per tomogram: holding out {config.val_fraction:.0%} for validation needs at "
            f"least {need}; training without validation (the epoch with the lowest training loss is kept "
            "and the pick thresholds are not tuned)",
            CryoPickerWarning, stacklevel=3,
        )
    return out
