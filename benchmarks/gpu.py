"""`cryopicker predict` on a CUDA GPU: mixed precision, batch and tile size, against the
plain way on the same GPU, in one process.

Variants (each run twice on the same tomogram; the faster run is reported, so cuDNN's
first-call set-up and the page cache do not count; the F1 against the simulation's truth
is printed for each, so a speed-up that costs accuracy shows):

plain         the plain way on the GPU: the whole volume read into RAM as float32, the
              network in fp32 with the contiguous layout, one 72^3 block at a time
              (DeepETPicker's blocks, pad 12; 605 blocks for 200x512x512), then ``mp_nms``.
fp32 ...      ``predict_picks`` with ``PredictConfig(device="cuda", amp=False)``.
amp ...       the same with mixed precision (bfloat16 where the GPU supports it): the
              default on CUDA.
bs / tile     ``PredictConfig.batch_size`` and ``PredictConfig.tile``.

predict turns on cuDNN's autotuning (``model.cudnn_autotune``) while it runs; the plain
baseline does not. Tiles go to the GPU in the file's number type and are normalised there;
the arg-max comes back (2 bytes per voxel).

Time split: tile reads (``read_block``, from the memory map), normalisation statistics,
MP-NMS (on the CPU), and the rest of ``predict_picks`` ("network": host-to-device copies,
the network, the softmax, stitching). Peak GPU memory is
``torch.cuda.max_memory_allocated`` per variant.

``--big`` adds a 500x1000x1000 tomogram (Gaussian noise: speed does not depend on the
content, except that MP-NMS finds little) with the default settings.

    python benchmarks/gpu.py [--shape 200x512x512] [--big]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import _common as C  # noqa: E402  (sets sys.path)


def matmul_tflops(dtype, n: int = 8192, reps: int = 5) -> float:
    """Measured dense matmul speed on the GPU (TFLOP/s), the peak the limits are stated against."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(2):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def _reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_mb() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")


