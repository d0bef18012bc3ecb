"""Training: sub-tomogram sampling, augmentation, Dice + cross-entropy, validation by
the recall-weighted F-alpha after MP-NMS, best-checkpoint keeping, cancel and time budget.

The loop never prints: it reports through :class:`~.progress.Progress` and an
``on_epoch`` callback (the GUI plots the history, the CLI prints it).
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from .binning import DEFAULT_BINNING, auto_binning, binned_tomogram, classes_binned, picks_to_binned
from .classes import ClassTable
from .errors import Cancelled, CryoPickerError, CryoPickerWarning
from .labels import IGNORE, make_labels
from .model import Checkpoint, ModelConfig, ResUNet, cudnn_autotune, resolve_device, save_checkpoint
from .nms import NMSParams, mp_nms
from .picks import Picks
from .progress import Progress, ensure
from .tomogram import Tomogram, normalise, robust_normalisation


@dataclass
class TrainConfig:
    epochs: int = 40
    time_limit: float | None = None        # seconds; stops early (best model kept)
    device: str = "auto"
    seed: int = 0
    patch: int = 48                         # training crop edge (voxels, multiple of 8)
    batch_size: int = 4
    steps_per_epoch: int = 24
    lr: float = 3e-3
    weight_decay: float = 1e-4
    # Learning rate: linear warm-up over the first warmup_epochs, then a cosine down to 3 %
    # of lr at the last step. The schedule follows steps, never the clock: with a
    # time_limit the number of epochs is planned once the warm-up has run (from its
    # measured epoch time), so a run with the same seed, data and epoch count repeats the
    # same arithmetic (on CPU, bit for bit) whatever the machine's speed.
    warmup_epochs: int = 2
    label_mode: str = "tball"
    diameter: float | None = None           # one label diameter for every class (paper: 7)
    label_scale: float = 0.5                # else label diameter = label_scale x class diameter
    min_label_diameter: float = 7.0
    f_maps: tuple[int, ...] = (8, 16, 32, 48)
    coord_conv: bool = False
    pyramid: bool = True
    positive_fraction: float = 0.75          # crops centred on a labelled particle
    jitter: float = 0.4                      # centre jitter, fraction of the patch
    val_fraction: float = 0.15               # share of each tomogram held out (a slab)
    val_every: int = 1
    f_alpha: float = 3.0                     # validation score: F-beta with beta = alpha
    select_tolerance: float = 0.03           # F-alpha this close to the best counts as as good: lower loss wins
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str | Sequence[float] | None = "auto"
    lowpass: float = 0.0                     # Gaussian sigma (voxels) applied to the input
    augment: bool = True
    amp: bool = True                         # mixed precision on CUDA
    tune_thresholds: bool = True             # pick MP-NMS t_lm per class on validation
    checkpoint_path: str | None = None       # save the best model here (atomically) after each better epoch
    sparse: bool = False                     # not every particle is picked: see _ignore_unpicked_blobs
    sparse_warmup: float = 0.25              # share of training before unpicked blobs are left out
    # Unclicked particles are not background: background voxels farther than
    # known_radius x (the pick's class diameter) from every pick (and rejection) weigh
    # unlabelled_weight in the loss (0: left out; 1: everything unclicked is background).
    unlabelled_weight: float = 1.0
    known_radius: float = 1.0
    # Work on the tomogram block-mean binned by this factor ("auto": the largest that keeps
    # the smallest class >= 7 voxels across; see core.binning). Fine-tuning keeps the
    # factor of the model it starts from.
    binning: int | str = DEFAULT_BINNING
    # How validation sets each class's MP-NMS threshold: "clicks" (half the held-out clicks'
    # median score, see _threshold_from_clicks) or "f1" (the best F1 against the held-out
    # clicks, which counts unclicked particles as false picks).
    threshold_rule: str = "clicks"
    # Validate and keep an exponential moving average of the weights and batch-norm
    # statistics (decay per step; 0: the raw weights), which smooths the step-to-step
    # noise of small batches: see docs/method.md.
    ema: float = 0.0
    # Weight of a second cross-entropy among the particle classes only, on the voxels
    # labelled as a particle: the class decision (mitoribosome or ribosome?) gets its own
    # gradient instead of drowning in the particle-or-background one. 0: off.
    discriminate: float = 0.0
    # Self-labelling (0: off): at this share of the planned steps, the network picks the
    # training part of each tomogram, and the unclicked particles it finds as surely as the
    # clicked ones (score >= self_label_score x the median score of its picks on the
    # clicks, at most self_label_max x the clicks per class) become picks of their class
    # for the rest of the run, instead of background that contradicts the clicks.
    self_label: float = 0.0
    self_label_score: float = 0.75
    self_label_max: float = 2.0
    # Live training (the GUI's live mode): no planned end but ``epochs`` or a Stop; after the
    # warm-up the learning rate runs cosine cycles, the first ``cycle_epochs`` long, each
    # next one twice as long from half the peak (warm restarts, SGDR with T_mult 2): every
    # cycle ends low, so its last network is a settled one, and later cycles fine-tune.
    continuous: bool = False
    cycle_epochs: int = 10

    def to_dict(self) -> dict:
        d = asdict(self)
        d["f_maps"] = list(self.f_maps)
        if d["checkpoint_path"] is not None:
            d["checkpoint_path"] = os.fspath(d["checkpoint_path"])
        if d["class_weights"] is not None and not isinstance(d["class_weights"], str):
            d["class_weights"] = [float(w) for w in d["class_weights"]]
        return d


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


@dataclass
class TrainState:
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int | None = None
    best_key: tuple = (-math.inf, -math.inf)
    top_score: float = -math.inf  # the best validation F-alpha seen
    best_score: float | None = None
    best_nms: dict = field(default_factory=dict)


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


def _val_split(tomo: Tomogram, picks: Picks, classes: ClassTable, fraction: float, crop) -> tuple:
    """Hold out a slab at the end of the longest in-plane axis with ~fraction of the picks."""
    shape = tomo.shape
    if fraction <= 0:
        return None, None, list(shape)
    axis = 2 if shape[2] >= shape[1] else 1
    pos = picks.select(source=["manual", "accepted", "imported", "predicted"])
    coords = np.sort(pos.zyx[:, axis]) if len(pos) else np.zeros(0)
    n_val = int(round(len(coords) * fraction))
    rmax = max(classes.diameters) / 2 if len(classes) else 4
    if n_val < 2:
        return None, None, list(shape)
    cut = int(math.floor(coords[len(coords) - n_val] - rmax))
    cut = min(cut, shape[axis] - crop[axis])  # the val slab is at least one crop wide
    if cut < crop[axis]:
        return None, None, list(shape)
    region = [slice(0, s) for s in shape]
    region[axis] = slice(cut, shape[axis])
    # cap the val region so validation stays cheap on big tomograms
    other = 1 if axis == 2 else 2
    if shape[other] > 256:
        inside = pos.zyx[pos.zyx[:, axis] >= cut + rmax]
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
    lo = np.array([r.start for r in region], float)
    hi = np.array([r.stop for r in region], float)
    zyx = pos.zyx
    m = np.all((zyx >= lo + rmax * 0.5) & (zyx < hi - rmax * 0.5), axis=1)
    m &= zyx[:, axis] >= cut + rmax  # whole particles only
    truth = pos.subset(m)
    if len(truth) < 2:
        return None, None, list(shape)
    train_hi = list(shape)
    train_hi[axis] = cut
    return region, truth, train_hi


def _prepare(tomograms, picks_list, classes, config: TrainConfig, crop) -> list[_Volume]:
    vols = []
    for tomo, picks in zip(tomograms, picks_list):
        picks = picks.copy()
        inside = picks.inside(tomo.shape)
        picks = picks.subset(inside)
        c, s = robust_normalisation(tomo.data)
        region, truth, train_hi = _val_split(tomo, picks, classes, config.val_fraction, crop)
        zyx = np.rint(picks.zyx).astype(np.int64) if len(picks) else np.zeros((0, 3), np.int64)
        rej = (picks.table["source"] == "rejected").to_numpy()
        in_train = np.all(zyx < np.asarray(train_hi)[None, :], axis=1) if len(zyx) else np.zeros(0, bool)
        pos_idx = np.flatnonzero(~rej & in_train)
        neg_idx = np.flatnonzero(rej & in_train)
        v = _Volume(tomo, c, s, zyx, picks, np.concatenate([pos_idx, neg_idx]), train_hi, region, truth,
                    n_pos=len(pos_idx))
        vols.append(v)
    return vols


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
        in_train = np.all(zyx < np.asarray(v.train_hi)[None, :], axis=1) if len(zyx) else np.zeros(0, bool)
        pos_idx, neg_idx = np.flatnonzero(~rej & in_train), np.flatnonzero(rej & in_train)
        if v.val_region is not None:
            pos = picks.select(source=["manual", "accepted", "imported", "predicted"])
            lo = np.array([r.start for r in v.val_region], float)
            hi = np.array([r.stop for r in v.val_region], float)
            axis = next((i for i in (2, 1) if v.train_hi[i] < v.tomo.shape[i]), 2)
            m = np.all((pos.zyx >= lo + rmax * 0.5) & (pos.zyx < hi - rmax * 0.5), axis=1)
            m &= pos.zyx[:, axis] >= v.train_hi[axis] + rmax
            if m.sum() >= 2:
                v.val_truth = pos.subset(m)
        v.zyx, v.picks, v.positives, v.n_pos = zyx, picks, np.concatenate([pos_idx, neg_idx]), len(pos_idx)
        after += len(picks)
    if not any(v.n_pos for v in vols):
        raise CryoPickerError("no picks left inside the training part of the tomogram(s)")
    return f"{before} -> {after} picks and rejections"


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
    labels = make_labels(crop, v.picks.subset(m), classes, config.label_mode, diam, origin=start,
                         rejected=negatives)
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


def _sample(v: _Volume, rng: np.random.Generator, crop, config: TrainConfig) -> list[int]:
    hi = [h - c for h, c in zip(v.train_hi, crop)]
    if min(hi) < 0:
        hi = [max(0, h) for h in hi]
    if len(v.positives) and rng.random() < config.positive_fraction:
        i = v.positives[rng.integers(len(v.positives))]
        j = rng.uniform(-config.jitter, config.jitter, 3) * np.asarray(crop)
        start = v.zyx[i] + j - np.asarray(crop) / 2
    else:
        start = [rng.uniform(0, h + 1) for h in hi]
    return [int(np.clip(int(s), 0, h)) for s, h in zip(start, hi)]


def _augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator):
    for ax in range(3):
        if rng.random() < 0.5:
            x, y = np.flip(x, ax), np.flip(y, ax)
    if x.shape[1] == x.shape[2]:
        k = int(rng.integers(4))
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


def _ema_model(net: ResUNet, decay: float):
    """An exponential moving average of ``net``'s weights and batch-norm buffers (torch's
    AveragedModel; the first update copies), or None for ``decay`` 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _copy_state(net) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def _init_from(net: ResUNet, init: Checkpoint, classes: ClassTable) -> None:
    """Load weights of ``init``; map head channels by class name when the classes differ."""
    src = init.state_dict
    own = net.state_dict()
    for k, v in src.items():
        if k in own and own[k].shape == v.shape and not k.startswith("head."):
            own[k] = v.clone()
    old = ["__background__"] + init.classes.names
    new = ["__background__"] + classes.names
    for k in ("head.weight", "head.bias"):
        if k in src:
            for j, name in enumerate(new):
                if name in old:
                    own[k][j] = src[k][old.index(name)]
    net.load_state_dict(own)


