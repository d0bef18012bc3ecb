"""Training: the loop, its settings (:class:`TrainConfig`) and schedule, best-checkpoint
keeping, cancel and time budget. What it learns from (volumes, crops, labels, sampling,
augmentation, the loss) is :mod:`.train_data`; validation and thresholds are
:mod:`.train_validate`. The epoch plan and learning rate are :mod:`.train_plan`, the best
epoch, weight averaging, fine-tuning and checkpoint :mod:`.train_state`, the checks of the
inputs :mod:`.train_inputs`.

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
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from .binning import (DEFAULT_BINNING, auto_binning, binning_held_back, classes_binned, picks_to_binned,
                      working_tomogram)
from .classes import ClassTable
from .errors import Cancelled, CryoPickerError, CryoPickerWarning
from .model import Checkpoint, ModelConfig, ResUNet, cudnn_autotune, resolve_device, save_checkpoint
from .picks import Picks
from .progress import Progress, ensure
from .snap import ClickSnapping
from .tomogram import Tomogram
from .train_data import (
    NEGATIVE,
    _augment,
    _auto_weights,
    _crop_labels,
    _crop_shape,
    _ignore_unpicked_blobs,
    _prepare,
    _read_crop,
    _renew,
    _sample,
    _voxel_weights,
    label_diameters,
    loss_fn,
    nms_defaults,
    picks_signature,
)
from .train_inputs import _checked_picks, _few_for_val
from .train_plan import _Plan
from .train_rotate import rotated_sample, rotation_for
from .train_template import LiveTemplates, carried_templates, make_templates, template_classes
from .train_state import TrainState, _better, _checkpoint, _copy_state, _ema_model, _init_from, _Settled
from .train_validate import _self_label, validate

__all__ = ["DEFAULT_MEMBERS", "TrainConfig", "TrainState", "loss_fn", "nms_defaults", "train_model",
           "training_binning", "training_members"]


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
    # Crops centred on a labelled particle (the rest anywhere). 0.9 since session 17: on
    # the realistic benchmark's three seeds the mitoribosome rose on each (mean 0.91 ->
    # 0.94, worst 0.88 -> 0.92; fewer false picks on synthases), the proteasome's mean
    # stayed 0.95 (seed 1: 0.95 -> 0.897), the chaperonin's fell 0.53 -> 0.51 (docs/method.md).
    positive_fraction: float = 0.9
    jitter: float = 0.4                      # centre jitter, fraction of the patch
    val_fraction: float = 0.15               # share of each tomogram held out (a slab)
    # Which slab: 0 the high end of the longest in-plane axis, 1 its low end, 2 and 3 the
    # high and low ends of the other in-plane axis (train_data._val_split).
    val_fold: int = 0
    # Several networks (members): network k holds out slab val_fold + k, so that every
    # click trains most of them (False: all hold out the same slab). Off: on the realistic
    # benchmark's three seeds it moved F1 by -0.01 to -0.03 (session 17, docs/method.md).
    fold_members: bool = False
    val_every: int = 1
    f_alpha: float = 3.0                     # validation score: F-beta with beta = alpha
    select_tolerance: float = 0.03           # F-alpha this close to the best counts as as good: lower loss wins
    ce_weight: float = 1.0
    dice_weight: float = 1.0
    label_smoothing: float = 0.0
    class_weights: str | Sequence[float] | None = "auto"
    lowpass: float = 0.0                     # Gaussian sigma (voxels) applied to the input
    augment: bool = True
    rot90: bool = False                      # quarter turns about z too (they turn the wedge about y into one about x: train_data._augment)
    # Turn rotate_share of the crops by up to ``rotate`` degrees about a random axis
    # (core.train_rotate; 0: off): orientations between those of the clicks, at the price
    # of a missing wedge tilted as much. Not with unlabelled_weight < 1. 30 since session
    # 19: on the realistic benchmark's three seeds the ribosome rose on each (mean 0.95 ->
    # 0.97), the chaperonin on two (mean 0.64 -> 0.66, worst 0.58 -> 0.64), the other two
    # classes held (docs/method.md).
    rotate: float = 30.0
    rotate_share: float = 0.5
    rotate_wedge: float = 0.0                # the tilt range: a turned crop's wedge is cut again where it belongs (0: not)
    # Classes scored by a template averaged from their clicks (core.template): "auto" (each
    # class under TEMPLATE_BELOW voxels across on a binned working grid, where binning holds
    # its detail back, and under TEMPLATE_FULL_BELOW at full resolution), "off", or class
    # names. Built before the networks of a run with a planned end, within its time budget
    # (live training: as the picks come, train_template.LiveTemplates). Since session 20: on the
    # realistic benchmark's three seeds the chaperonin went 0.64-0.69 -> 0.87-0.90, above
    # template matching with the exact map.
    template: str | Sequence[str] = "auto"
    template_tilt_range: float = 60.0        # the data's tilt range (the missing wedge about y), degrees
    # the networks learn from a templated class's clicks moved onto their match with its
    # template (core.train_template.ClickCentring). Off: with every click off-centre
    # (realistic.py --scenario offcentre) seed 1's chaperonin fell from 0.81 to 0.64 with it
    # (seed 0: 0.74 -> 0.76); the template still moves each pick onto its match when picking
    centre_clicks: bool = False
    # the networks learn from the clicks of each class of at least snap.SNAP_MIN_RADIUS
    # voxels moved onto their particle's centre of density (core.snap.ClickSnapping); the
    # user's picks stay where they were clicked. See docs/method.md (session 23).
    snap_clicks: bool = True
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
    # Binned (factor > 1): the network takes the full-resolution crop and folds each
    # factor^3 block into channels (ModelConfig.subvoxels) instead of reading the block
    # means, so it learns what binning would average away at the binned grid's cost.
    subvoxels: bool = False
    # The network's finest decoder block (ModelConfig.fine_decoder). None: without it for a
    # run with a planned end (since session 14: a step is ~0.6x the arithmetic, so the
    # 12-minute run trains 62 epochs instead of 39, for the same F1 on the realistic
    # benchmark's three seeds, and picking is 1.5x faster), with it for live training
    # (``continuous``), whose first suggestions it brought after 2 epochs instead of 5
    # (46 s instead of 81 s; docs/method.md).
    fine_decoder: bool | None = None
    # Share of the crops centred on a pick that are centred on one of the user's answers
    # (accepted or rejected candidates), so that an answer is seen more often than a click
    # (0: answers are drawn like any pick, rejections capped as NEGATIVE_SHARE says).
    answer_share: float = 0.0
    # Crops centred on a pick are centred on each class equally often, whatever its number
    # of picks (classes within train_data.BALANCE_RATIO of each other draw the very crops
    # they would without). Off: on the live benchmark (the chaperonin with 12-15 clicks beside
    # 20-30 of the others) it changed nothing beyond the runs' spread (session 24, docs/method.md).
    balance_classes: bool = False
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
    # Each cycle's peak, relative to the one before. 1.0 (every cycle from the full rate)
    # replayed on one live stream (benchmarks/replay.py, live26p seed 2, session 26): the
    # chaperonin 0.40 -> 0.49 at epoch 53, the other classes within 0.01; one stream, so
    # the default stays.
    cycle_decay: float = 0.5
    # Live training: a cycle during which the user's picks did not change is not followed by
    # another; the rate stays at the floor until they change (train_plan._Plan._live_cycle).
    settle: bool = True
    # Live training: what Stop and "pick now" keep is the mean of the last this many epochs'
    # networks since the picks last changed (train_state._Settled); 1 (or 0): the newest
    # network, the one the suggestions come from. A newest network early in a learning-rate
    # cycle can be mid-swing (session 24: 0.86 -> 0.56 on the ribosome six epochs later);
    # on the live benchmark the mean of 4 held the large classes where the newest swung
    # (0.77-0.84 -> 0.86-0.92) without lagging the class still being learnt, which the mean
    # of 8 did (chaperonin -0.04; benchmarks/README.md, session 25).
    keep_average: int = 4
    # The validation slab's picks are held out of training (they choose the epoch and set
    # the thresholds). Off, they are trained on too, and validation scores picks the network
    # has seen. None: held out, except in live training, which keeps its latest networks
    # whatever validation says (the slab only sets thresholds there), whose slab the first
    # clicks fix, and which would lose 13-35 % of the clicks made later to it; trained on,
    # the ribosome gained on each of three seeds of the live benchmark (+0.05..+0.08), the
    # others within the runs' spread (benchmarks/README.md, session 25).
    hold_out: bool | None = None
    # Train this many networks one after another on the same picks, from different random
    # starts (seed, seed + 1000, ...), each with an equal share of the epochs and of the
    # time budget, and pick with the mean of their class probabilities (model.Ensemble),
    # with the mean of their thresholds. Runs from different starts part ways on similar
    # classes; two halves beat one whole run on the realistic benchmark, three thirds beat
    # two halves (docs/method.md).
    # None: 3 for a run with a planned end, 1 for live training; fine-tuning keeps the
    # model's own count.
    members: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["f_maps"] = list(self.f_maps)
        if d["checkpoint_path"] is not None:
            d["checkpoint_path"] = os.fspath(d["checkpoint_path"])
        if d["class_weights"] is not None and not isinstance(d["class_weights"], str):
            d["class_weights"] = [float(w) for w in d["class_weights"]]
        return d


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
    on_best: Callable[[Checkpoint], None] | None = None,
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
    epoch's record. ``on_best`` gets the model the run would return if it stopped now, each
    time a better epoch is kept (the first network's, when several train): a user can pick
    the whole tomogram with it while training goes on.
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
    if init is None and config.binning == "auto":
        _say_binning_held_back(classes)
    subvoxels = training_subvoxels(config, factor, init)
    with_template = template_classes(classes, config, factor)  # fails fast
    work_classes = classes
    given = list(tomograms)  # as the caller gave them (refresh's picks are in their voxels)
    # a class's template averaged from its clicks (core.template), at full resolution, before
    # the networks (so that every model of the run holds it; with centre_clicks they learn
    # from its clicks moved onto their match)
    # (live training, with no planned end, makes them as the picks come: LiveTemplates)
    made, seconds, centring = make_templates(given, picks, with_template, classes, config, progress) \
        if with_template and not config.continuous else ({}, {}, None)
    # a fine-tuning keeps the templates of the model it started from (those made now replace
    # them); every checkpoint of the run holds them ("pick now", the file saved each epoch)
    templates = {**carried_templates(init, classes, config), **made}
    if config.continuous and with_template:
        centring = LiveTemplates(given, with_template, classes, config, templates, progress)
        seconds = centring.seconds  # (filled as it goes)
        picks = centring.update(picks)
    elif centring is not None and config.centre_clicks:
        picks = centring.apply(picks)
    snapping = _snapping(given, classes, config, with_template, progress)
    if snapping is not None:
        picks = snapping.apply(picks)
        snapping.progress = None  # a Stop later on is the training loop's to handle
    if factor > 1:
        tomograms = [working_tomogram(t, factor, subvoxels > 1, progress) for t in tomograms]
        picks = [picks_to_binned(p, factor) for p in picks]
        work_classes = classes_binned(classes, factor)
    out = (classes, factor, subvoxels, templates)
    def renewed() -> list[Picks] | None:
        new = refresh() if refresh is not None else None
        if new is None:
            return None
        new = [p.subset(p.table["class_name"].isin(classes.names).to_numpy()
                        | (p.table["source"] == "rejected").to_numpy()) for p in new]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryoPickerWarning)  # said once, at the start
            new = _checked_picks(given, new, classes, config)
        if isinstance(centring, LiveTemplates):
            new = centring.update(new)
        elif centring is not None and config.centre_clicks:
            new = centring.apply(new)
        if snapping is not None:
            new = snapping.apply(new)
        return [picks_to_binned(p, factor) for p in new] if factor > 1 else new

    n = training_members(config, init)
    with cudnn_autotune(device):
        if n > 1:
            ckpt = _train_members(n, tomograms, picks, work_classes, config, init, progress, on_epoch, device, vs,
                                  t_start, out, on_model, renewed if refresh is not None else None, on_best)
        else:
            ckpt = _train(tomograms, picks, work_classes, config, init, progress, on_epoch, device, vs, t_start, out,
                          on_model, renewed if refresh is not None else None, on_best)
    if seconds:
        ckpt = replace(ckpt, train_config={**ckpt.train_config, "template_seconds": seconds})
    return ckpt


def _snapping(tomograms, classes: ClassTable, config: TrainConfig, with_template,
              progress: Progress | None = None) -> ClickSnapping | None:
    """What moves the clicks onto their particles' centres (``config.snap_clicks``): every
    class big enough, but those whose clicks their template moves (``centre_clicks``)."""
    if not config.snap_clicks:
        return None
    moved_by_template = set(with_template) if config.centre_clicks else set()
    s = ClickSnapping([t.data for t in tomograms], classes, progress=progress)
    s.names = [n for n in s.names if n not in moved_by_template]
    return s if s.names else None


#: networks of a run with a planned end (TrainConfig.members = None)
DEFAULT_MEMBERS = 3


def training_members(config: TrainConfig, init: Checkpoint | None = None) -> int:
    """How many networks the run trains (``config.members``; see TrainConfig), never more
    than it has epochs."""
    if config.members is None:  # live training goes on from the model's first network
        n = 1 if config.continuous else (init.n_members if init is not None else DEFAULT_MEMBERS)
    else:
        n = int(config.members)
        if n < 1:
            raise CryoPickerError(f"members (networks to train) must be at least 1, not {config.members}")
        if n > 1 and config.continuous:
            raise CryoPickerError("live training trains one network: set members to 1 (or leave it unset)")
    return max(1, min(n, int(config.epochs)))


def _train_members(n, tomograms, picks, classes, config, init, progress, on_epoch, device, vs, t_start, out,
                   on_model=None, refresh=None, on_best=None) -> Checkpoint:
    """:func:`_train` for ``n`` networks one after another (``TrainConfig.members``), joined
    into one ensemble checkpoint. A Stop keeps the networks finished before it (the one it
    cut short too, when it is the first)."""
    from dataclasses import replace

    parts: list[Checkpoint] = []
    history = list(init.history) if init is not None else []
    first_epochs, first_seconds = None, 0.0
    for k in range(n):
        epochs = config.epochs // n + (1 if k < config.epochs % n else 0)
        limit = None
        if config.time_limit:
            left = config.time_limit - (time.monotonic() - t_start)
            if left <= 0:
                break
            # the first network plans its epochs from its share of the time; the others
            # train as many (time allowing), so that every network gets the same steps and
            # the run is repeated exactly by a plain run of n times that count
            limit = left / (n - k) if first_epochs is None else left - (n - k - 1) * first_seconds
            if first_epochs is not None and limit < 0.5 * first_seconds:
                break  # (a slowed machine) a network with under half the first's time would weigh as much
            epochs = epochs if first_epochs is None else min(epochs, first_epochs)
        sub = replace(config, seed=config.seed + 1000 * k, epochs=epochs, time_limit=limit, members=1,
                      val_fold=config.val_fold + (k if config.fold_members else 0),
                      checkpoint_path=config.checkpoint_path if k == 0 else None)
        own = init.member(k % init.n_members) if init is not None else None
        # the network's own epochs count on from its start; the run's from the last record
        offset = len(history) - (len(own.history) if own is not None else 0)

        def report(done, total, message, k=k):
            progress.update(k * total + done, n * total, f"network {k + 1} of {n}, {message}")

        def on_member_epoch(record, k=k, offset=offset):
            if on_epoch is not None:
                on_epoch({**record, "epoch": record["epoch"] + offset, "member": k + 1})

        start = len(own.history) if own is not None else 0
        t_member = time.monotonic()
        try:
            # live suggestions come from the first network (a later one starts from scratch):
            # after each epoch of a later one, the first's best again, for the region in view now
            model_hook = on_model if k == 0 or on_model is None else (lambda _ck, first=parts[0]: on_model(first))
            part = _train(tomograms, picks, classes, sub, own, Progress(report, progress.cancel_event),
                          on_member_epoch, device, vs, time.monotonic(), out, model_hook, refresh,
                          on_best if k == 0 else None)
        except Cancelled:
            if not parts:
                raise
            break
        if progress.cancelled and parts:
            break  # a network cut short would weigh as much as a finished one
        new = part.history[start:]
        if first_epochs is None:
            first_epochs, first_seconds = len(new), time.monotonic() - t_member
        history += [{**r, "epoch": r["epoch"] + offset, "member": k + 1} for r in new]
        if part.best_epoch is not None:
            part.best_epoch = part.best_epoch + offset
        parts.append(part)
        if progress.cancelled:
            break
    ens = _join_members(parts, history, config)
    if config.checkpoint_path and len(parts) > 1:
        try:
            save_checkpoint(ens, config.checkpoint_path)
        except OSError as e:
            warnings.warn(f"{config.checkpoint_path}: cannot save the model ({e.strerror or e})",
                          CryoPickerWarning, stacklevel=2)
    return ens


def _join_members(parts: list[Checkpoint], history: list[dict], config: TrainConfig) -> Checkpoint:
    """One checkpoint of the trained networks: the first's weights, the others' as members,
    each class's MP-NMS thresholds the mean of theirs (the ensemble scores a particle about
    the mean of their scores), the best epoch the last network's."""
    from dataclasses import replace

    first = parts[0]
    post = {}
    for name, p in (first.postprocess or {}).items():
        post[name] = dict(p)
        for key in ("t_lm", "min_fill"):
            vals = [float(c.postprocess[name][key]) for c in parts if key in (c.postprocess or {}).get(name, {})]
            if vals:
                post[name][key] = float(np.mean(vals))
    scores = [c.best_score for c in parts if c.best_score is not None]
    return replace(first, members=[c.state_dict for c in parts[1:]], postprocess=post, history=history,
                   best_epoch=parts[-1].best_epoch, best_score=float(np.mean(scores)) if scores else None,
                   train_config={**config.to_dict(), "members": len(parts)})


