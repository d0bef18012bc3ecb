"""What training learns from: the tomograms and picks of a run as volumes, the held-out
validation slab, crops and their weak labels (with the marks for rejections and for
background far from every pick), sampling, augmentation and the loss."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from .classes import ClassTable
from .errors import CryoPickerError
from .labels import IGNORE, labels_from_arrays
from .picks import Picks
from .tomogram import Tomogram, normalise, robust_normalisation

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig


@dataclass
class _Volume:
    tomo: Tomogram
    centre: float
    scale: float
    zyx: np.ndarray          # all picks (incl. rejected), rounded voxel positions
    picks: Picks
    positives: np.ndarray    # indices into zyx of non-rejected picks inside the train region
    train_hi: list[int]      # exclusive upper bound of crop starts+patch per axis
    val_region: tuple[slice, slice, slice] | None = None
    val_truth: Picks | None = None
    n_pos: int = 0
    answered: np.ndarray | None = None  # indices into zyx of the user's answers (accepted, rejected) inside the train region
    train_lo: list[int] | None = None  # inclusive lower bound of the training box per axis (None: zeros)
    # for each class with picks, the positions in positives[:n_pos] of its picks (_by_class); None: not known
    class_groups: list[np.ndarray] | None = None
    # the validation slab's picks are trained on too (TrainConfig.hold_out off): it only
    # sets thresholds, from picks the network has seen
    val_trains: bool = False

    def __post_init__(self):
        if self.train_lo is None:
            self.train_lo = [0, 0, 0]

    def box(self) -> tuple[list[int], list[int]]:
        """(lo, hi): where training crops and the picks they learn from lie."""
        if self.val_trains:
            return [0, 0, 0], list(self.tomo.shape)
        return list(self.train_lo), list(self.train_hi)

    def val_cut(self) -> tuple[int, int, bool]:
        """(axis, cut, high): the held-out slab is ``axis >= cut`` (high) or ``< cut``."""
        for i in (2, 1):
            if self.train_hi[i] < self.tomo.shape[i]:
                return i, int(self.train_hi[i]), True
            if self.train_lo[i] > 0:
                return i, int(self.train_lo[i]), False
        return 2, int(self.tomo.shape[2]), True


def _crop_shape(shape: Sequence[int], patch: int, multiple: int) -> tuple[int, int, int]:
    out = []
    for n in shape:
        p = min(patch, (n // multiple) * multiple)
        if p < multiple:
            raise CryoPickerError(
                f"tomogram of shape {tuple(shape)} is too small to train on (each side needs "
                f">= {multiple} voxels)"
            )
        out.append(p)
    return tuple(out)  # type: ignore[return-value]


def _val_split(tomo: Tomogram, picks: Picks, classes: ClassTable, fraction: float, crop, fold: int = 0) -> tuple:
    """Hold out a slab with ~fraction of the picks at one end of an in-plane axis: ``fold``
    0 the high end of the longest, 1 its low end, 2 and 3 the high and low ends of the
    other (``TrainConfig.val_fold``). Returns the validation region, its truth and the
    training box ``(lo, hi)`` (per axis, lo inclusive, hi exclusive)."""
    shape = tomo.shape
    whole = ([0, 0, 0], list(shape))
    if fraction <= 0:
        return None, None, whole
    longest = 2 if shape[2] >= shape[1] else 1
    axis = longest if fold % 4 < 2 else 3 - longest
    high = fold % 2 == 0
    pos = picks.select(source=["manual", "accepted", "imported", "predicted"])
    coords = np.sort(pos.zyx[:, axis]) if len(pos) else np.zeros(0)
    n_val = int(round(len(coords) * fraction))
    rmax = max(classes.diameters) / 2 if len(classes) else 4
    if n_val < 2:
        return None, None, whole
    if high:
        cut = int(math.floor(coords[len(coords) - n_val] - rmax))
        cut = min(cut, shape[axis] - crop[axis])  # the val slab is at least one crop wide
        if cut < crop[axis]:
            return None, None, whole
    else:
        cut = int(math.ceil(coords[n_val - 1] + rmax)) + 1
        cut = max(cut, crop[axis])
        if cut > shape[axis] - crop[axis]:
            return None, None, whole
    region = [slice(0, s) for s in shape]
    region[axis] = slice(cut, shape[axis]) if high else slice(0, cut)
    inside = pos.zyx[_whole_in_slab(pos.zyx, axis, cut, high, rmax)]
    # cap the val region so validation stays cheap on big tomograms
    other = 3 - axis
    if shape[other] > 256:
        mid = int(np.median(inside[:, other])) if len(inside) else shape[other] // 2
        a = int(np.clip(mid - 128, 0, shape[other] - 256))
        region[other] = slice(a, a + 256)
    # and to the z range of the particles (the sample slab), where the picks are
    zs = pos.zyx[:, 0]
    region[0] = slice(int(max(0, np.floor(zs.min() - rmax))), int(min(shape[0], np.ceil(zs.max() + rmax + 1))))
    if region[0].stop - region[0].start < crop[0]:
        a = max(0, min(region[0].start, shape[0] - crop[0]))
        region[0] = slice(a, a + crop[0])
    region = tuple(region)
    truth = pos.subset(_truth_mask(pos.zyx, region, axis, cut, high, rmax))
    if len(truth) < 2:
        return None, None, whole
    lo, hi = [0, 0, 0], list(shape)
    if high:
        hi[axis] = cut
    else:
        lo[axis] = cut
    return region, truth, (lo, hi)


def _whole_in_slab(zyx: np.ndarray, axis: int, cut: int, high: bool, rmax: float) -> np.ndarray:
    """Picks whose whole particle lies in the held-out slab (beyond ``cut`` by ``rmax``)."""
    return zyx[:, axis] >= cut + rmax if high else zyx[:, axis] < cut - rmax


def _truth_mask(zyx: np.ndarray, region, axis: int, cut: int, high: bool, rmax: float) -> np.ndarray:
    lo = np.array([r.start for r in region], float)
    hi = np.array([r.stop for r in region], float)
    m = np.all((zyx >= lo + rmax * 0.5) & (zyx < hi - rmax * 0.5), axis=1)
    return m & _whole_in_slab(zyx, axis, cut, high, rmax)  # whole particles only


def _in_box(zyx: np.ndarray, lo, hi) -> np.ndarray:
    if not len(zyx):
        return np.zeros(0, bool)
    return np.all((zyx >= np.asarray(lo)[None, :]) & (zyx < np.asarray(hi)[None, :]), axis=1)


def _prepare(tomograms, picks_list, classes, config: TrainConfig, crop) -> list[_Volume]:
    vols = []
    for tomo, picks in zip(tomograms, picks_list):
        picks = picks.copy()
        inside = picks.inside(tomo.shape)
        picks = picks.subset(inside)
        c, s = robust_normalisation(tomo.data)
        region, truth, (train_lo, train_hi) = _val_split(tomo, picks, classes, config.val_fraction, crop,
                                                         config.val_fold)
        zyx = np.rint(picks.zyx).astype(np.int64) if len(picks) else np.zeros((0, 3), np.int64)
        rej = (picks.table["source"] == "rejected").to_numpy()
        v = _Volume(tomo, c, s, zyx, picks, np.zeros(0, np.int64), train_hi, region, truth, train_lo=train_lo,
                    val_trains=region is not None and not holds_out(config))
        in_train = _in_box(zyx, *v.box())
        pos_idx = np.flatnonzero(~rej & in_train)
        neg_idx = np.flatnonzero(rej & in_train)
        v.positives, v.n_pos = np.concatenate([pos_idx, neg_idx]), len(pos_idx)
        v.answered, v.class_groups = _answered(picks, in_train), _by_class(picks, pos_idx)
        vols.append(v)
    return vols


def holds_out(config: TrainConfig) -> bool:
    """Whether the validation slab's picks are kept out of training (TrainConfig.hold_out;
    None: yes, except in live training)."""
    return (not config.continuous) if config.hold_out is None else bool(config.hold_out)


def picks_signature(vols: list[_Volume]) -> list[tuple]:
    """What the volumes' picks are (positions, classes, sources), to tell a real edit from a
    refresh that brought the same picks."""
    return [(v.zyx.tobytes(), tuple(v.picks.table["class_name"]), tuple(v.picks.table["source"]))
            if len(v.picks) else () for v in vols]


def _renew(vols: list[_Volume], picks_list: Sequence[Picks], classes: ClassTable) -> str:
    """Put the picks of a running training's tomograms as they are now into its volumes;
    the validation slab stays where it is, its truth follows the picks. Returns a note."""
    if len(picks_list) != len(vols):
        raise CryoPickerError(f"{len(picks_list)} picks tables for {len(vols)} tomograms")
    rmax = max(classes.diameters) / 2 if len(classes) else 4
    before, after = sum(len(v.picks) for v in vols), 0
    for v, picks in zip(vols, picks_list):
        picks = picks.subset(picks.inside(v.tomo.shape))
        zyx = np.rint(picks.zyx).astype(np.int64) if len(picks) else np.zeros((0, 3), np.int64)
        rej = (picks.table["source"] == "rejected").to_numpy()
        in_train = _in_box(zyx, *v.box())
        pos_idx, neg_idx = np.flatnonzero(~rej & in_train), np.flatnonzero(rej & in_train)
        if v.val_region is not None:
            pos = picks.select(source=["manual", "accepted", "imported", "predicted"])
            axis, cut, high = v.val_cut()
            m = _truth_mask(pos.zyx, v.val_region, axis, cut, high, rmax)
            if m.sum() >= 2:
                v.val_truth = pos.subset(m)
        v.zyx, v.picks, v.positives, v.n_pos = zyx, picks, np.concatenate([pos_idx, neg_idx]), len(pos_idx)
        v.class_groups = _by_class(picks, pos_idx)
        v.answered = _answered(picks, in_train)
        after += len(picks)
    if not any(v.n_pos for v in vols):
        raise CryoPickerError("no picks left inside the training part of the tomogram(s)")
    return f"{before} -> {after} picks and rejections"


def _by_class(picks: Picks, rows: np.ndarray) -> list[np.ndarray]:
    """For each class among ``picks``' ``rows``, the positions in ``rows`` of its picks."""
    names = picks.table["class_name"].to_numpy()[rows].astype(str)
    return [np.flatnonzero(names == n) for n in np.unique(names)]


