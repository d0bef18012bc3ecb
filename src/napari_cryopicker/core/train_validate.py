"""Validation during training: MP-NMS on the held-out slab, the recall-weighted score an
epoch is judged by, each class's threshold from the held-out clicks, and self-labelling."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch

from .classes import ClassTable
from .model import prepare_for_inference
from .nms import NMSParams, mp_nms
from .picks import Picks
from .train_data import _crop_labels, _known_centres, _near, _voxel_weights, _Volume, loss_fn, nms_defaults

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig


def validate(net, vols, classes, config, device, crop, n_classes, weights, multiple, nms_grid=None):
    """Loss over the held-out slabs and F-alpha of MP-NMS picks against their truth.

    Returns (val_loss, f_alpha, best per-class t_lm dict).
    """
    from .metrics import counts_over_thresholds, fbeta
    from .predict import PredictConfig, segment

    losses, labels, confs, truths, known = [], [], [], [], []
    net.eval()
    # a copy made ready for inference as predict_picks runs it (batch norm folded, oneDNN
    # convolutions on the CPU): the same output; validation 3.2 -> 2.1 s per epoch on the
    # realistic benchmark (2 cores)
    net = prepare_for_inference(copy.deepcopy(net), device)
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
    per_class_scores.update(counts_over_thresholds(pr_all, tr, classes, grid, FILL_GRID))
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
            # (the training box without the validation slab, even with hold_out off: what it
            # adds becomes picks there, which would then score the network on its own guesses)
            region = tuple(slice(int(a), int(h)) for a, h in zip(v.train_lo, v.train_hi))
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
                v.class_groups = None  # the added picks have no group: drawn as they are
    return added


def _pr(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r
