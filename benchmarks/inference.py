"""Inference throughput: `cryopicker predict` (sliding-window inference + MP-NMS + picks file)
on a simulated 200x512x512 tomogram, against a plain baseline timed in the same process.

ours      the real code path of ``cryopicker predict``: ``open_tomogram`` (memory map),
          ``load_checkpoint``, ``predict_picks(tomo, ckpt, PredictConfig(device="cpu"))``
          (channels_last_3d network, tiles read one at a time from the memory map,
          stitched into uint8 label + uint8 probability, then ``mp_nms``), ``write_picks``.
plain     the baseline the targets are measured against, the plain way: the whole volume
          read into RAM as float32, the same network in fp32 with the default contiguous
          (NCDHW) layout, one patch at a time under ``torch.no_grad``, patches as DeepETPicker
          cuts them (72^3 blocks, pad 12: only the central 48^3 kept; 605 blocks for
          200x512x512, 4.3x the output voxels), then the same ``mp_nms`` and ``write_picks``.
plain, ours' tiling
          the same, but on predict's own tiling (tile 160, margin 12): isolates what the
          memory layout and the batch-norm folding gain, apart from the tiling.
DeepETPicker-like
          DeepETPicker's network size (f_maps 24/48/72/108, random weights: speed does not
          depend on them) on its 72^3/12 blocks, fp32, contiguous, one block at a time: what
          DeepETPicker's own code costs per tomogram on these cores, less its Python overhead.

Timing (noise-robust): one fresh process runs 'ours' and, from predict's progress
callback after each of ours' tiles, some baseline tiles (``--baseline-tiles``,
``--same-tiling-tiles``, ``--deepetpicker-tiles`` of each, spread evenly over the run;
every tile of one variant has one shape, so its whole-run time is extrapolated from the
mean per tile). Ours' and the baselines' tiles alternate, so a change in the machine's
load hits all alike; the callback's time is taken out of ours. The split of ours' time
comes from timing wrappers around module functions that ``predict_picks`` looks up at
call time (``normalisation_for``, ``read_block``, ``mp_nms``). The baselines' MP-NMS and
picks writing run once in the same process after ours, on the same map (or, with
``--baseline-tiles 0``, on the plain baseline's own map, whose F1 is then printed).
The glibc heap setting ``cryopicker predict`` makes (core/memory.py) is process-wide, so
the baselines get it too (``--no-mallopt`` turns it off for all).

Memory (separable): ours' peak is the peak while ours' phases ran in that process
(samples of /proc/self/status every 20 ms, attributed to the phase running); the
baseline's peak comes from a second fresh process that loads the whole volume, runs two
tiles, fills its stitched output (with ours' map: as touched as after a full run), then
runs MP-NMS and writes the picks: everything a full baseline run holds at its peak. That
process also times the baseline's whole-volume read. Page cache: the tomogram was just
written or read, so reads come from RAM, not disk.

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


class Timers:
    def __init__(self):
        self.t: dict[str, float] = {}

    def add(self, key: str, dt: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + dt

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


def _cube_tiling(shape, block: int, pad: int):
    """DeepETPicker's overlap-tile: cubic blocks of ``block`` voxels every ``block - 2 pad``
    voxels along each axis (the last block may run past the edge and is padded); only each
    block's centre is kept. 72/12 on 200x512x512: 5 x 11 x 11 = 605 blocks."""
    step = block - 2 * pad
    starts = [list(range(0, n, step)) for n in shape]
    return (block,) * 3, [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]


#: DeepETPicker's published defaults: f_maps 24/48/72/108, 72^3 blocks, pad 12
DEEPETPICKER_F_MAPS = (24, 48, 72, 108)
DEEPETPICKER_BLOCK, DEEPETPICKER_PAD = 72, 12