#: classes whose pick counts are all within this factor of each other are drawn as they are
#: (the realistic benchmark's 40 clicks per class leave 30-38 in the training part: its runs,
#: measured before the balance, draw the same crops); else a class is drawn first, then a pick
BALANCE_RATIO = 1.5


def _unbalanced(groups: list[np.ndarray] | None) -> bool:
    sizes = [len(g) for g in groups or []]
    return len(sizes) > 1 and max(sizes) > BALANCE_RATIO * min(sizes)


def _answered(picks: Picks, in_train: np.ndarray) -> np.ndarray:
    """Rows of ``picks`` that are the user's answers to candidates (accepted or rejected)
    inside the training region."""
    src = picks.table["source"].to_numpy()
    return np.flatnonzero(((src == "accepted") | (src == "rejected")) & in_train) if len(src) else np.zeros(0, int)


def _read_crop(v: _Volume, start, crop, lowpass: float) -> np.ndarray:
    sl = tuple(slice(a, a + n) for a, n in zip(start, crop))
    if lowpass > 0:
        pad = int(math.ceil(3 * lowpass))
        from .predict import read_block

        blk = read_block(v.tomo.data, [a - pad for a in start], [n + 2 * pad for n in crop])
        blk = ndimage.gaussian_filter(blk, lowpass)[pad:-pad, pad:-pad, pad:-pad]
    else:
        blk = np.asarray(v.tomo.data[sl], dtype=np.float32)
    return normalise(blk, v.centre, v.scale)