def _say_binning_held_back(classes: ClassTable) -> None:
    """Warn when one small class alone keeps auto binning at full resolution (8x or more the
    work of the grid the others allow): a look-alike clicked to keep it apart does that. Two
    or more small classes make a small-particle project, which needs the fine grid."""
    names, factor, without = binning_held_back(classes)
    if len(names) == 1 and factor == 1:
        warnings.warn(
            f"class {names[0]!r} ({classes[names[0]].diameter:g} voxels across) keeps auto binning at full "
            f"resolution; without it the network would work at bin {without}, with {without ** 3}x less work "
            f"per step. For a look-alike kept apart only, choose bin {without} (the Training panel's "
            f"'work at', or cryopicker train --bin {without})",
            CryoPickerWarning, stacklevel=3,
        )


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


def wants_fine_decoder(config: TrainConfig) -> bool:
    """Whether a new network gets its finest decoder block (``config.fine_decoder``; None:
    only for live training, see TrainConfig)."""
    return bool(config.continuous) if config.fine_decoder is None else bool(config.fine_decoder)


def training_subvoxels(config: TrainConfig, factor: int, init: Checkpoint | None = None) -> int:
    """The network's sub-voxel factor (``ModelConfig.subvoxels``): the model's own when
    fine-tuning, else the binning factor with ``config.subvoxels``, else 1."""
    if init is not None:
        return init.model_config.subvoxels
    if not config.subvoxels or factor <= 1:
        return 1
    if config.lowpass > 0:
        raise CryoPickerError("an input low-pass (lowpass) and sub-voxels (subvoxels) do not go together; "
                              "turn one off")
    return factor


