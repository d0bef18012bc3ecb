"""Inference throughput: `cryopicker predict` (sliding-window inference + MP-NMS + picks file)
on a simulated 200x512x512 tomogram, against a plain baseline, each in a fresh process.

ours      the real code path of ``cryopicker predict``: ``open_tomogram`` (memory map),
          ``load_checkpoint``, ``predict_picks(tomo, ckpt, PredictConfig(device="cpu"))``
          (channels_last_3d network, tiles read one at a time from the memory map,
          stitched into uint8 label + uint8 probability, then ``mp_nms``), ``write_picks``.
baseline  the plain way: the whole volume read into RAM as float32, the network in fp32
          with the default contiguous (NCDHW) layout, one patch at a time under
          ``torch.no_grad``, the *same* tiling (tile 160, margin 12, mirror padding) and
          stitching, then the same ``mp_nms`` and ``write_picks``.

The split of the time comes from timing wrappers around module functions that
``predict_picks`` looks up at call time (``normalisation_for``, ``read_block``,
``mp_nms``); they add microseconds. Both variants run in fresh subprocesses launched
back to back by this script (so their peak memory is separable), and the ratios are
computed here; each child also measures the machine's current matmul speed at its start
and end, so a variant slowed down by other jobs on the machine shows up.

By default the baseline runs only ``--baseline-tiles 8`` of the tiles (evenly spread; all
tiles have the same shape, so the cost per tile is the same) and its inference time is
extrapolated to all tiles; its MP-NMS then runs on the label map 'ours' produced (saved
to the cache). ``--baseline-tiles 0`` runs the whole baseline and checks that its picks
equal ours. Page cache: the tomogram was just written or read, so reads are from RAM.

    nice -n 10 .venv/bin/python benchmarks/inference.py [--shape 200x512x512] [--model M.pt]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings

import _common as C  # noqa: E402  (sets sys.path)


# ----------------------------------------------------------------------------- children
class Timers:
    def __init__(self):
        self.t: dict[str, float] = {}
        self.n: dict[str, int] = {}

    def add(self, key: str, dt: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + dt
        self.n[key] = self.n.get(key, 0) + 1

    def wrap(self, key: str, fn):
        def inner(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.add(key, time.perf_counter() - t)

        return inner


def _tiling(shape, tile: int, margin: int, multiple: int):
    from napari_cryopicker.core.predict import _tile_shape, tile_starts

    tshape = _tile_shape(shape, tile, margin, multiple)
    starts = [tile_starts(n, t, margin) for n, t in zip(shape, tshape)]
    jobs = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    return tshape, jobs


def child_ours(a) -> dict:
    import numpy as np
    import torch

    from _memwatch import MemWatch
    from napari_cryopicker.core import predict as P
    from napari_cryopicker.core.formats import write_picks
    from napari_cryopicker.core.progress import Progress
    from napari_cryopicker.core.tomogram import open_tomogram

    mw = MemWatch().start()
    calib0 = C.calibrate()
    T = Timers()
    P.normalisation_for = T.wrap("norm", P.normalisation_for)
    P.read_block = T.wrap("tile_read", P.read_block)
    nms_args = {}
    real_nms = T.wrap("nms", P.mp_nms)

    def nms_capture(label, prob, *args, **kw):
        nms_args["label"], nms_args["prob"] = label, prob
        return real_nms(label, prob, *args, **kw)

    P.mp_nms = nms_capture
    tile_times = []

    def cb(done, total, msg):
        if msg == "inference":
            tile_times.append(time.perf_counter())

    t_all = time.perf_counter()
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tomo = open_tomogram(a.tomo)
    T.add("open", time.perf_counter() - t)
    t = time.perf_counter()
    ckpt, desc = C.resolve_model(a.model)
    T.add("model", time.perf_counter() - t)
    cfg = P.PredictConfig(device="cpu", tile=a.tile, batch_size=a.batch_size)
    t = time.perf_counter()
    res = P.predict_picks(tomo, ckpt, cfg, progress=Progress(callback=cb))
    T.add("predict", time.perf_counter() - t)
    mid = mw.sample()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_picks(res.picks, os.path.join(d, "picks.csv"), voxel_size=tomo.voxel_size,
                    tomogram_shape=tomo.shape, tomogram=tomo.name)
        T.add("write", time.perf_counter() - t)
    total = time.perf_counter() - t_all
    peak = mw.stop()
    calib1 = C.calibrate()
    if a.save_map:  # the MP-NMS input, for the sampled baseline's MP-NMS (not timed)
        np.save(a.save_map + ".label.npy", nms_args["label"])
        np.save(a.save_map + ".conf.npy", nms_args["prob"])
    out = _summary(T, total, tomo.shape, peak, calib0, calib1, len(res.picks))
    tt = T.t["predict"] - T.t.get("norm", 0) - T.t.get("nms", 0)
    out.update(model=desc, n_tiles=len(tile_times), rss_after_predict_mb=mid.get("VmRSS"),
               tile_s=float(np.median(np.diff(tile_times))) if len(tile_times) > 2 else tt / max(1, len(tile_times)),
               threads=torch.get_num_threads())
    if a.truth:
        out["f1"] = _f1(res.picks, a)
        out["picks"] = res.picks.zyx.tolist() if a.keep_picks else None
    return out


def child_baseline(a) -> dict:
    import mrcfile
    import numpy as np
    import torch

    from _memwatch import MemWatch
    from napari_cryopicker.core.formats import write_picks
    from napari_cryopicker.core.nms import mp_nms
    from napari_cryopicker.core.predict import merged_nms_params, read_block
    from napari_cryopicker.core.tomogram import normalise, robust_normalisation

    mw = MemWatch().start()
    calib0 = C.calibrate()
    T = Timers()
    t_all = time.perf_counter()
    t = time.perf_counter()
    with mrcfile.open(a.tomo, mode="r", permissive=True) as m:
        vol = np.array(m.data, dtype=np.float32)  # the whole volume in RAM
        vs = float(m.voxel_size.x)
    T.add("open", time.perf_counter() - t)
    t = time.perf_counter()
    ckpt, desc = C.resolve_model(a.model)
    net = ckpt.build("cpu").eval()  # default contiguous layout
    T.add("model", time.perf_counter() - t)
    mc = ckpt.model_config
    t = time.perf_counter()
    norm = ckpt.normalisation or {}
    centre, scale = robust_normalisation(vol, norm.get("lo", 0.5), norm.get("hi", 99.5))
    T.add("norm", time.perf_counter() - t)
    shape = vol.shape
    mg = 12
    tshape, jobs = _tiling(shape, a.tile, mg, mc.multiple)
    n_run = len(jobs) if a.baseline_tiles <= 0 else min(len(jobs), a.baseline_tiles)
    pick = np.unique(np.linspace(0, len(jobs) - 1, n_run).round().astype(int))
    label = np.zeros(shape, np.uint8)
    conf = np.zeros(shape, np.uint8)
    tile_s = []
    with torch.no_grad():
        for j in pick:
            st = jobs[j]
            t = time.perf_counter()
            blk = normalise(read_block(vol, [s - mg for s in st], tshape), centre, scale)
            t1 = time.perf_counter()
            T.add("tile_read", t1 - t)
            p = torch.softmax(net(torch.from_numpy(blk)[None, None]), dim=1)
            pmax, lab = p.max(dim=1)
            lab = lab.to(torch.uint8).numpy()[0]
            pq = (pmax * 255.0 + 0.5).to(torch.uint8).numpy()[0]
            dst, src = [], []
            for s, n, tt in zip(st, shape, tshape):
                keep = min(tt - 2 * mg, n - s)
                dst.append(slice(s, s + keep))
                src.append(slice(mg, mg + keep))
            label[tuple(dst)] = lab[tuple(src)]
            conf[tuple(dst)] = pq[tuple(src)]
            T.add("network", time.perf_counter() - t1)
            tile_s.append(time.perf_counter() - t)
    sampled = len(pick) < len(jobs)
    if sampled:  # extrapolate the per-tile costs to every tile
        f = len(jobs) / len(pick)
        T.t["tile_read"] *= f
        T.t["network"] *= f
        label = np.load(a.save_map + ".label.npy")  # ours' MP-NMS input (the same map)
        conf = np.load(a.save_map + ".conf.npy")
    params = merged_nms_params(ckpt, {})
    t = time.perf_counter()
    picks = mp_nms(label, conf, ckpt.classes, params or None, tomogram=os.path.splitext(os.path.basename(a.tomo))[0],
                   voxel_size=vs)
    T.add("nms", time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_picks(picks, os.path.join(d, "picks.csv"), voxel_size=vs, tomogram_shape=shape, tomogram="tomogram")
        T.add("write", time.perf_counter() - t)
    total = time.perf_counter() - t_all
    if sampled:
        total += (T.t["tile_read"] + T.t["network"]) * (1 - 1 / f)
    peak = mw.stop()
    calib1 = C.calibrate()
    out = _summary(T, total, shape, peak, calib0, calib1, len(picks))
    out.update(model=desc, n_tiles=len(jobs), tiles_run=int(len(pick)), sampled=sampled,
               tile_s=float(np.median(tile_s)), threads=torch.get_num_threads())
    if a.truth and not sampled:
        out["f1"] = _f1(picks, a)
        out["picks"] = picks.zyx.tolist() if a.keep_picks else None
    return out


def _f1(picks, a) -> float:
    from napari_cryopicker.core.metrics import evaluate

    _, truth, classes = C.simulated(tuple(json.loads(a.truth)), seed=a.seed)
    return evaluate(picks.with_tomogram("tomogram"), truth, classes).overall.f1


def _summary(T: Timers, total, shape, peak, calib0, calib1, n_picks) -> dict:
    t = dict(T.t)
    if "predict" in t:  # ours: the network time is what predict spent outside the wrapped parts
        t["network"] = t.pop("predict") - t.get("norm", 0) - t.get("tile_read", 0) - t.get("nms", 0)
    vox = float(math.prod(shape))
    return {"times": t, "total": total, "voxels": vox, "mvox_s": vox / 1e6 / total,
            "peak_rss_mb": C.peak_rss_mb(), "peak_anon_mb": peak.get("RssAnon"),
            "peak_file_mb": peak.get("RssFile"), "calib": [calib0, calib1], "n_picks": n_picks}


# ----------------------------------------------------------------------------- driver
def run_variant(variant: str, tomo, a, extra: list[str] | None = None) -> dict:
    argv = [os.path.abspath(__file__), "--child", variant, "--tomo", str(tomo), "--tile", str(a.tile),
            "--baseline-tiles", str(a.baseline_tiles), "--seed", str(a.seed), "--batch-size", str(a.batch_size)]
    if a.model:
        argv += ["--model", a.model]
    return C.run_child(argv + (extra or []))


def row(name: str, r: dict) -> list:
    t = r["times"]
    return [name, f"{t.get('open', 0):.1f}", f"{t.get('model', 0):.2f}", f"{t.get('norm', 0):.2f}",
            f"{t.get('tile_read', 0):.1f}", f"{t.get('network', 0):.1f}", f"{t.get('nms', 0):.1f}",
            f"{t.get('write', 0):.2f}", f"{r['total']:.1f}", f"{r['mvox_s']:.3f}", f"{r['tile_s']:.2f}",
            f"{r['peak_rss_mb']:.0f}", f"{r['peak_anon_mb']:.0f}", f"{r['calib'][0]:.0f}/{r['calib'][1]:.0f}"]


HEAD = ["variant", "open s", "model s", "norm s", "tile reads s", "network s", "MP-NMS s", "write s", "total s",
        "Mvox/s", "s/tile", "peak RSS MB", "peak anon MB", "GFLOP/s calib"]


def tiling_table(shape, multiple: int, margin: int = 12) -> str:
    import math as m

    rows = []
    vox = m.prod(shape)
    for tile in (96, 128, 160, 192, 224, 256, 288):
        tshape, jobs = _tiling(shape, tile, margin, multiple)
        proc = len(jobs) * m.prod(tshape)
        act = 16 * 4 * m.prod(tshape) / 2**20  # one first-level activation (16 ch fp32)
        rows.append([tile, "x".join(map(str, tshape)), len(jobs), f"{proc / 1e6:.0f}", f"{proc / vox:.2f}",
                     f"{act:.0f}"])
    return C.table(["tile", "tile shape", "tiles", "Mvox run", "run/output", "MB per 16-ch act."], rows,
                   title=f"Tiling overhead for {C.shape_str(shape)} (margin {margin}; analytic: voxels the "
                         "network runs on / output voxels)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="200x512x512", help="tomogram size Z x Y x X (default 200x512x512)")
    ap.add_argument("--model", default=None, help="checkpoint (default: benchmarks/.cache/model.pt, "
                    "demo_out/model.pt, else a random-init default network)")
    ap.add_argument("--tile", type=int, default=160)
    ap.add_argument("--batch-size", type=int, default=1, help="PredictConfig.batch_size for 'ours'")
    ap.add_argument("--baseline-tiles", type=int, default=8,
                    help="tiles the baseline really runs (extrapolated to all); 0 = all (slow)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--child", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--tomo", help=argparse.SUPPRESS)
    ap.add_argument("--truth", help=argparse.SUPPRESS)
    ap.add_argument("--save-map", help=argparse.SUPPRESS)
    ap.add_argument("--keep-picks", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        C.emit((child_ours if a.child == "ours" else child_baseline)(a))
        return

    shape = C.parse_shape(a.shape)
    print(f"# inference.py | {C.machine()}")
    tomo, truth, classes = C.simulated(shape, seed=a.seed)
    print(f"# tomogram: {tomo} ({C.shape_str(shape)}, {len(truth)} particles, "
          f"{os.path.getsize(tomo) / 2**20:.0f} MiB float32)")
    ckpt, desc = C.resolve_model(a.model)
    print(f"# model: {desc}")
    tshape, jobs = _tiling(shape, a.tile, 12, ckpt.model_config.multiple)
    print(f"# tiling: {len(jobs)} tiles of {C.shape_str(tshape)} (margin 12) = "
          f"{len(jobs) * math.prod(tshape) / math.prod(shape):.2f}x the output voxels")
    mapbase = str(C.CACHE / f"map_{C.shape_str(shape)}_s{a.seed}")
    full = a.baseline_tiles <= 0 or a.baseline_tiles >= len(jobs)
    extra = ["--truth", json.dumps(list(shape)), "--save-map", mapbase] + (["--keep-picks"] if full else [])
    print("# running 'ours' (fresh process) ...", flush=True)
    ours = run_variant("ours", tomo, a, extra)
    rows = [row("ours", ours)]
    base = None
    if not a.skip_baseline:
        print(f"# running the baseline (fresh process, {'all' if full else a.baseline_tiles} tiles) ...", flush=True)
        base = run_variant("baseline", tomo, a, extra)
        rows.append(row("baseline" + (" (extrap.)" if base.get("sampled") else ""), base))
    print()
    print(C.table(HEAD, rows, title=f"cryopicker predict on {C.shape_str(shape)} ({ours['voxels'] / 1e6:.1f} Mvoxel), "
                                    f"{ours['threads']} threads, CPU"))
    print(f"ours: {ours['n_picks']} picks, F1 vs truth {ours.get('f1', float('nan')):.3f}; "
          f"peak anon - 2 B/voxel stitched output = {ours['peak_anon_mb'] - 2 * ours['voxels'] / 2**20:.0f} MB")
    if base is not None:
        tb, to = base["times"], ours["times"]
        inf_b = tb["tile_read"] + tb["network"]
        inf_o = to["tile_read"] + to["network"]
        print(f"RATIO baseline/ours: whole predict {base['total'] / ours['total']:.2f}x, inference "
              f"(tile reads + network) {inf_b / inf_o:.2f}x, per tile {base['tile_s'] / ours['tile_s']:.2f}x, "
              f"peak anon memory {base['peak_anon_mb'] / ours['peak_anon_mb']:.2f}x")
        if base.get("sampled"):
            print(f"(baseline ran {base['tiles_run']} of {base['n_tiles']} tiles; its tile and network times are "
                  "extrapolated, its MP-NMS ran on ours' label map)")
        elif "picks" in base and ours.get("picks") is not None:
            import numpy as np

            po, pb = np.asarray(ours["picks"]), np.asarray(base["picks"])
            same = len(po) == len(pb) and (len(po) == 0 or np.allclose(np.sort(po, 0), np.sort(pb, 0), atol=1e-3))
            print(f"baseline picks {'equal' if same else 'DIFFER from'} ours ({len(pb)} vs {len(po)}); "
                  f"baseline F1 {base.get('f1', float('nan')):.3f}")
    tot, nms = ours["total"], ours["times"]["nms"]
    note = "" if shape == (200, 512, 512) else f" [measured on {C.shape_str(shape)}, not the target's size]"
    print(f"targets (200x512x512, 2 cores){note}: whole predict <= 60 s: "
          f"{'MET' if tot <= 60 else 'NOT MET'} ({tot:.0f} s); >= 3x the baseline: "
          + (f"{'MET' if base and base['total'] / tot >= 3 else 'NOT MET'} ({base['total'] / tot:.2f}x)" if base else "n/a")
          + f"; MP-NMS < 5 s: {'MET' if nms < 5 else 'NOT MET'} ({nms:.1f} s)")
    print()
    print(tiling_table(shape, ckpt.model_config.multiple))


if __name__ == "__main__":
    sys.exit(main())