NEGATIVE = IGNORE - 1  # training-time mark of a rejected pick's ball (background that must stay so)
FAR = IGNORE - 2  # training-time mark of background far from every pick (see TrainConfig.unlabelled_weight)


def _crop_labels(v: _Volume, start, crop, classes, config: TrainConfig, negatives: int = 0) -> np.ndarray:
    diam = label_diameters(classes, config)
    rmax = max(diam.values())
    lo = np.asarray(start) - rmax
    hi = np.asarray(start) + np.asarray(crop) + rmax
    m = np.all((v.zyx >= lo) & (v.zyx < hi), axis=1) if len(v.zyx) else np.zeros(0, bool)
    t = v.picks.table
    labels = labels_from_arrays(crop, v.zyx[m], t["class_name"].to_numpy(dtype=object)[m],
                                (t["source"] == "rejected").to_numpy()[m], classes, config.label_mode, diam,
                                origin=start, rejected=negatives)
    if config.unlabelled_weight < 1.0:
        _mark_far_background(labels, v, start, classes, config)
    return labels


def _mark_far_background(labels: np.ndarray, v: _Volume, start, classes: ClassTable, config: TrainConfig) -> None:
    """Mark (:data:`FAR`) the background voxels of a crop farther than ``known_radius``
    class diameters from every pick: there an unclicked particle may hide."""
    crop = labels.shape
    near = np.zeros(crop, dtype=bool)
    names = v.picks.table["class_name"].to_numpy()
    default_d = max(classes.diameters) if len(classes) else 10.0
    reach = config.known_radius * default_d
    lo = np.asarray(start) - reach
    hi = np.asarray(start) + np.asarray(crop) + reach
    m = np.all((v.zyx >= lo) & (v.zyx < hi), axis=1) if len(v.zyx) else np.zeros(0, bool)
    for i in np.flatnonzero(m):
        d = classes[names[i]].diameter if names[i] in classes else default_d
        r = config.known_radius * d
        c = v.zyx[i] - np.asarray(start)
        a = np.maximum(np.floor(c - r).astype(int), 0)
        b = np.minimum(np.ceil(c + r).astype(int) + 1, crop)
        if np.any(b <= a):
            continue
        g = np.ogrid[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        ball = (g[0] - c[0]) ** 2 + (g[1] - c[1]) ** 2 + (g[2] - c[2]) ** 2 <= r * r
        near[a[0]:b[0], a[1]:b[1], a[2]:b[2]] |= ball
    labels[(labels == 0) & ~near] = FAR


def _known_centres(v: _Volume, origin, classes: ClassTable, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every pick of ``v`` (crop coordinates) and the radius around it that is known."""
    names = v.picks.table["class_name"].to_numpy()
    default_d = max(classes.diameters) if len(classes) else 10.0
    radii = np.array([config.known_radius * (classes[n].diameter if n in classes else default_d) for n in names])
    return v.zyx - np.asarray(origin)[None, :], radii


def _near(zyx: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    if not len(centres):
        return np.zeros(len(zyx), bool)
    d2 = ((zyx[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return (d2 <= radii[None, :] ** 2).any(axis=1)


def _voxel_weights(target: torch.Tensor, config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Turn :data:`FAR` marks into background with weight ``unlabelled_weight`` (or IGNORE)."""
    far = target == FAR
    if not bool(far.any()):
        return target, None
    if config.unlabelled_weight <= 0:
        return target.masked_fill(far, IGNORE), None
    vw = torch.ones(target.shape, dtype=torch.float32, device=target.device)
    vw[far] = float(config.unlabelled_weight)
    return target.masked_fill(far, 0), vw


def _ignore_unpicked_blobs(logits: torch.Tensor, target: torch.Tensor, active: bool) -> tuple[torch.Tensor, float]:
    """Sparse annotation: a user who clicked 40 of 150 ribosomes did not say the other 110
    are background. Once the network has learnt the classes (``active``), every connected
    blob it segments that touches no picked particle and no rejected pick is left out of
    the loss (with a one-voxel rim), instead of being taught as background. Blobs touching
    a pick keep their labels, so the label shape is still learnt; rejected picks
    (:data:`NEGATIVE` in ``target``) stay background. Returns the target and the share of
    voxels left out."""
    neg = target == NEGATIVE
    target = target.masked_fill(neg, 0)
    if not active:
        return target, 0.0
    pred = logits.detach().argmax(1).cpu().numpy()
    y = target.cpu().numpy()
    negn = neg.cpu().numpy()
    out = y.copy()
    for i in range(len(y)):
        fg = pred[i] > 0
        if not fg.any():
            continue
        comp, n = ndimage.label(fg)
        keep = np.zeros(n + 1, bool)
        keep[np.unique(comp[((y[i] > 0) & (y[i] != IGNORE)) | negn[i]])] = True
        keep[0] = True
        free = ~keep[comp]
        if free.any():
            free = ndimage.binary_dilation(free) & (y[i] == 0) & ~negn[i]
            out[i][free] = IGNORE
    left_out = float(np.mean((out == IGNORE) & (y != IGNORE)))
    return torch.from_numpy(out).to(target.device), left_out


def label_diameters(classes: ClassTable, config: TrainConfig) -> dict[str, float]:
    """Weak-label diameter (voxels) of each class."""
    if config.diameter is not None:
        return {c.name: float(config.diameter) for c in classes}
    return {
        c.name: float(min(c.diameter, max(config.min_label_diameter, round(config.label_scale * c.diameter))))
        for c in classes
    }


def nms_defaults(classes: ClassTable, config: TrainConfig) -> dict[str, dict]:
    """MP-NMS settings that fit the labels: mean-filter size and fill ball from the label's."""
    diam = label_diameters(classes, config)
    return {name: {"kernel": max(3, int(round(d / 2)) | 1), "fill_diameter": float(d)} for name, d in diam.items()}


NEGATIVE_SHARE = 0.25  # at most this share of the crops centred on a pick are centred on a rejection


def _sample(v: _Volume, rng: np.random.Generator, crop, config: TrainConfig) -> list[int]:
    lo, hi = v.box()
    hi = [max(a, h - c) for a, h, c in zip(lo, hi, crop)]
    if len(v.positives) and rng.random() < config.positive_fraction:
        if config.answer_share > 0 and v.answered is not None and len(v.answered) and rng.random() < config.answer_share:
            i = v.answered[rng.integers(len(v.answered))]
        else:
            k = rng.integers(len(v.positives))
            n_neg = len(v.positives) - v.n_pos
            if v.n_pos and k >= v.n_pos and n_neg > NEGATIVE_SHARE * len(v.positives):
                # rejections outnumber: a centred crop lands on one NEGATIVE_SHARE of the time, so a
                # user who rejected hundreds of candidates still trains on the particles
                if rng.random() >= NEGATIVE_SHARE * len(v.positives) / n_neg:
                    k = rng.integers(v.n_pos)
            if config.balance_classes and k < v.n_pos and _unbalanced(v.class_groups):
                group = v.class_groups[rng.integers(len(v.class_groups))]  # a class, then one of its picks
                k = group[rng.integers(len(group))]
            i = v.positives[k]
        j = rng.uniform(-config.jitter, config.jitter, 3) * np.asarray(crop)
        start = v.zyx[i] + j - np.asarray(crop) / 2
    else:
        start = [rng.uniform(a, h + 1) for a, h in zip(lo, hi)]
    return [int(np.clip(int(s), a, h)) for s, a, h in zip(start, lo, hi)]


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, rot90: bool = False):
    """Flips about each axis, a quarter turn about z (``rot90``), contrast and noise.

    Every flip keeps a missing wedge about y where it is; a quarter turn about z turns it
    into a wedge about x, which the tomograms to pick never have (``rot90=False`` draws
    the same random numbers and turns by 0 or 180 degrees only)."""
    for ax in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    if x.shape[1] == x.shape[2]:
        k = int(rng.integers(4))
        if not rot90:
            k -= k % 2
        if k:
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
    a = rng.uniform(0.85, 1.15)
    b = rng.uniform(-0.15, 0.15)
    x = x * a + b
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.02, 0.15), x.shape).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y)


