"""FLOPs: multiply-adds per voxel of the default network and the fraction of the machine's
peak that inference achieves, all measured in this process.

1. ``model.macs_per_voxel(ModelConfig())`` (convolutions only) and the parameter count.
2. Machine peak, measured here: the best of several ``torch.mm`` of 4096x4096 fp32
   (2 n^3 FLOP each), and the same in bf16; plus the nominal peak from the CPU flags and
   clock (FMA width x 2 pipes x cores x GHz) as a cross-check.
3. The network on one tile (default 160^3), eager fp32, as predict runs it
   (``model.prepare_for_inference``: batch norm folded, channels_last_3d, 3x3x3
   convolutions and pooling run by oneDNN directly): achieved FLOP/s = 2 x MACs/voxel x
   voxels / seconds; fraction of the measured fp32 peak. For comparison, on the same
   tile: the plain contiguous layout (the inference baseline), channels_last alone (what
   predict did before), bf16 autocast (only where the CPU has native bf16), and glibc told
   to keep freed memory in the heap (``mallopt(M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2
   GiB)``, as ``cryopicker predict`` does; this script leaves it off elsewhere); their
   arg-max agreement with predict's forward is printed. Variants run round-robin;
   user/system CPU seconds and minor page faults per forward pass (getrusage) show where
   the system time goes.
4. Where the time goes: torch.profiler self-CPU time by operator on one smaller tile
   (``--profile-tile``, default 96^3).

    nice -n 10 .venv/bin/python benchmarks/flops.py [--tile 160] [--repeat 2]
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import os
import resource
import time

import _common as C  # noqa: E402  (sets sys.path)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
try:
    libc = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    libc = None


def mm_peak(dtype, n=4096, repeat=5) -> float:
    import torch

    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def nominal_peak() -> tuple[float, str]:
    flags, mhz = set(), 0.0
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("cpu MHz") and not mhz:
                mhz = float(line.split(":", 1)[1])
    except OSError:
        pass
    width = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4  # fp32 lanes per FMA
    cores = os.cpu_count() or 1
    peak = width * 2 * 2 * cores * mhz / 1e3  # lanes x 2 FLOP (FMA) x 2 FMA pipes x cores x GHz
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    bf16 = "avx512_bf16" in flags
    return peak, (f"{isa} FMA ({width} fp32 lanes) x 2 pipes x {cores} cores x {mhz / 1e3:.2f} GHz; "
                  f"bf16 dot-product instructions (avx512_bf16): {'yes' if bf16 else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tile", type=int, default=160)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per variant (best is reported)")
    ap.add_argument("--profile-tile", type=int, default=96)
    ap.add_argument("--no-variants", action="store_true", help="only fp32 channels_last (and the baseline)")
    a = ap.parse_args()

    import numpy as np
    import torch

    from napari_cryopicker.core.model import ModelConfig, ResUNet, count_parameters, macs_per_voxel

    print(f"# flops.py | {C.machine()}")
    print(f"# torch CPU capability: {torch.backends.cpu.get_cpu_capability()}; mkldnn {torch.backends.mkldnn.is_available()}")
    mc = ModelConfig()
    macs = macs_per_voxel(mc)
    torch.manual_seed(0)
    net = ResUNet(mc).eval()
    # BatchNorm statistics that are not the identity (a trained net's are not)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    print(f"default network ModelConfig(): f_maps={list(mc.f_maps)}, coord_conv={mc.coord_conv}, "
          f"pyramid={mc.pyramid}, n_classes={mc.n_classes}: {count_parameters(net):,} parameters, "
          f"{macs:,.0f} multiply-adds per voxel ({2 * macs / 1e3:.1f} kFLOP/voxel)")

    nom, how = nominal_peak()
    p32 = mm_peak(torch.float32)
    p16 = mm_peak(torch.bfloat16, n=1024, repeat=2)  # 1024^2 first: bf16 may be emulated (very slow)
    n16 = 1024
    if p16 > 0.5 * p32:
        p16, n16 = mm_peak(torch.bfloat16, repeat=5), 4096
    print(f"peak, measured: fp32 torch.mm 4096^2 best of 5 = {p32:.0f} GFLOP/s; bf16 torch.mm {n16}^2 = "
          f"{p16:.1f} GFLOP/s ({p16 / p32:.2f}x fp32)")
    fast16 = p16 > p32
    print(f"peak, nominal: {nom:.0f} GFLOP/s fp32 ({how}); measured fp32 = {p32 / nom:.0%} of nominal")

    n = a.tile
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, n, n, n), dtype=np.float32))
    vox = n**3
    flop = 2 * macs * vox
    from napari_cryopicker.core.model import prepare_for_inference

    # name, model key, dtype, keep the heap (mallopt) for this variant
    variants = [("fp32, predict's forward", "predict", torch.float32, False),
                ("fp32 contiguous (baseline)", "plain", torch.float32, False)]
    if not a.no_variants:
        variants.append(("fp32 channels_last only", "cl", torch.float32, False))
        if fast16:
            variants.append(("bf16 autocast, predict's forward", "predict", torch.bfloat16, False))
        if libc is not None:
            variants.append(("fp32, predict's forward, heap kept (mallopt)", "predict", torch.float32, True))
    nets = {"cl": copy.deepcopy(net).to(memory_format=torch.channels_last_3d), "plain": ResUNet(mc).eval()}
    nets["plain"].load_state_dict(net.state_dict())
    nets["predict"] = prepare_for_inference(copy.deepcopy(net), "cpu")  # BN folded, channels_last, oneDNN
    models = [nets[key] for _, key, _, _ in variants]
    inputs = [x if key == "plain" else x.contiguous(memory_format=torch.channels_last_3d)
              for _, key, _, _ in variants]

    def run(i):
        dt, keep = variants[i][2], variants[i][3]
        if keep:  # glibc: serve big blocks from the heap and keep freed memory (no page faults)
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
            libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == torch.bfloat16):
            t = time.perf_counter()
            out = models[i](inputs[i])
            wall = time.perf_counter() - t
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if keep:  # back to glibc's defaults for the other variants
            libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
            libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        usage[i].append((r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
        return wall, out

    usage = [[] for _ in variants]

    outs = [run(i)[1].float().argmax(1) for i in range(len(variants))]  # warm-up + arg-max for agreement
    times = [[] for _ in variants]
    usage = [[] for _ in variants]
    for _ in range(a.repeat):  # round-robin: each round runs every variant once, and the matmul peak
        p32 = max(p32, mm_peak(torch.float32, repeat=2))
        for i in range(len(variants)):
            times[i].append(run(i)[0])
            print(f"#   {variants[i][0]}: {times[i][-1]:.2f} s", flush=True)
    ref = outs[0]
    rows = []
    for i, (name, _, dt, _) in enumerate(variants):
        best = min(times[i])
        agree = float((outs[i] == ref).float().mean())
        g = flop / best / 1e9
        u = np.median(np.asarray(usage[i]), axis=0)
        rows.append([name, f"{best:.2f}", f"{vox / best / 1e6:.2f}", f"{g:.0f}", f"{g / p32:.0%}",
                     f"{g / (p16 if dt == torch.bfloat16 else p32):.0%}", f"{u[0]:.1f}", f"{u[1]:.1f}",
                     f"{u[2] / 1e3:.0f}k", f"{agree:.4f}"])
    print()
    print(C.table(["variant", "s/tile", "Mvox/s", "GFLOP/s", "of fp32 mm peak", "of own-dtype peak",
                   "user s", "sys s", "page faults", "arg-max = fp32"], rows,
                  title=f"The default network on one {n}^3 tile ({vox / 1e6:.1f} Mvoxel, {flop / 1e9:.0f} GFLOP), "
                        f"eager, {torch.get_num_threads()} threads, best of {a.repeat} rounds (round-robin) after a warm-up"))
    paired = [b / c for b, c in zip(times[1], times[0])]
    print(f"RATIO contiguous (baseline) / predict's forward per tile: best {min(times[1]) / min(times[0]):.2f}x, per round "
          + ", ".join(f"{r:.2f}x" for r in paired) + f"; fp32 matmul peak (best over the run) {p32:.0f} GFLOP/s")
    for i in range(2, len(variants)):
        r = [c / v for c, v in zip(times[0], times[i])]
        print(f"RATIO predict's forward / '{variants[i][0]}' per tile (same rounds): "
              + ", ".join(f"{x:.2f}x" for x in r) + f" -> median {np.median(r):.2f}x (> 1: the what-if is faster)")
    if not fast16 and not a.no_variants:  # bf16 is emulated here: time it on a small tile only
        k = 32
        xs = torch.randn(1, 1, k, k, k).contiguous(memory_format=torch.channels_last_3d)
        ts = {}
        for dt in (torch.float32, torch.bfloat16):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dt == torch.bfloat16):
                nets["predict"](xs)
                t = time.perf_counter()
                nets["predict"](xs)
                ts[dt] = time.perf_counter() - t
        print(f"bf16 autocast on a {k}^3 tile: {ts[torch.bfloat16]:.2f} s vs fp32 {ts[torch.float32]:.2f} s "
              f"({ts[torch.bfloat16] / ts[torch.float32]:.1f}x slower): no native bf16 on this CPU, so predict "
              "rightly keeps fp32 on CPU")

    # where the time goes
    from torch.profiler import ProfilerActivity, profile

    k = a.profile_tile
    xp = torch.randn(1, 1, k, k, k).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        nets["predict"](xp)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            nets["predict"](xp)
    groups: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        nm = ev.key
        if nm.startswith("aten::") and ev.self_cpu_time_total > 0:
            g = ("convolution" if "conv" in nm or "mkldnn" in nm else nm.replace("aten::", ""))
            groups[g] = groups.get(g, 0.0) + ev.self_cpu_time_total
            total += ev.self_cpu_time_total
    rows = [[g, f"{v / 1e6:.2f}", f"{v / total:.0%}"] for g, v in sorted(groups.items(), key=lambda kv: -kv[1])[:10]]
    print()
    print(C.table(["operator", "self CPU s", "share"], rows,
                  title=f"Where the time goes: predict's fp32 forward on a {k}^3 tile (torch.profiler)"))


if __name__ == "__main__":
    main()