def validate(net, vols, classes, config, device, crop, n_classes, weights, multiple, nms_grid=None):
    """Loss over the held-out slabs and F-alpha of MP-NMS picks against their truth.

    Returns (val_loss, f_alpha, best per-class t_lm dict).
    """
    from .metrics import evaluate, fbeta
    from .predict import PredictConfig, segment

    losses, labels, confs, truths, known = [], [], [], [], []
    net.eval()
    with torch.inference_mode():
        for v in vols:
            if v.val_region is None:
                continue
            shape = [r.stop - r.start for r in v.val_region]
            origin = [r.start for r in v.val_region]
            cfg = PredictConfig(device=str(device), tile=256, margin=8, batch_size=1)
            cfg.keep_probability = True
            lab, conf, full = segment(
                v.tomo, net, n_classes, multiple, cfg, device, (v.centre, v.scale),
                region=v.val_region, lowpass=config.lowpass,
            )
            target = _crop_labels(v, origin, shape, classes, config)
            # the stitched probabilities are on the CPU, whatever device ran the network
            logp = torch.log(torch.from_numpy(full.astype(np.float32)).clamp_min(1e-6))[None]
            target_t, vw = _voxel_weights(torch.from_numpy(target.astype(np.int64))[None], config)
            losses.append(float(loss_fn(logp, target_t, n_classes, weights.cpu(), config, vw)))
            labels.append(lab)
            confs.append(conf)
            truth = v.val_truth.copy()
            for a, c in zip(("z", "y", "x"), origin):
                truth.table[a] = truth.table[a] - c
            truths.append(truth)
            known.append(_known_centres(v, origin, classes, config))
    if not labels:
        return None, None, {}
    grid = sorted(nms_grid or [NMSParams().t_lm])
    # Greedy suppression keeps the stronger pick, so thresholding the scores after MP-NMS
    # equals running MP-NMS at each threshold: run it once at the lowest one.
    base = nms_defaults(classes, config)
    params = {name: {**p, "t_lm": grid[0], "min_fill": 0.0} for name, p in base.items()}
    found = []
    for i, (lab, conf) in enumerate(zip(labels, confs)):
        p = mp_nms(lab, conf, classes, params, tomogram=f"v{i}")
        if config.unlabelled_weight < 1.0 and len(p):
            # picks far from every click may be unclicked particles: neither right nor wrong
            p = p.subset(_near(p.zyx, *known[i]))
        found.append(p)
    pr_all = Picks.concat(found)
    tr = Picks.concat([t_.with_tomogram(f"v{i}") for i, t_ in enumerate(truths)])
    per_class_scores = {c.name: {} for c in classes}
    fill = pr_all.table["fill"].to_numpy() if len(pr_all) else np.zeros(0)
    for t in grid:
        for f in FILL_GRID:
            rep = evaluate(pr_all.subset((pr_all.table["score"].to_numpy() >= t) & (fill >= f)), tr, classes,
                           beta=config.f_alpha)
            for c in classes:
                cs = rep.per_class.get(c.name)
                if cs is not None:
                    per_class_scores[c.name][(t, f)] = (cs.tp, cs.fp, cs.fn)
    best_t = {}
    tp = fp = fn = 0
    for c in classes:
        sc = per_class_scores[c.name]
        if not sc:
            continue
        # the shipped threshold maximises F1 (the user's balance of misses and false picks);
        # the epoch is scored by the recall-weighted F-alpha at the alpha-optimal threshold
        def pref(k):  # on ties prefer the default score threshold and the loosest fill
            return -abs(k[0] - NMSParams().t_lm), -k[1]

        # (with sparse picks the held-out truth is incomplete, so its "false" picks are partly
        # unpicked particles: there the threshold maximises the recall-weighted F-alpha too)
        ship_beta = config.f_alpha if config.sparse else 1.0
        best_t[c.name] = max(sc, key=lambda k: (fbeta(*_pr(*sc[k]), ship_beta), *pref(k)))
        if config.threshold_rule == "clicks":
            best_t[c.name] = (_threshold_from_clicks(pr_all, tr, c, grid)
                              or _threshold_from_top_picks(pr_all, tr, c, grid))
        t_alpha = max(sc, key=lambda k: (fbeta(*_pr(*sc[k]), config.f_alpha), *pref(k)))
        a, b, d = sc[t_alpha]
        tp, fp, fn = tp + a, fp + b, fn + d
    f = fbeta(*_pr(tp, fp, fn), config.f_alpha)
    return float(np.mean(losses)), float(f), best_t


