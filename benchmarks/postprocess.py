"""Post-processing: MP-NMS against mean-shift clustering and connected components, on the
same segmentation map, in one process: time, and F1 of each against the truth.

Segmentation map (``--source``):

model      a trained checkpoint (``--model``, else benchmarks/.cache/model.pt from
           training.py, else demo_out/model.pt) segments the simulated test tomogram
           (``core.predict.segment``, the inference of ``cryopicker predict``); the map is
           cached in benchmarks/.cache/.
synthetic  labels painted from the truth picks (``core.labels.make_labels``, TBall of the
           class diameter), turned into smooth noisy per-class scores (the indicator
           blurred with a Gaussian of sigma 1.5 plus Gaussian-blurred noise of standard
           deviation ``--noise``; background scores 0.5); the map is their arg-max and
           the softmax probability (x 8) of the winner, stored as uint8 like predict does.
auto       (default) model when a checkpoint exists, else synthetic. ``both`` runs both.

Methods (per class ``c``; every method sees the same voxels: ``label == c`` and
probability >= ``t_seg`` (0.5), the mask MP-NMS uses):

MP-NMS     ``core.nms.mp_nms`` with the model's tuned per-class settings (``merged_nms_params``:
           score threshold and fill filter tuned on validation) or, for the synthetic map, the
           training defaults (kernel from the radius) with ``min_fill`` 0.1 (the analogue of
           the others' size filter).
mean-shift scikit-learn ``MeanShift(bandwidth=radius, bin_seeding=True, n_jobs=1)`` on the
           voxel coordinates, as DeepFinder does; a cluster's centre is the pick.
components ``scipy.ndimage.label`` (6-connectivity) + ``center_of_mass``.
For mean-shift and components, clusters smaller than 10 % of the class's TBall volume
are dropped (a cheap size filter; without it both report every speckle).

The timing ratio is measured in this process on the same map (MP-NMS and components best
of ``--repeat``, mean-shift once). Mean-shift on a big map takes very long, so by default
it runs on a corner crop (``--ms-crop``, default 96x128x128: a quarter of the default
96x256x256 map); its time is then reported per voxel and extrapolated to the whole map,
and its F1 is compared with MP-NMS's F1 inside the same crop (both stated in the output).
``--ms-crop ''`` runs it on the whole map.

    nice -n 10 .venv/bin/python benchmarks/postprocess.py [--source auto|model|synthetic|both]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time

import _common as C  # noqa: E402  (sets sys.path)
import numpy as np


def model_map(shape, seed, model_arg):
    import torch

    from napari_cryopicker.core.predict import PredictConfig, normalisation_for, segment
    from napari_cryopicker.core.tomogram import open_tomogram

    ckpt, desc = C.resolve_model(model_arg)
    if "RANDOM" in desc:
        return None
    h = hashlib.sha1(b"".join(v.numpy().tobytes() for v in list(ckpt.state_dict.values())[:6])).hexdigest()[:10]
    cache = C.CACHE / f"segmap_{C.shape_str(shape)}_s{seed}_{h}.npz"
    tomo_path, truth, classes = C.simulated(shape, seed=seed)
    if cache.exists():
        z = np.load(cache)
        label, conf = z["label"], z["conf"]
        print(f"# model map: cached {cache.name}")
    else:
        tomo = open_tomogram(tomo_path)
        net = ckpt.build("cpu").to(memory_format=torch.channels_last_3d)
        mc = ckpt.model_config
        t = time.perf_counter()
        label, conf, _ = segment(tomo, net, mc.n_classes, mc.multiple, PredictConfig(device="cpu"),
                                 torch.device("cpu"), normalisation_for(tomo, ckpt),
                                 lowpass=float((ckpt.normalisation or {}).get("lowpass", 0.0) or 0.0))
        print(f"# model map: segmented {C.shape_str(shape)} in {time.perf_counter() - t:.0f} s (cached to {cache.name})")
        np.savez(cache, label=label, conf=conf)
    from napari_cryopicker.core.predict import merged_nms_params

    return label, conf, truth, ckpt.classes, merged_nms_params(ckpt, {}), desc


def synthetic_map(shape, seed, noise):
    from scipy import ndimage

    from napari_cryopicker.core.labels import make_labels
    from napari_cryopicker.core.train import TrainConfig, nms_defaults

    _, truth, classes = C.simulated(shape, seed=seed)
    lab = make_labels(shape, truth, classes, "tball")
    rng = np.random.default_rng(seed)
    scores = [np.full(shape, 0.5, np.float32)]
    for k in range(1, len(classes) + 1):
        s = ndimage.gaussian_filter((lab == k).astype(np.float32), 1.5)
        n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 1.5)
        n *= np.float32(noise / max(float(n.std()), 1e-6))
        scores.append(s + n)
    st = np.stack(scores)
    label = st.argmax(0).astype(np.uint8)
    e = np.exp(8.0 * (st - st.max(0, keepdims=True)))
    p = 1.0 / e.sum(0)
    conf = (p * 255 + 0.5).astype(np.uint8)
    # the training defaults (kernel from the radius), and the same 10 % size filter as the
    # other two methods get: min_fill 0.1 of the class's TBall around a pick
    params = {"default": {}, **{k: {**v, "min_fill": 0.1} for k, v in nms_defaults(classes, TrainConfig()).items()}}
    desc = (f"SYNTHETIC map from the truth picks (TBall labels, blur 1.5, noise sd {noise}, seed {seed}) "
            f"of the simulated {C.shape_str(shape)} tomogram")
    return label, conf, truth, classes, params, desc


def class_mask(label, conf, k, t_seg=0.5):
    return (label == k) & (conf >= np.uint8(math.ceil(t_seg * 255 - 1e-9)))


def tball_volume(diameter: float) -> int:
    from napari_cryopicker.core.labels import shape_offsets

    return len(shape_offsets(float(diameter), "tball")[0])


def run_components(label, conf, classes):
    from scipy import ndimage

    zyx, names = [], []
    for k, c in enumerate(classes, start=1):
        m = class_mask(label, conf, k)
        lab, n = ndimage.label(m)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        size = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        keep = idx[size >= 0.1 * tball_volume(c.diameter)]
        if len(keep):
            com = np.asarray(ndimage.center_of_mass(m, lab, keep), float).reshape(-1, 3)
            zyx.append(com)
            names += [c.name] * len(com)
    return zyx, names


def run_meanshift(label, conf, classes, crop=None):
    from sklearn.cluster import MeanShift

    zyx, names, npts = [], [], 0
    sl = tuple(slice(0, n) for n in (crop or label.shape))
    for k, c in enumerate(classes, start=1):
        pts = np.argwhere(class_mask(label[sl], conf[sl], k)).astype(np.float64)
        npts += len(pts)
        if len(pts) == 0:
            continue
        ms = MeanShift(bandwidth=c.radius, bin_seeding=True, n_jobs=1).fit(pts)
        size = np.bincount(ms.labels_, minlength=len(ms.cluster_centers_))
        ok = size >= 0.1 * tball_volume(c.diameter)
        zyx.append(ms.cluster_centers_[ok])
        names += [c.name] * int(ok.sum())
    return zyx, names, npts


def to_picks(zyx, names, vs):
    from napari_cryopicker.core.picks import Picks

    arr = np.concatenate(zyx) if zyx else np.zeros((0, 3))
    return Picks.from_zyx(arr, class_name=names, tomogram="tomogram", voxel_size=vs)


def best_of(fn, n):
    best, out = float("inf"), None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench(source: str, a) -> None:
    from napari_cryopicker.core.metrics import evaluate
    from napari_cryopicker.core.nms import mp_nms

    shape = C.parse_shape(a.shape)
    got = model_map(shape, a.seed, a.model) if source == "model" else synthetic_map(shape, a.seed, a.noise)
    if got is None:
        print("# no trained checkpoint: the model map needs one (run benchmarks/training.py); skipped")
        return
    label, conf, truth, classes, params, desc = got
    vs = truth.voxel_size
    vox = label.size
    print(f"\n## segmentation map: {desc}")
    seg = {c.name: int(class_mask(label, conf, k).sum()) for k, c in enumerate(classes, start=1)}
    print(f"# {C.shape_str(shape)} = {vox / 1e6:.1f} Mvoxel; voxels segmented per class (p >= 0.5): "
          + ", ".join(f"{k} {v}" for k, v in seg.items()) + f"; {len(truth)} true particles")

    t_nms, p_nms = best_of(lambda: mp_nms(label, conf, classes, params, tomogram="tomogram", voxel_size=vs), a.repeat)
    t_cc, (zc, nc) = best_of(lambda: run_components(label, conf, classes), a.repeat)
    p_cc = to_picks(zc, nc, vs)
    crop = C.parse_shape(a.ms_crop) if a.ms_crop else None
    if crop and all(c >= s for c, s in zip(crop, shape)):
        crop = None
    if crop:
        crop = tuple(min(c, s) for c, s in zip(crop, shape))
    t = time.perf_counter()
    zm, nm, npts = run_meanshift(label, conf, classes, crop)
    t_ms_run = time.perf_counter() - t
    p_ms = to_picks(zm, nm, vs)
    ms_vox = math.prod(crop) if crop else vox
    t_ms = t_ms_run * vox / ms_vox  # whole-map equivalent (equal to the run when not cropped)

    # a crop's cut faces cut particles in two: score inside the crop less one particle
    # radius at each cut face (faces on the volume's border are kept), for every method alike
    r_max = max(c.radius for c in classes)
    core = None if crop is None else tuple(c - r_max if c < s else s for c, s in zip(crop, shape))

    def score(p, region=None):
        tr = truth
        if region is not None:
            tr = tr._subset(np.all(tr.zyx < np.asarray(region)[None, :], axis=1))
            p = p._subset(np.all(p.zyx < np.asarray(region)[None, :], axis=1)) if len(p) else p
        return evaluate(p.with_tomogram("tomogram"), tr, classes)

    reps = {"MP-NMS": score(p_nms), "components": score(p_cc)}
    reps["mean-shift"] = score(p_ms, core)
    if crop:  # compare like with like: MP-NMS and components scored in the same region
        reps["MP-NMS (crop)"] = score(p_nms, core)
        reps["components (crop)"] = score(p_cc, core)
    rows = []
    times = {"MP-NMS": t_nms, "components": t_cc, "mean-shift": t_ms}
    for name, rep in reps.items():
        tt = times.get(name)
        per = [f"{rep.per_class[c.name].f1:.3f}" if c.name in rep.per_class else "-" for c in classes]
        n_picks = rep.overall.n_pred
        rows.append([name, f"{tt:.2f}" if tt is not None else "", f"{tt / vox * 1e9:.0f}" if tt is not None else "",
                     f"{tt / t_nms:.1f}x" if tt is not None else "", n_picks, f"{rep.overall.precision:.3f}",
                     f"{rep.overall.recall:.3f}", f"{rep.overall.f1:.3f}", *per])
    print(C.table(["method", "seconds", "ns/voxel", "vs MP-NMS", "picks", "precision", "recall", "F1",
                   *[f"F1 {c.name}" for c in classes]], rows,
                  title=f"Post-processing the same {C.shape_str(shape)} map ({source}), one process"))
    if crop:
        print(f"mean-shift ran on the {C.shape_str(crop)} corner crop ({npts} points) in {t_ms_run:.1f} s; its time "
              f"above is extrapolated per voxel to the whole map; its F1 is scored inside the crop less {r_max:g} voxels at the cut faces (z, y, x < {C.shape_str([round(c) for c in core])}), as are the '(crop)' rows")
    else:
        print(f"mean-shift clustered {npts} points in {t_ms_run:.1f} s (whole map, not extrapolated)")
    f_n, f_m = reps["MP-NMS (crop)" if crop else "MP-NMS"].overall.f1, reps["mean-shift"].overall.f1
    print(f"RATIO time mean-shift / MP-NMS = {t_ms / t_nms:.1f}x, components / MP-NMS = {t_cc / t_nms:.2f}x; "
          f"F1 MP-NMS {f_n:.3f} vs mean-shift {f_m:.3f} vs components "
          f"{reps['components (crop)' if crop else 'components'].overall.f1:.3f}" + (" (in the crop)" if crop else ""))
    big = 200 * 512 * 512
    print(f"per voxel: MP-NMS {t_nms / vox * 1e9:.0f} ns -> {t_nms / vox * big:.1f} s for 200x512x512 if linear; "
          f"mean-shift {t_ms / vox * 1e9:.0f} ns -> {t_ms / vox * big:.0f} s (extrapolated)")
    print(f"target (MP-NMS >= 20x faster than mean-shift at equal or better F1): "
          f"{'MET' if t_ms / t_nms >= 20 and f_n >= f_m - 1e-9 else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="auto", choices=["auto", "model", "synthetic", "both"])
    ap.add_argument("--shape", default="96x256x256", help="simulated tomogram / map size (default 96x256x256)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=2000, help="simulation seed (2000 = the demo's test tomogram)")
    ap.add_argument("--noise", type=float, default=0.15, help="synthetic map: noise sd of the class scores")
    ap.add_argument("--ms-crop", default="96x128x128", help="run mean-shift on this corner crop only (default 96x128x128, a quarter of the default map; '' = the whole map)")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print(f"# postprocess.py | {C.machine()}")
    if a.source == "auto":
        have = a.model or C.TRAINED_MODEL.exists() or C.DEMO_MODEL.exists()
        sources = ["model" if have else "synthetic"]
        print(f"# --source auto: {'a trained checkpoint exists -> model map' if have else 'no checkpoint -> synthetic map'}")
    elif a.source == "both":
        sources = ["model", "synthetic"]
    else:
        sources = [a.source]
    for s in sources:
        bench(s, a)


if __name__ == "__main__":
    main()
