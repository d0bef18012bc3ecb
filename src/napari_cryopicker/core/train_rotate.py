"""Small random rotations of a training crop and of its labels (``TrainConfig.rotate``).

Forty clicks show a class in forty orientations (times the eight flips and half turns
that keep a missing wedge about y in place, :func:`.train_data._augment`); a particle
of the tomogram to pick may lie in any other. A rotation by up to ``rotate`` degrees
about a random axis fills the gaps between them, at the price of tilting the crop's
missing wedge by as much. The crop is cut from a block read with a margin, so that the
rotated crop has data in every corner, and the labels are painted from the rotated pick
centres (not interpolated). A crop whose margin would reach into the validation slab is
not rotated, so validation stays unseen.

With ``rotate_wedge`` (the tomograms' tilt range, degrees) the turned crop has the missing
wedge of that range cut out of it again where the data have it (about y); what it lacks
is then the union of its own turned wedge and the right one, never a wedge in a place no
tomogram to pick has. The wedge is cut on a block a few voxels larger than the crop, so
that the Fourier transform's wrap-around stays outside it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .labels import labels_from_arrays
from .tomogram import normalise

if TYPE_CHECKING:  # pragma: no cover
    from .classes import ClassTable
    from .train import TrainConfig
    from .train_data import _Volume


def random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A 3x3 rotation (acting on (z, y, x) offsets) by an angle uniform in
    [0, ``max_deg``] degrees about an axis uniform on the sphere (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= max(float(np.linalg.norm(axis)), 1e-12)
    theta = math.radians(float(rng.uniform(0.0, max_deg)))
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + math.sin(theta) * k + (1.0 - math.cos(theta)) * (k @ k)


def margin(crop, rot: np.ndarray) -> np.ndarray:
    """Voxels to read beyond each side of ``crop`` so that every voxel of the crop turned
    by ``rot`` about its centre samples data (plus one for the interpolation)."""
    half = (np.asarray(crop, float) - 1.0) / 2.0
    corners = np.array(np.meshgrid(*[(-h, h) for h in half], indexing="ij")).reshape(3, -1).T
    reach = np.abs(corners @ rot).max(0)  # rows: R^T applied to each corner
    return np.maximum(np.ceil(reach - half).astype(int) + 1, 0)


#: working-grid voxels turned beyond each side of the crop when the wedge is cut again
WEDGE_PAD = 4


def reach(crop, rot: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Voxels read beyond each side of ``crop`` for a crop turned by ``rot``."""
    pad = WEDGE_PAD if config.rotate_wedge > 0 else 0
    return pad + margin(np.asarray(crop) + 2 * pad, rot)


def rotation_for(v: _Volume, start, crop, config: TrainConfig, rng: np.random.Generator) -> np.ndarray | None:
    """The rotation for this crop, or None: rotations off, this crop drawn unrotated
    (``1 - rotate_share`` of them), or its margin would read the validation slab.

    ``rng`` is the rotations' own generator, so a run without them draws the same crops
    as before they existed."""
    if config.rotate <= 0 or config.unlabelled_weight < 1.0:
        return None
    if rng.random() >= config.rotate_share:
        return None
    rot = random_rotation(rng, config.rotate)
    if v.val_region is not None and not v.val_trains:
        m = reach(crop, rot, config)
        axis, cut, high = v.val_cut()
        if high and start[axis] + crop[axis] + m[axis] > cut:
            return None
        if not high and start[axis] - m[axis] < cut:
            return None
    return rot


def rotated_sample(v: _Volume, start, crop, rot: np.ndarray, classes: ClassTable, config: TrainConfig,
                   diam: dict[str, float], negatives: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(normalised crop, labels) of the crop at ``start`` turned by ``rot`` about its centre.

    The block is read at the data's own sampling (the full-resolution block of a sub-voxel
    view), turned by trilinear interpolation; the labels are painted on the working grid
    from the pick centres turned the same way: a particle at crop offset ``q`` from the
    centre appears at ``rot @ q``."""
    from .predict import read_block
    from .simulate_optics import apply_missing_wedge

    crop = np.asarray(crop, int)
    m = reach(crop, rot, config)
    big = read_block(v.tomo.data, list(np.asarray(start) - m), list(crop + 2 * m))
    if config.lowpass > 0:
        big = ndimage.gaussian_filter(big, config.lowpass)
    big = normalise(big, v.centre, v.scale)
    f = big.shape[0] // int(crop[0] + 2 * m[0])
    pad = WEDGE_PAD if config.rotate_wedge > 0 else 0
    out = (crop + 2 * pad) * f
    c_in = (np.asarray(big.shape, float) - 1.0) / 2.0
    c_out = (out - 1.0) / 2.0
    x = ndimage.affine_transform(big, rot.T, offset=c_in - rot.T @ c_out, output_shape=tuple(out),
                                 order=1, mode="nearest", prefilter=False).astype(np.float32)
    if pad:
        x = apply_missing_wedge(x, config.rotate_wedge, workers=1)
        k = pad * f
        x = np.ascontiguousarray(x[k:-k, k:-k, k:-k])
    rmax = max(diam.values())
    lo = np.asarray(start) - m - rmax
    hi = np.asarray(start) + crop + m + rmax
    sel = np.all((v.zyx >= lo) & (v.zyx < hi), axis=1) if len(v.zyx) else np.zeros(0, bool)
    centre = np.asarray(start, float) + (crop - 1.0) / 2.0
    turned = np.rint(centre + (v.zyx[sel] - centre) @ rot.T).astype(np.int64)
    t = v.picks.table
    y = labels_from_arrays(tuple(crop), turned, t["class_name"].to_numpy(dtype=object)[sel],
                           (t["source"] == "rejected").to_numpy()[sel], classes, config.label_mode, diam,
                           origin=start, rejected=negatives)
    return x, y