FILL_GRID = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6)


def _threshold_from_clicks(found: Picks, truth: Picks, c, grid) -> tuple[float, float] | None:
    """(t_lm, min_fill) of class ``c`` from the held-out clicks alone: half the median score
    and fill of the picks that found them.

    A user clicks some of the particles, so validation picks away from the clicks are
    partly unclicked particles: counting them as false picks pushes a tuned threshold up
    until most unclicked particles are lost (seen: proteasome t_lm 0.7 and min_fill 0.6 on
    the realistic benchmark; recall 0.46 where 0.95 was there at 0.4 and no fill test). A
    network taught with a share c of the particles clicked scores them about c times what
    it would with all clicked (Elkan and Noto, KDD 2008), clicked and unclicked alike; half
    the held-out clicks' median score is the 0.5 probability of that scale. None when fewer
    than two held-out clicks were found."""
    from scipy.spatial import cKDTree

    p = found.select(class_name=c.name)
    t = truth.select(class_name=c.name)
    if len(p) == 0 or len(t) < 2:
        return None
    scores, fills = [], []
    tomos = p.table["tomogram"].to_numpy()
    for tomo in np.unique(t.table["tomogram"].to_numpy()):
        pm = tomos == tomo
        tt = t.table["tomogram"].to_numpy() == tomo
        if not pm.any():
            continue
        d, i = cKDTree(p.zyx[pm]).query(t.zyx[tt], distance_upper_bound=c.radius)
        hit = np.isfinite(d)
        scores += list(p.table["score"].to_numpy()[pm][i[hit]])
        fills += list(p.table["fill"].to_numpy()[pm][i[hit]]) if "fill" in p.table else [1.0] * int(hit.sum())
    if len(scores) < 2:
        return None
    lo, hi = min(grid), max(grid)
    return float(np.clip(0.5 * np.median(scores), lo, hi)), float(np.clip(0.5 * np.median(fills), 0.0, 0.6))