def run_ours(tomo, ckpt, cfg, truth, classes, label: str) -> dict:
    from napari_cryopicker.core import predict as P
    from napari_cryopicker.core.metrics import evaluate

    best = None
    for _ in range(2):
        T = {"tile_read": 0.0, "norm": 0.0, "nms": 0.0}
        orig = {k: getattr(P, k) for k in ("read_block", "normalisation_for", "mp_nms")}

        def wrap(key, fn):
            def inner(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    T[key] += time.perf_counter() - t
            return inner

        P.read_block = wrap("tile_read", orig["read_block"])
        P.normalisation_for = wrap("norm", orig["normalisation_for"])
        P.mp_nms = wrap("nms", orig["mp_nms"])
        _reset_gpu_peak()
        try:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = P.predict_picks(tomo, ckpt, cfg)
            total = time.perf_counter() - t
        finally:
            for k, v in orig.items():
                setattr(P, k, v)
        r = {"total": total, **T, "network": total - sum(T.values()),
             "gpu_mb": _gpu_peak_mb(), "n_picks": len(res.picks), "picks": res.picks}
        if best is None or r["total"] < best["total"]:
            best = r
    best["f1"] = evaluate(best.pop("picks").with_tomogram("tomogram"), truth, classes).overall.f1 if truth else None
    best["name"] = label
    return best


def run_plain(tomo_path, ckpt, truth, classes, device: str = "cuda") -> dict:
    """The plain way on the GPU, every block (no extrapolation)."""
    import mrcfile
    import numpy as np

    from inference import DEEPETPICKER_BLOCK, DEEPETPICKER_PAD, Baseline
    from napari_cryopicker.core.metrics import evaluate
    from napari_cryopicker.core.nms import mp_nms
    from napari_cryopicker.core.predict import merged_nms_params
    from napari_cryopicker.core.tomogram import robust_normalisation

    best = None
    for _ in range(2):
        _reset_gpu_peak()
        t0 = time.perf_counter()
        with mrcfile.open(tomo_path, mode="r", permissive=True) as m:
            vol = np.array(m.data, dtype=np.float32)
            vs = float(m.voxel_size.x)
        t1 = time.perf_counter()
        nm = ckpt.normalisation or {}
        norm = robust_normalisation(vol, nm.get("lo", 0.5), nm.get("hi", 99.5))
        t2 = time.perf_counter()
        b = Baseline(ckpt, vol, vol.shape, 160, norm, keep_output=True,
                     tiling=(DEEPETPICKER_BLOCK, DEEPETPICKER_PAD), device=device)
        for j in range(len(b.jobs)):
            b.tile(j)
        t3 = time.perf_counter()
        picks = mp_nms(b.label, b.conf, ckpt.classes, merged_nms_params(ckpt, {}) or None, voxel_size=vs)
        t4 = time.perf_counter()
        r = {"total": t4 - t0, "tile_read": t1 - t0 + b.T.t["tile_read"], "norm": t2 - t1,
             "network": t3 - t2 - b.T.t["tile_read"], "nms": t4 - t3,
             "gpu_mb": _gpu_peak_mb(), "n_picks": len(picks), "picks": picks,
             "n_tiles": len(b.jobs)}
        if best is None or r["total"] < best["total"]:
            best = r
    best["f1"] = evaluate(best.pop("picks").with_tomogram("tomogram"), truth, classes).overall.f1
    best["name"] = f"plain: fp32, contiguous, {best['n_tiles']} blocks of 72^3, one at a time"
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="200x512x512")
    ap.add_argument("--model", default=None, help="checkpoint (default as the other benchmarks)")
    ap.add_argument("--seed", type=int, default=2000)
    ap.add_argument("--big", action="store_true", help="also a 500x1000x1000 (noise) tomogram")
    ap.add_argument("--device", default="cuda", help="'cpu' only to check this script on a small --shape")
    a = ap.parse_args()

    import torch

    from napari_cryopicker.core.model import ModelConfig, macs_per_voxel
    from napari_cryopicker.core.predict import PredictConfig, _tile_shape, tile_starts
    from napari_cryopicker.core.tomogram import open_tomogram

    dev = a.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    print(f"# gpu.py | {C.machine()}")
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        gpu_name = p.name
        print(f"# GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs; "
              f"bf16 supported: {torch.cuda.is_bf16_supported()}; cudnn {torch.backends.cudnn.version()}, "
              f"cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}")
        bf16, fp32 = matmul_tflops(torch.bfloat16), matmul_tflops(torch.float32)
        print(f"# measured 8192^3 matmul: bf16 {bf16:.0f} TFLOP/s, fp32 {fp32:.0f} TFLOP/s", flush=True)
    else:
        gpu_name, bf16 = "the CPU (a check of this script only)", C.calibrate() / 1e3

    shape = C.parse_shape(a.shape)
    tomo_path, truth, classes = C.simulated(shape, seed=a.seed)
    ckpt, desc = C.resolve_model(a.model)
    print(f"# model: {desc}")
    tomo = open_tomogram(tomo_path)
    mc: ModelConfig = ckpt.model_config
    flop_vox = 2 * macs_per_voxel(mc)
    rows, results = [], []
    variants = [
        ("fp32 (TF32 convs), bs 1, tile 160", dict(amp=False)),
        ("amp, bs 1, tile 160 (default)", dict()),
        ("amp, bs 4, tile 160", dict(batch_size=4)),
        ("amp, bs 1, tile 256", dict(tile=256)),
        ("amp, bs 2, tile 256", dict(tile=256, batch_size=2)),
    ]
    print("# running the plain baseline ...", flush=True)
    results.append(run_plain(tomo_path, ckpt, truth, classes, dev))
    for label, kw in variants:
        print(f"# running {label} ...", flush=True)
        cfg = PredictConfig(device=dev, **kw)
        r = run_ours(tomo, ckpt, cfg, truth, classes, label)
        ts = _tile_shape(shape, cfg.tile, cfg.margin, mc.multiple)
        r["run_vox"] = math.prod(len(tile_starts(n, t, cfg.margin)) for n, t in zip(shape, ts)) * math.prod(ts)
        results.append(r)

    vox = math.prod(shape)
    base = results[0]["total"]
    for r in results:
        rows.append([r["name"], f"{r['tile_read']:.2f}", f"{r['norm']:.2f}", f"{r['network']:.2f}", f"{r['nms']:.2f}",
                     f"{r['total']:.2f}", f"{vox / 1e6 / r['total']:.1f}", f"{base / r['total']:.1f}x",
                     f"{r['gpu_mb']:.0f}", r["n_picks"], f"{r['f1']:.3f}"])
    print()
    print(C.table(["variant", "tile reads s", "norm s", "network s", "MP-NMS s", "total s", "Mvox/s",
                   "plain/this", "GPU MB", "picks", "F1"], rows,
                  title=f"predict_picks on {C.shape_str(shape)} ({vox / 1e6:.1f} Mvoxel) on {gpu_name} "
                        "(best of 2 runs each)"))
    d = next(r for r in results if r["name"].endswith("(default)"))
    lim = d["run_vox"] * flop_vox / (bf16 * 1e12)
    print(f"default network: {flop_vox / 1e3:.1f} kFLOP/voxel; the default tiling runs {d['run_vox'] / 1e6:.1f} "
          f"Mvoxel = {d['run_vox'] * flop_vox / 1e12:.2f} TFLOP -> compute limit at the measured bf16 matmul speed "
          f"{lim * 1e3:.1f} ms; the default's network time is {d['network'] / lim:.0f}x that (small channel counts: "
          f"memory-bound on a GPU)")

    if a.big:
        big = (500, 1000, 1000)
        print(f"# writing a {C.shape_str(big)} noise tomogram ...", flush=True)
        path = C.noise_tomogram(big)
        from _memwatch import MemWatch

        mw = MemWatch().start()
        r = run_ours(open_tomogram(path), ckpt, PredictConfig(device=dev), None, classes, "default")
        anon = mw.stop().get("RssAnon", float("nan"))
        print(f"{C.shape_str(big)} ({math.prod(big) / 1e6:.0f} Mvoxel, noise): total {r['total']:.1f} s "
              f"(tile reads {r['tile_read']:.1f}, norm {r['norm']:.1f}, network {r['network']:.1f}, "
              f"MP-NMS {r['nms']:.1f}); {math.prod(big) / 1e6 / r['total']:.0f} Mvox/s; GPU peak {r['gpu_mb']:.0f} MB; "
              f"host peak anonymous memory {anon:.0f} MB (the stitched output alone is "
              f"{2 * math.prod(big) / 2**20:.0f} MB)")


if __name__ == "__main__":
    main()