def _train(tomograms, picks, classes, config, init, progress, on_epoch, device, vs, t_start, out,
           on_model=None, refresh=None, on_best=None) -> Checkpoint:
    """train_model on checked inputs (cuDNN's autotuning on, on a GPU), on the working grid:
    ``classes`` in its voxels; ``out`` = (the user's class table, the binning factor, the
    network's sub-voxel factor)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    rot_rng = np.random.default_rng(config.seed + 7)  # the rotations' own: without them, the same crops
    label_diam = label_diameters(classes, config)
    n_classes = len(classes)
    if init is not None:
        mcfg = init.model_config
        mcfg = ModelConfig(**{**mcfg.__dict__, "n_classes": n_classes})
    else:
        mcfg = ModelConfig(n_classes=n_classes, f_maps=tuple(config.f_maps), coord_conv=config.coord_conv,
                           pyramid=config.pyramid, subvoxels=out[2], fine_decoder=wants_fine_decoder(config))
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

    renewed_note = None
    settled = _Settled(config.keep_average) if config.continuous and config.keep_average > 1 else None
    avg_net = None
    for epoch in range(config.epochs):
        news = epoch == 0
        if epoch >= plan.epochs:
            break
        if refresh is not None and epoch > 0:
            try:
                new = refresh()
                if new is not None:
                    before = picks_signature(vols)
                    note = _renew(vols, new, classes)
                    if picks_signature(vols) != before:  # (a moved score slider sends the same picks)
                        renewed_note, news = note, True
                        plan.note_news(step, warmup)
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
                    rot = rotation_for(v, st, crop, config, rot_rng)
                    if rot is None:
                        x = _read_crop(v, st, crop, config.lowpass)
                        y = _crop_labels(v, st, crop, classes, config, negatives=NEGATIVE if config.sparse else 0)
                    else:
                        x, y = rotated_sample(v, st, crop, rot, classes, config, label_diam,
                                              negatives=NEGATIVE if config.sparse else 0)
                    if config.augment:
                        x, y = _augment(x, y, rng, config.rot90)
                    xs.append(x)
                    ys.append(y)
                xb = torch.from_numpy(np.stack(xs)[:, None]).to(device).contiguous(
                    memory_format=torch.channels_last_3d)
                yb = torch.from_numpy(np.stack(ys).astype(np.int64)).to(device)
                for g in opt.param_groups:
                    g["lr"] = plan.lr_at(step, warmup)
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
            "lr": plan.lr_at(max(0, step - 1), warmup),
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
        # live training keeps its latest network(s), whatever validation says: taught by
        # every pick so far (a validation slab of a few live picks cannot see a class learnt
        # late; benchmarks/README.md, session 22), averaged over the last ``keep_average``
        # epochs since the picks changed (session 25)
        newest = config.continuous
        if newest or (key is not None and _better(key, state, config.select_tolerance)):
            state.best_key = key if key is not None else state.best_key
            state.best_state = _copy_state(eval_net)
            state.best_epoch = record["epoch"]
            state.best_score = record["val_f1"]
            state.best_nms = best_t or state.best_nms
            if settled is not None:
                settled.add(state.best_state, restart=news)
                record["kept_average"] = len(settled)
                if len(settled) > 1:
                    state.best_state = settled.mean()
                    if record["val_f1"] is not None:  # its own thresholds: a mean is less sure than its members
                        t_v = time.monotonic()
                        if avg_net is None:
                            avg_net = copy.deepcopy(eval_net)
                        avg_net.load_state_dict(state.best_state)
                        _, state.best_score, t_avg = validate(avg_net, vols, classes, config, device, crop,
                                                              n_classes, weights, mcfg.multiple, grid)
                        state.best_nms = t_avg or state.best_nms
                        record["kept_val_f1"] = state.best_score
                        spent = time.monotonic() - t_v
                        val_seconds += spent  # (the time limit's estimate counts both validations)
                        record["seconds"] += spent
            kept = _checkpoint(state, mcfg, classes, vs, config, out) if (config.checkpoint_path or on_best) else None
            if on_best is not None:
                on_best(kept)
            if config.checkpoint_path:  # a kill now still leaves this model on disk
                try:
                    save_checkpoint(kept, config.checkpoint_path)
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