def _threshold_from_top_picks(found: Picks, truth: Picks, c, grid) -> tuple[float, float]:
    """The fallback of :func:`_threshold_from_clicks` when (almost) no held-out click of
    class ``c`` was found, as happens when the network is still unsure between two similar
    classes: half the median score (and fill) of the class's best validation picks, as many
    as there are held-out clicks; the lowest grid value when there are none.

    Measured on the realistic benchmark (seed 1): the old fallback, the F1 rule's tie at the
    default 0.3, kept 15 % of the mitoribosomes (F1 0.21) where their scores were 0.1-0.3;
    at 0.1 the same model finds 74 % (F1 0.69). Lower thresholds cost little there because
    MP-NMS leaves few weak picks where there is no particle."""
    lo, hi = min(grid), max(grid)
    p = found.select(class_name=c.name)
    n = max(2, len(truth.select(class_name=c.name)))
    if len(p) == 0:
        return float(lo), 0.0
    order = np.argsort(-p.table["score"].to_numpy())[:n]
    top = p.table["score"].to_numpy()[order]
    fills = p.table["fill"].to_numpy()[order] if "fill" in p.table else np.ones(len(order))
    return float(np.clip(0.5 * np.median(top), lo, hi)), float(np.clip(0.5 * np.median(fills), 0.0, 0.6))