class Baseline:
    """The plain way, one tile at a time: contiguous fp32 network under no_grad.

    ``tiling``: ``"ours"`` (predict's tiling for ``tile``; isolates what the layout and the
    batch-norm folding gain) or ``(block, pad)`` cubic blocks as DeepETPicker tiles.
    ``net``: the checkpoint's network (default) or any module taking (1, 1, z, y, x)."""

    def __init__(self, ckpt, data, shape, tile: int, norm, keep_output: bool, margin: int = 12,
                 tiling="ours", net=None, device: str = "cpu"):
        import numpy as np

        self.device = device
        self.net = (net if net is not None else ckpt.build("cpu")).eval().to(device)  # default contiguous layout
        self.data, self.shape = data, tuple(shape)
        if tiling == "ours":
            self.m = margin
            self.tshape, self.jobs = _tiling(shape, tile, margin, ckpt.model_config.multiple)
        else:
            self.m = tiling[1]
            self.tshape, self.jobs = _cube_tiling(shape, *tiling)
        self.centre, self.scale = norm
        if keep_output:
            self.label = np.zeros(self.shape, np.uint8)
            self.conf = np.zeros(self.shape, np.uint8)
        else:  # sampled: stitch into a scratch buffer (same copying cost, no full-size output)
            self.label = self.conf = None
        self.T = Timers()
        self.tile_times: list[float] = []

    def tile(self, j: int) -> float:
        import numpy as np
        import torch

        from napari_cryopicker.core.predict import read_block
        from napari_cryopicker.core.tomogram import normalise

        st, m = self.jobs[j], self.m
        t0 = time.perf_counter()
        blk = read_block(self.data, [s - m for s in st], self.tshape)
        t1 = time.perf_counter()
        with torch.no_grad():
            blk = normalise(blk, self.centre, self.scale)
            p = torch.softmax(self.net(torch.from_numpy(blk)[None, None].to(self.device)), dim=1).cpu()
            pmax, lab = p.max(dim=1)
            lab = lab.to(torch.uint8).numpy()[0]
            pq = (pmax * 255.0 + 0.5).to(torch.uint8).numpy()[0]
        dst, src = [], []
        for s, n, tt in zip(st, self.shape, self.tshape):
            keep = min(tt - 2 * m, n - s)
            dst.append(slice(s, s + keep))
            src.append(slice(m, m + keep))
        if self.label is not None:
            self.label[tuple(dst)] = lab[tuple(src)]
            self.conf[tuple(dst)] = pq[tuple(src)]
        else:
            np.copyto(np.empty_like(lab[tuple(src)]), lab[tuple(src)])
            np.copyto(np.empty_like(pq[tuple(src)]), pq[tuple(src)])
        t2 = time.perf_counter()
        self.T.add("tile_read", t1 - t0)
        self.T.add("network", t2 - t1)
        self.tile_times.append(t2 - t0)
        return t2 - t0

    def extrapolated(self) -> dict:
        """Tile-read and network seconds for all tiles, from the tiles run (one shape)."""
        f = len(self.jobs) / max(1, len(self.tile_times))
        return {k: v * f for k, v in self.T.t.items()}