def loss_fn(logits: torch.Tensor, target: torch.Tensor, n_classes: int, weights, config: TrainConfig,
            voxel_weight: torch.Tensor | None = None):
    """Cross-entropy (+ label smoothing, class weights) plus multi-class soft Dice.

    ``voxel_weight`` (optional, the target's shape) scales each voxel's share of both."""
    valid = target != IGNORE
    tgt = torch.where(valid, target, torch.zeros_like(target)).long()
    vm = valid.float() if voxel_weight is None else valid.float() * voxel_weight
    loss = logits.new_zeros(())
    if config.ce_weight:
        ce = F.cross_entropy(
            logits.float(), tgt, weight=weights, reduction="none", label_smoothing=config.label_smoothing
        )
        w = weights[tgt] if weights is not None else torch.ones_like(ce)
        loss = loss + config.ce_weight * (ce * vm).sum() / (w * vm).sum().clamp_min(1.0)
    if config.dice_weight:
        p = torch.softmax(logits.float(), dim=1)
        oh = F.one_hot(tgt, n_classes + 1).permute(0, 4, 1, 2, 3).float()
        vm = vm[:, None]
        p, oh = p * vm, oh * vm
        dims = (0, 2, 3, 4)
        inter = (p * oh).sum(dims)[1:]
        denom = (p + oh).sum(dims)[1:]
        dice = (2 * inter + 1.0) / (denom + 1.0)
        loss = loss + config.dice_weight * (1 - dice.mean())
    if config.discriminate and n_classes > 1:
        fg = (tgt > 0).float() * (valid.float() if voxel_weight is None else valid.float() * voxel_weight)
        if float(fg.sum()) > 0:
            ce_fg = F.cross_entropy(logits.float()[:, 1:], (tgt - 1).clamp_min(0), reduction="none")
            loss = loss + config.discriminate * (ce_fg * fg).sum() / fg.sum()
    return loss


def _auto_weights(vols, classes, config, crop, rng, n_classes) -> np.ndarray:
    """Inverse-sqrt-frequency class weights from labelled crops, clipped to [1, 10]."""
    counts = np.zeros(n_classes + 1)
    for _ in range(12):
        v = vols[rng.integers(len(vols))]
        st = _sample(v, rng, crop, config)
        lab = _crop_labels(v, st, crop, classes, config)
        counts += np.bincount(lab[lab != IGNORE].ravel(), minlength=n_classes + 1)[: n_classes + 1]
    freq = counts / max(counts.sum(), 1)
    w = np.ones(n_classes + 1)
    for k in range(1, n_classes + 1):
        if freq[k] > 0:
            w[k] = np.sqrt(freq[0] / freq[k])
    return np.clip(w / w[0], 1.0, 10.0)