def _self_label(net, vols: list[_Volume], classes: ClassTable, config: TrainConfig, device, n_classes: int,
                multiple: int) -> dict[str, int]:
    """Add the unclicked particles the network finds as surely as the clicked ones to the
    training picks (see ``TrainConfig.self_label``); returns how many per class.

    Only the training part of each volume is picked (the validation slab keeps its own
    truth), and nothing within a class diameter of a pick or rejection is added."""
    from scipy.spatial import cKDTree

    from .predict import PredictConfig, segment

    added = {c.name: 0 for c in classes}
    base = nms_defaults(classes, config)
    params = {name: {**p_, "t_lm": 0.05, "min_fill": 0.0} for name, p_ in base.items()}
    net.eval()
    with torch.inference_mode():
        for v in vols:
            region = tuple(slice(0, int(h)) for h in v.train_hi)
            cfg = PredictConfig(device=str(device), tile=256, margin=8, batch_size=1)
            lab, conf, _ = segment(v.tomo, net, n_classes, multiple, cfg, device, (v.centre, v.scale),
                                   region=region, lowpass=config.lowpass)
            found = mp_nms(lab, conf, classes, params)
            if len(found) == 0:
                continue
            known = v.picks
            names = known.table["class_name"].to_numpy()
            clicked = (known.table["source"] != "rejected").to_numpy()
            new = []
            for c in classes:
                fc = found.select(class_name=c.name)
                mine = known.subset(clicked & (names == c.name))
                if len(fc) == 0 or len(mine) < 2:
                    continue
                d, i = cKDTree(fc.zyx).query(mine.zyx, distance_upper_bound=c.radius)
                on_clicks = fc.table["score"].to_numpy()[i[np.isfinite(d)]]
                if len(on_clicks) < 2:
                    continue
                floor = config.self_label_score * float(np.median(on_clicks))
                far = cKDTree(known.zyx).query(fc.zyx)[0] > c.diameter
                sc = fc.table["score"].to_numpy()
                keep = np.flatnonzero(far & (sc >= floor))
                keep = keep[np.argsort(-sc[keep])][: int(config.self_label_max * len(mine))]
                if len(keep):
                    new.append(Picks.from_zyx(fc.zyx[keep], class_name=c.name, score=sc[keep], source="predicted",
                                              tomogram=str(known.table["tomogram"].iloc[0]),
                                              voxel_size=known.voxel_size))
                    added[c.name] += len(keep)
            if new:
                v.picks = Picks.concat([v.picks, *new])
                first = len(v.zyx)
                v.zyx = np.rint(v.picks.zyx).astype(np.int64)
                extra = np.arange(first, len(v.zyx))
                v.positives = np.concatenate([v.positives, extra])
                v.n_pos += len(extra)
    return added


def _pr(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r


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


def train_model(
    tomograms: Sequence[Tomogram],
    picks: Sequence[Picks],
    classes: ClassTable,
    config: TrainConfig | None = None,
    init: Checkpoint | None = None,
    progress: Progress | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_model: Callable[[Checkpoint], None] | None = None,
    refresh: Callable[[], Sequence[Picks] | None] | None = None,
) -> Checkpoint:
    """Train (or fine-tune from ``init``) a ResUNet on picks in one or more tomograms.

    Stops after ``epochs`` or ``time_limit`` seconds, or at the next batch after
    ``progress.cancel()``; returns the best checkpoint (by validation F-alpha, else by
    training loss). Raises :class:`Cancelled` only if cancelled before any epoch ended.
    ``on_model`` gets a checkpoint of the network as it is after each epoch (live
    suggestions while training; called in the training thread, which waits for it).
    ``refresh`` is asked before every epoch but the first for the picks as they are now
    (one table per tomogram, or None: unchanged): the user's clicks and answers go into the
    running training without restarting it. Picks of classes outside ``classes`` are left
    out; an update training cannot use (a class with no picks left) is skipped, noted in the
    epoch's record.
    """
    config = config or TrainConfig()
    progress = ensure(progress)
    t_start = time.monotonic()
    tomograms, picks = list(tomograms), list(picks)
    if len(tomograms) != len(picks) or not tomograms:
        raise CryoPickerError("give one picks table per tomogram (and at least one tomogram)")
    if len(classes) == 0:
        raise CryoPickerError("define at least one particle class (name and diameter)")
    vs = [t.voxel_size for t in tomograms]
    if max(vs) > min(vs) * 1.05:
        raise CryoPickerError(
            f"training tomograms have different voxel sizes {sorted(set(vs))}; bin them to one voxel size"
        )
    picks = _checked_picks(tomograms, picks, classes, config)
    device = resolve_device(config.device)
    if config.threshold_rule not in ("clicks", "f1"):
        raise CryoPickerError(f"threshold_rule must be 'clicks' or 'f1', not {config.threshold_rule!r}")
    if not (config.ema == 0 or 0.0 < config.ema < 1.0):
        raise CryoPickerError(f"ema must be 0 (off) or between 0 and 1 (a decay per step), not {config.ema}")
    factor = training_binning(classes, config, init)
    work_classes = classes
    given = list(tomograms)  # as the caller gave them (refresh's picks are in their voxels)
    if factor > 1:
        tomograms = [binned_tomogram(t, factor, progress) for t in tomograms]
        picks = [picks_to_binned(p, factor) for p in picks]
        work_classes = classes_binned(classes, factor)
    out = (classes, factor)
    def renewed() -> list[Picks] | None:
        new = refresh() if refresh is not None else None
        if new is None:
            return None
        new = [p.subset(p.table["class_name"].isin(classes.names).to_numpy()
                        | (p.table["source"] == "rejected").to_numpy()) for p in new]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryoPickerWarning)  # said once, at the start
            new = _checked_picks(given, new, classes, config)
        return [picks_to_binned(p, factor) for p in new] if factor > 1 else new

    with cudnn_autotune(device):
        return _train(tomograms, picks, work_classes, config, init, progress, on_epoch, device, vs, t_start, out,
                      on_model, renewed if refresh is not None else None)