# ----------------------------------------------------------------------------- children
def child_ours(a) -> dict:
    """Ours (the real predict path) in this fresh process; the baselines' tiles run between
    ours' tiles (from predict's progress callback), spread evenly over the run."""
    import numpy as np
    import torch

    from _memwatch import MemWatch
    from napari_cryopicker.core import predict as P
    from napari_cryopicker.core.formats import write_picks
    from napari_cryopicker.core.progress import Progress
    from napari_cryopicker.core.tomogram import open_tomogram, robust_normalisation

    if not a.no_mallopt:  # as `cryopicker predict` does (core/memory.py); process-wide, so the
        # baseline tiles interleaved in this process get the same allocator
        from napari_cryopicker.core.memory import keep_freed_memory

        keep_freed_memory()
    mw = MemWatch().start()
    mw.phase = "ours"
    calib0 = C.calibrate()
    T = Timers()
    P.normalisation_for = T.wrap("norm", P.normalisation_for)
    P.read_block = T.wrap("tile_read", P.read_block)
    nms_args = {}
    orig_nms = P.mp_nms
    real_nms = T.wrap("nms", orig_nms)

    def nms_capture(label, prob, *args, **kw):
        nms_args.update(label=label, prob=prob, args=args, kw=kw)
        return real_nms(label, prob, *args, **kw)

    P.mp_nms = nms_capture
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tomo = open_tomogram(a.tomo)
    T.add("open", time.perf_counter() - t)
    t = time.perf_counter()
    ckpt, desc = C.resolve_model(a.model)
    T.add("model", time.perf_counter() - t)

    cfg = P.PredictConfig(device="cpu", tile=a.tile, batch_size=a.batch_size,
                          compile={"off": False, "on": True, "auto": "auto"}[a.compile])
    n_ours = len(_tiling(tomo.shape, a.tile, cfg.margin, ckpt.model_config.multiple)[1])
    bases: dict[str, Baseline] = {}
    schedule: dict[int, list[tuple[str, int]]] = {}  # ours' tile -> baseline tiles to run after it
    t_base_model = 0.0
    wanted = {"plain": a.baseline_tiles, "plain, ours' tiling": a.same_tiling_tiles,
              "DeepETPicker-like": a.deepetpicker_tiles}
    if any(v != 0 for v in wanted.values()):
        from napari_cryopicker.core.model import ModelConfig, ResUNet

        nm = ckpt.normalisation or {}
        norm = robust_normalisation(tomo.data, nm.get("lo", 0.5), nm.get("hi", 99.5))
        cube = (DEEPETPICKER_BLOCK, DEEPETPICKER_PAD)
        for name, k in wanted.items():
            if k == 0:
                continue
            t = time.perf_counter()
            if name == "DeepETPicker-like":  # its network size (speed does not depend on the weights)
                torch.manual_seed(0)
                dnet = ResUNet(ModelConfig(n_classes=len(ckpt.classes), f_maps=DEEPETPICKER_F_MAPS))
                b = Baseline(ckpt, tomo.data, tomo.shape, a.tile, norm, False, tiling=cube, net=dnet)
            else:
                full = name == "plain" and k < 0
                b = Baseline(ckpt, tomo.data, tomo.shape, a.tile, norm, keep_output=full,
                             tiling=cube if name == "plain" else "ours")
            if name == "plain":
                t_base_model = time.perf_counter() - t
            bases[name] = b
            n = len(b.jobs)
            picks_j = np.unique(np.linspace(0, n - 1, n if k < 0 else min(n, k)).round().astype(int))
            for i, j in enumerate(picks_j):  # spread evenly over ours' tiles
                schedule.setdefault(int(i * n_ours // len(picks_j)), []).append((name, int(j)))

    ours_tile = []
    state = {"last": 0.0, "cb": 0.0}

    def cb(done, total, msg):
        if msg != "inference":
            return
        now = time.perf_counter()
        ours_tile.append(now - state["last"])
        jobs = schedule.get(done - 1, [])
        if jobs:
            mw.sample()
            mw.phase = "baseline"
            for name, j in jobs:
                bases[name].tile(j)
            mw.sample()
            mw.phase = "ours"
        state["last"] = time.perf_counter()
        state["cb"] += state["last"] - now

    t = time.perf_counter()
    state["last"] = t
    res = P.predict_picks(tomo, ckpt, cfg, progress=Progress(callback=cb))
    T.add("predict", time.perf_counter() - t - state["cb"])
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        write_picks(res.picks, os.path.join(d, "picks.csv"), voxel_size=tomo.voxel_size,
                    tomogram_shape=tomo.shape, tomogram=tomo.name)
        T.add("write", time.perf_counter() - t)
    mw.sample()
    ours_peak = dict(mw.phase_peak.get("ours", {}))
    t_ours = sum(T.t[k] for k in ("open", "model", "predict", "write"))
    tt = dict(T.t)
    # ours' network + stitching time: the tiles' intervals less the wrapped parts
    tt["network"] = sum(ours_tile) - tt.get("norm", 0) - tt.get("tile_read", 0)
    tt["other"] = tt.pop("predict") - sum(ours_tile) - tt.get("nms", 0)
    out = {"model": desc, "threads": torch.get_num_threads(), "voxels": float(math.prod(tomo.shape)),
           "n_tiles": len(ours_tile), "tile_s": float(np.median(ours_tile[1:] if len(ours_tile) > 2 else ours_tile)),
           "ours": {"times": tt, "total": t_ours, "peak_anon_mb": ours_peak.get("RssAnon"),
                    "peak_rss_mb": ours_peak.get("VmRSS"), "n_picks": len(res.picks)}}

    if bases:  # the baselines' MP-NMS and writing (all the same), same process, same map
        mw.phase = "baseline-nms"
        plain = bases.get("plain")
        if plain is not None and plain.label is not None:
            label, conf = plain.label, plain.conf
        else:
            label, conf = nms_args["label"], nms_args["prob"]
        t = time.perf_counter()
        bp = orig_nms(label, conf, *nms_args["args"], **nms_args["kw"])
        b_nms = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            write_picks(bp, os.path.join(d, "picks.csv"), voxel_size=tomo.voxel_size, tomogram_shape=tomo.shape,
                        tomogram=tomo.name)
            b_write = time.perf_counter() - t
        out["baselines"] = {}
        for name, b in bases.items():
            ex = b.extrapolated()
            out["baselines"][name] = {
                "times": {"model": t_base_model, "tile_read": ex["tile_read"], "network": ex["network"],
                          "nms": b_nms, "write": b_write},
                "tiles_run": len(b.tile_times), "n_tiles": len(b.jobs), "tile_shape": list(b.tshape),
                "sampled": len(b.tile_times) < len(b.jobs),
                "tile_s": float(np.median(b.tile_times[1:] if len(b.tile_times) > 2 else b.tile_times)),
                "n_picks": len(bp)}
        if plain is not None and plain.label is not None and a.truth:
            out["baselines"]["plain"]["f1"] = _f1(bp, a)
    peak = mw.stop()
    out["calib"] = [calib0, C.calibrate()]
    out["process_peak_anon_mb"] = peak.get("RssAnon")
    if a.truth:
        out["ours"]["f1"] = _f1(res.picks, a)
    if a.save_map:  # the MP-NMS input, for the baseline's memory process (not timed)
        np.save(a.save_map + ".label.npy", nms_args["label"])
        np.save(a.save_map + ".conf.npy", nms_args["prob"])
    return out


def child_baseline_memory(a) -> dict:
    """A fresh process holding what a full baseline run holds at its peak; times the
    whole-volume read and the normalisation statistics on the in-RAM volume."""
    import mrcfile
    import numpy as np

    from _memwatch import MemWatch
    from napari_cryopicker.core.formats import write_picks
    from napari_cryopicker.core.nms import mp_nms
    from napari_cryopicker.core.predict import merged_nms_params
    from napari_cryopicker.core.tomogram import robust_normalisation

    mw = MemWatch().start()
    T = Timers()
    t = time.perf_counter()
    with mrcfile.open(a.tomo, mode="r", permissive=True) as m:
        vol = np.array(m.data, dtype=np.float32)  # the whole volume in RAM
        vs = float(m.voxel_size.x)
    T.add("open", time.perf_counter() - t)
    ckpt, _ = C.resolve_model(a.model)
    nm = ckpt.normalisation or {}
    t = time.perf_counter()
    norm = robust_normalisation(vol, nm.get("lo", 0.5), nm.get("hi", 99.5))
    T.add("norm", time.perf_counter() - t)
    base = Baseline(ckpt, vol, vol.shape, a.tile, norm, keep_output=True,
                    tiling=(DEEPETPICKER_BLOCK, DEEPETPICKER_PAD))
    for j in sorted({0, len(base.jobs) // 2}):
        base.tile(j)
    np.copyto(base.label, np.load(a.save_map + ".label.npy"))  # as touched as after all tiles
    np.copyto(base.conf, np.load(a.save_map + ".conf.npy"))
    picks = mp_nms(base.label, base.conf, ckpt.classes, merged_nms_params(ckpt, {}) or None, voxel_size=vs)
    with tempfile.TemporaryDirectory() as d:
        write_picks(picks, os.path.join(d, "picks.csv"), voxel_size=vs, tomogram_shape=vol.shape)
    peak = mw.stop()
    return {"times": T.t, "peak_anon_mb": peak.get("RssAnon"), "peak_rss_mb": C.peak_rss_mb()}


def _f1(picks, a) -> float:
    from napari_cryopicker.core.metrics import evaluate

    _, truth, classes = C.simulated(tuple(json.loads(a.truth)), seed=a.seed)
    return evaluate(picks.with_tomogram("tomogram"), truth, classes).overall.f1


# ----------------------------------------------------------------------------- driver
HEAD = ["variant", "open s", "model s", "norm s", "tile reads s", "network+stitch s", "MP-NMS s", "write s",
        "total s", "Mvox/s", "s/tile", "peak anon MB", "peak RSS MB"]


def row(name: str, v: dict, voxels: float) -> list:
    t = v["times"]
    return [name, f"{t.get('open', 0):.2f}", f"{t.get('model', 0):.2f}", f"{t.get('norm', 0):.2f}",
            f"{t.get('tile_read', 0):.1f}", f"{t.get('network', 0):.1f}", f"{t.get('nms', 0):.1f}",
            f"{t.get('write', 0):.2f}", f"{v['total']:.1f}", f"{voxels / 1e6 / v['total']:.3f}", f"{v['tile_s']:.2f}",
            f"{v['peak_anon_mb']:.0f}", f"{v['peak_rss_mb']:.0f}"]


def tiling_table(shape, multiple: int, margin: int = 12) -> str:
    rows = []
    vox = math.prod(shape)
    for tile in (96, 128, 160, 192, 224, 256, 288):
        tshape, jobs = _tiling(shape, tile, margin, multiple)
        proc = len(jobs) * math.prod(tshape)
        act = 16 * 4 * math.prod(tshape) / 2**20  # one first-level activation (16 ch fp32)
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
    ap.add_argument("--baseline-tiles", type=int, default=32,
                    help="tiles of the plain baseline interleaved with ours' (extrapolated to all its tiles); "
                         "0 = every tile (slower; its picks and F1 are then its own)")
    ap.add_argument("--same-tiling-tiles", type=int, default=8,
                    help="tiles of the plain baseline on ours' tiling (-1 = skip)")
    ap.add_argument("--deepetpicker-tiles", type=int, default=4,
                    help="tiles of the DeepETPicker-like run (-1 = skip)")
    ap.add_argument("--skip-baseline", action="store_true", help="time ours only")
    ap.add_argument("--compile", choices=["off", "on", "auto"], default="off",
                    help="PredictConfig.compile for 'ours' (default off: what one `cryopicker predict` of this size "
                         "does; 'on' compiles first, its time is in 'other')")
    ap.add_argument("--no-mallopt", action="store_true",
                    help="run without the glibc heap setting that cryopicker predict makes (core/memory.py), "
                         "to measure what it gains")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--child", choices=["ours", "baseline-memory"], help=argparse.SUPPRESS)
    ap.add_argument("--tomo", help=argparse.SUPPRESS)
    ap.add_argument("--truth", help=argparse.SUPPRESS)
    ap.add_argument("--save-map", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        C.emit(child_ours(a) if a.child == "ours" else child_baseline_memory(a))
        return

    shape = C.parse_shape(a.shape)
    print(f"# inference.py | {C.machine()}")
    tomo, truth, classes = C.simulated(shape, seed=a.seed)
    print(f"# tomogram: {tomo} ({C.shape_str(shape)}, {len(truth)} particles, "
          f"{os.path.getsize(tomo) / 2**20:.0f} MiB float32)")
    ckpt, desc = C.resolve_model(a.model)
    print(f"# model: {desc}")
    tshape, jobs = _tiling(shape, a.tile, 12, ckpt.model_config.multiple)
    print(f"# ours' tiling: {len(jobs)} tiles of {C.shape_str(tshape)} (margin 12) = "
          f"{len(jobs) * math.prod(tshape) / math.prod(shape):.2f}x the output voxels")
    cshape, cjobs = _cube_tiling(shape, DEEPETPICKER_BLOCK, DEEPETPICKER_PAD)
    print(f"# DeepETPicker's tiling (the plain baselines): {len(cjobs)} blocks of {C.shape_str(cshape)} "
          f"(pad {DEEPETPICKER_PAD}) = {len(cjobs) * math.prod(cshape) / math.prod(shape):.2f}x the output voxels")
    mapbase = str(C.CACHE / f"map_{C.shape_str(shape)}_s{a.seed}")
    if a.skip_baseline:
        nb, ns, nd = 0, 0, 0
    else:
        nb = -1 if a.baseline_tiles <= 0 else a.baseline_tiles
        ns = 0 if a.same_tiling_tiles < 0 else (a.same_tiling_tiles or -1)
        nd = 0 if a.deepetpicker_tiles < 0 else (a.deepetpicker_tiles or -1)
    common = ["--tomo", str(tomo), "--tile", str(a.tile), "--seed", str(a.seed), "--save-map", mapbase]
    if a.model:
        common += ["--model", a.model]
    print("# process 1: ours (the real predict path) with baseline tiles interleaved ...", flush=True)
    r = C.run_child([os.path.abspath(__file__), "--child", "ours", "--baseline-tiles", str(nb),
                     "--same-tiling-tiles", str(ns), "--deepetpicker-tiles", str(nd), "--batch-size",
                     str(a.batch_size), "--compile", a.compile, "--truth", json.dumps(list(shape))] + common
                    + (["--no-mallopt"] if a.no_mallopt else []))
    ours, vox = r["ours"], r["voxels"]
    ours["tile_s"] = r["tile_s"]
    rows = [row("ours" + (" without the heap setting" if a.no_mallopt else ""), ours, vox)]
    bases = r.get("baselines", {})
    if bases:
        print("# process 2: the plain baseline's memory (whole volume in RAM, 2 blocks, full output, MP-NMS) ...",
              flush=True)
        mem = C.run_child([os.path.abspath(__file__), "--child", "baseline-memory"] + common)
        for name, b in bases.items():
            b["times"].update(open=mem["times"]["open"], norm=mem["times"]["norm"])
            b["total"] = sum(b["times"].values())
            b["peak_anon_mb"], b["peak_rss_mb"] = ((mem["peak_anon_mb"], mem["peak_rss_mb"]) if name == "plain"
                                                   else (float("nan"), float("nan")))
            rows.append(row(name + (" (extrap.)" if b["sampled"] else ""), b, vox))
    print()
    print(C.table(HEAD, rows, title=f"cryopicker predict on {C.shape_str(shape)} ({vox / 1e6:.1f} Mvoxel), "
                                    f"{r['threads']} threads, CPU; machine speed (fp32 matmul) "
                                    f"{r['calib'][0]:.0f} -> {r['calib'][1]:.0f} GFLOP/s during the run"))
    print(f"ours: {r['n_tiles']} tiles, {ours['n_picks']} picks, F1 vs truth {ours.get('f1', float('nan')):.3f}; "
          f"'other' time in predict (net build, between the last tile and MP-NMS) "
          f"{ours['times'].get('other', 0):.2f} s; peak anon - 2 B/voxel stitched output = "
          f"{ours['peak_anon_mb'] - 2 * vox / 2**20:.0f} MB")
    to = ours["times"]
    for name, b in bases.items():
        tb = b["times"]
        print(f"RATIO {name}/ours (same process, {b['tiles_run']} of its {b['n_tiles']} tiles of "
              f"{C.shape_str(b['tile_shape'])} interleaved with ours'): inference (tile reads + network) "
              f"{(tb['tile_read'] + tb['network']) / (to['tile_read'] + to['network']):.2f}x; whole predict "
              f"{b['total'] / ours['total']:.2f}x"
              + (f"; peak anon memory {b['peak_anon_mb'] / ours['peak_anon_mb']:.2f}x" if name == "plain" else ""))
    plain = bases.get("plain")
    if plain is not None and "f1" in plain:
        print(f"plain baseline's own map: {plain['n_picks']} picks, F1 {plain.get('f1', float('nan')):.3f}")
    elif bases:
        print("(sampled baselines: tile-read and network times extrapolated from the tiles run; MP-NMS and writing "
              "ran on ours' map; reading and normalisation times and the plain baseline's peak memory come from "
              "process 2; the DeepETPicker-like row uses its network size with random weights)")
    tot, nms = ours["total"], ours["times"]["nms"]
    note = "" if shape == (200, 512, 512) else f" [measured on {C.shape_str(shape)}, not the target's size]"
    ratio = plain["total"] / tot if plain else None
    print(f"targets (200x512x512, 2 cores){note}: whole predict <= 60 s: "
          f"{'MET' if tot <= 60 else 'NOT MET'} ({tot:.0f} s); >= 3x the plain baseline: "
          + (f"{'MET' if ratio >= 3 else 'NOT MET'} ({ratio:.2f}x)" if ratio else "n/a")
          + f"; MP-NMS < 5 s: {'MET' if nms < 5 else 'NOT MET'} ({nms:.1f} s)")
    print()
    print(tiling_table(shape, ckpt.model_config.multiple))


if __name__ == "__main__":
    sys.exit(main())