def training_binning(classes: ClassTable, config: TrainConfig, init: Checkpoint | None = None) -> int:
    """The binning factor training works at (the model's own when fine-tuning)."""
    if init is not None:
        return init.binning
    if isinstance(config.binning, str):
        if config.binning != "auto":
            raise CryoPickerError(f"binning must be a whole number or 'auto', not {config.binning!r}")
        return auto_binning(classes)
    f = int(config.binning or 1)
    if f < 1:
        raise CryoPickerError(f"binning must be at least 1, not {config.binning}")
    return f


def _train(tomograms, picks, classes, config, init, progress, on_epoch, device, vs, t_start, out,
           on_model=None, refresh=None) -> Checkpoint:
    """train_model on checked inputs (cuDNN's autotuning on, on a GPU), on the working grid:
    ``classes`` in its voxels; ``out`` = (the user's class table, the binning factor)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    n_classes = len(classes)
    if init is not None:
        mcfg = init.model_config
        mcfg = ModelConfig(**{**mcfg.__dict__, "n_classes": n_classes})
    else:
        mcfg = ModelConfig(n_classes=n_classes, f_maps=tuple(config.f_maps), coord_conv=config.coord_conv,
                           pyramid=config.pyramid)
    net = ResUNet(mcfg)
    if init is not None:
        _init_from(net, init, classes)
    net.to(device=device, memory_format=torch.channels_last_3d)
    ema_net = _ema_model(net, config.ema)
    eval_net = net if ema_net is None else ema_net.module
    crop = _crop_shape(tomograms[0].shape, config.patch, mcfg.multiple)
    for t in tomograms[1:]:
        crop = tuple(min(a, b) for a, b in zip(crop, _crop_shape(t.shape, config.patch, mcfg.multiple)))
    vols = _prepare(tomograms, picks, classes, config, crop)
    if not any(v.n_pos for v in vols):
        raise CryoPickerError("no picks lie inside the training part of the tomogram(s)")
    if config.val_fraction > 0 and not any(v.val_region is not None for v in vols) and not _few_for_val(
            tomograms, picks, config):
        warnings.warn(
            "no validation slab could be held out (the picks crowd one edge of a small tomogram); "
            "training without validation: the epoch with the lowest training loss is kept",
            CryoPickerWarning, stacklevel=2,
        )
    if isinstance(config.class_weights, str) and config.class_weights == "auto":
        w = _auto_weights(vols, classes, config, crop, np.random.default_rng(config.seed + 1), n_classes)
    elif config.class_weights is None:
        w = np.ones(n_classes + 1)
    else:
        w = np.asarray(config.class_weights, float)
    weights = torch.tensor(w, dtype=torch.float32, device=device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    use_amp = config.amp and device.type == "cuda"
    amp_dtype = torch.bfloat16 if (use_amp and torch.cuda.is_bf16_supported()) else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    has_val = any(v.val_region is not None for v in vols)
    grid = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] if config.tune_thresholds else None
    state = TrainState(history=list(init.history) if init is not None else [])
    epoch0 = len(state.history)
    step = 0
    val_seconds = 0.0
    cancelled = False

    plan = _Plan(config)
    warmup = plan.warmup_steps()
    self_labelled = False

    def frac_done() -> float:
        """The share of the run done, for the progress bar (the clock counts)."""
        f = step / plan.total_steps
        if config.time_limit:
            f = max(f, (time.monotonic() - t_start) / config.time_limit)
        return min(1.0, f)

    def lr_at(s: int) -> float:
        if s < warmup:
            return config.lr * (0.1 + 0.9 * s / warmup)
        peak = 1.0
        if config.continuous:
            into, period = s - warmup, max(1, int(config.cycle_epochs)) * config.steps_per_epoch
            while into >= period:  # each cycle twice as long as the one before, from half its peak
                into, period, peak = into - period, 2 * period, peak / 2
            q = into / period
        else:
            q = (s - warmup) / max(1, plan.total_steps - warmup)
        return config.lr * peak * (0.03 + 0.97 * 0.5 * (1 + math.cos(math.pi * min(1.0, q))))

    renewed_note = None
    for epoch in range(config.epochs):
        if epoch >= plan.epochs:
            break
        if refresh is not None and epoch > 0:
            try:
                new = refresh()
                if new is not None:
                    renewed_note = _renew(vols, new, classes)
            except CryoPickerError as e:
                renewed_note = f"not used: {e}"
        net.train()
        t_ep = time.monotonic()
        ep_losses, ep_left_out = [], []
        try:
            for _ in range(config.steps_per_epoch):
                progress.check()
                xs, ys = [], []
                for _b in range(config.batch_size):
                    v = vols[rng.integers(len(vols))]
                    st = _sample(v, rng, crop, config)
                    x = _read_crop(v, st, crop, config.lowpass)
                    y = _crop_labels(v, st, crop, classes, config, negatives=NEGATIVE if config.sparse else 0)
                    if config.augment:
                        x, y = _augment(x, y, rng)
                    xs.append(x)
                    ys.append(y)
                xb = torch.from_numpy(np.stack(xs)[:, None]).to(device).contiguous(
                    memory_format=torch.channels_last_3d)
                yb = torch.from_numpy(np.stack(ys).astype(np.int64)).to(device)
                for g in opt.param_groups:
                    g["lr"] = lr_at(step)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = net(xb)
                yb, vw = _voxel_weights(yb, config)
                if config.sparse:
                    learnt = step >= max(warmup, config.sparse_warmup * plan.total_steps)
                    yb, left_out = _ignore_unpicked_blobs(logits, yb, learnt)
                    ep_left_out.append(left_out)
                loss = loss_fn(logits, yb, n_classes, weights, config, vw)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                if ema_net is not None:
                    ema_net.update_parameters(net)
                ep_losses.append(float(loss.detach()))
                step += 1
                progress.update(int(1000 * frac_done()), 1000, f"epoch {epoch0 + epoch + 1}: loss {ep_losses[-1]:.3f}")
                if config.time_limit and time.monotonic() - t_start + val_seconds > config.time_limit:
                    break
        except Cancelled:
            cancelled = True
        if not ep_losses:
            break
        record = {
            "epoch": epoch0 + epoch + 1,
            "train_loss": float(np.mean(ep_losses)),
            "val_loss": None,
            "val_f1": None,
            "lr": lr_at(max(0, step - 1)),
            "planned_epochs": plan.epochs,
        }
        if config.sparse:
            record["left_out"] = float(np.mean(ep_left_out)) if ep_left_out else 0.0
        if renewed_note is not None:
            record["picks_renewed"], renewed_note = renewed_note, None
        last = (epoch == plan.epochs - 1) or cancelled or (
            config.time_limit is not None and time.monotonic() - t_start + val_seconds > config.time_limit
        )
        if has_val and ((epoch + 1) % config.val_every == 0 or last):
            t_v = time.monotonic()
            vl, vf, best_t = validate(eval_net, vols, classes, config, device, crop, n_classes, weights, mcfg.multiple, grid)
            val_seconds = time.monotonic() - t_v
            record["val_loss"], record["val_f1"] = vl, vf
            record["val_seconds"] = val_seconds
            key = (vf, -vl)
        else:
            best_t = {}
            key = (-math.inf, -record["train_loss"]) if not has_val else None
        record["seconds"] = time.monotonic() - t_ep
        state.history.append(record)
        if key is not None:
            state.top_score = max(state.top_score, key[0])
        if key is not None and _better(key, state, config.select_tolerance):
            state.best_key = key
            state.best_state = _copy_state(eval_net)
            state.best_epoch = record["epoch"]
            state.best_score = record["val_f1"]
            state.best_nms = best_t
            if config.checkpoint_path:  # a kill now still leaves this model on disk
                try:
                    save_checkpoint(_checkpoint(state, mcfg, classes, vs, config, out), config.checkpoint_path)
                except OSError as e:
                    warnings.warn(f"{config.checkpoint_path}: cannot save the model of epoch "
                                  f"{record['epoch']} ({e.strerror or e}); training goes on",
                                  CryoPickerWarning, stacklevel=2)
        plan.after_epoch(epoch + 1, time.monotonic() - t_start)
        if (config.self_label and not self_labelled and plan.planned and not cancelled
                and step >= config.self_label * plan.total_steps):
            self_labelled = True
            record["self_labelled"] = _self_label(eval_net, vols, classes, config, device, n_classes, mcfg.multiple)
        if on_epoch is not None:
            on_epoch(dict(record))
        if on_model is not None and not cancelled:
            now = TrainState(history=list(state.history), best_state=_copy_state(eval_net),
                             best_epoch=record["epoch"], best_score=record["val_f1"], best_nms=best_t or state.best_nms)
            on_model(_checkpoint(now, mcfg, classes, vs, config, out))
        if cancelled or (config.time_limit and time.monotonic() - t_start + val_seconds > config.time_limit):
            break
    if state.best_state is None:
        if cancelled and step == 0:
            raise Cancelled("training was stopped before the first epoch finished; no model was saved")
        state.best_state = _copy_state(eval_net)
        state.best_epoch = state.history[-1]["epoch"] if state.history else None
    return _checkpoint(state, mcfg, classes, vs, config, out)


class _Plan:
    """How many epochs a run trains: ``config.epochs``, or with a time limit as many as fit.

    The count is planned once, after the warm-up epochs (whose learning rates do not
    depend on it), from the last one's measured time (training and validation), so the
    cosine schedule that follows is a function of the step alone and a run can be
    repeated exactly with ``epochs`` set to the planned count (8 or more) and no time limit. It is
    planned again only if the median epoch since then says the run will end a whole epoch
    late (the machine got busier) or 2.5 epochs early; the time limit itself still stops a
    run at once."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.warm_epochs = max(1, min(int(config.warmup_epochs), config.epochs // 4))
        self.epochs = config.epochs
        self.planned = not config.time_limit
        self.last_elapsed = 0.0

    def warmup_steps(self) -> int:
        """Whole warm-up epochs, so a timed run plans after them; a short run (under
        4 x warmup_epochs) warms up over its first 5 % of steps instead, as all runs did
        before session 9."""
        c = self.config
        if c.time_limit or c.epochs >= 4 * max(1, int(c.warmup_epochs)):
            return self.warm_epochs * c.steps_per_epoch
        return max(1, round(0.05 * c.epochs * c.steps_per_epoch))

    @property
    def total_steps(self) -> int:
        return max(1, self.epochs * self.config.steps_per_epoch)

    def after_epoch(self, done: int, elapsed: float) -> None:
        """Called once an epoch (with its validation) is over, ``elapsed`` seconds into the run."""
        limit = self.config.time_limit
        seconds = elapsed - self.last_elapsed  # the whole cycle: training, validation, saving
        self.last_elapsed = elapsed
        if not limit:
            return
        if not self.planned:
            if done < self.warm_epochs:
                return
            # 3 % of the time left to spare, so that the clock's jitter does not cut the last epoch
            self.epochs = min(self.config.epochs, done + max(0, int(0.97 * (limit - elapsed) / max(seconds, 1e-6))))
            self.planned, self.cycles = True, [seconds]
            return
        # the median epoch since the plan (3 or more), so that a one-off pause (self-labelling,
        # a save, another program for a moment) does not shorten the whole run: seen, one
        # 34-s epoch among 23-s ones re-planned 31 epochs down to 25 when the mean was used
        self.cycles.append(seconds)
        if len(self.cycles) < 3:
            return
        typical = max(float(np.median(self.cycles)), 1e-6)
        end = elapsed + (self.epochs - done) * typical
        # a whole epoch late: fewer epochs; 2.5 early (the planning epoch was slow): more
        if end > limit + typical or (end < limit - 2.5 * typical and self.epochs < self.config.epochs):
            self.epochs = min(self.config.epochs, done + max(0, int(0.97 * (limit - elapsed) / typical)))


def _better(key: tuple, state: TrainState, tolerance: float) -> bool:
    """Is the epoch with ``key`` = (validation F-alpha, -validation loss) the new best?

    F-alpha on a few dozen held-out picks moves in steps of one pick (~0.01-0.03) and
    plateaus while the loss still falls; a strict maximum would keep the first lucky epoch
    of the plateau, often a half-trained one (seen: epoch 13 of 25 kept with sparse picks,
    F-alpha 0.747 against 0.739 at epoch 22, whose loss was 17 % lower). So an epoch wins
    by a clearly higher F-alpha, or by a lower loss at an F-alpha within ``tolerance`` of
    the best seen (``state.top_score``, this epoch's included). Without validation,
    key = (-inf, -training loss): lowest loss wins."""
    f = key[0]
    if state.best_epoch is None or f > state.best_key[0] + tolerance:
        return True
    return f >= state.top_score - tolerance and key[1] > state.best_key[1]


def _checkpoint(state: TrainState, mcfg: ModelConfig, classes: ClassTable, vs, config: TrainConfig,
                out: tuple[ClassTable, int]) -> Checkpoint:
    """The checkpoint of the best epoch so far: MP-NMS settings in the working grid's voxels,
    the user's class table and voxel size, and the binning that leads from one to the other."""
    user_classes, factor = out
    post = nms_defaults(classes, config)
    for name, (t, f) in state.best_nms.items():
        post[name]["t_lm"] = float(t)
        post[name]["min_fill"] = float(f)
    return Checkpoint(
        model=mcfg.to_dict(),
        state_dict=state.best_state,
        classes=copy.deepcopy(user_classes),
        voxel_size=float(np.mean(vs)),
        label_mode=config.label_mode,
        normalisation={"method": "percentile", "lo": 0.5, "hi": 99.5, "lowpass": config.lowpass,
                       "binning": int(factor)},
        history=list(state.history),
        train_config=config.to_dict(),
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        postprocess=post,
    )
