"""Shared helpers for the benchmarks: cached simulations, model resolution, peak memory,
a machine-speed calibration and plain-text tables.

Nothing here changes the package; every benchmark imports the real code from
``napari_cryopicker.core``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"
TRAINED_MODEL = CACHE / "model.pt"  # written by benchmarks/training.py
DEMO_MODEL = REPO / "demo_out" / "model.pt"  # written by `cryopicker demo`

sys.path.insert(0, str(REPO / "src"))


def parse_shape(text: str) -> tuple[int, int, int]:
    """'200x512x512' or '64' (a cube) -> (z, y, x)."""
    parts = [int(p) for p in str(text).lower().replace(",", "x").split("x") if p]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or min(parts) < 8:
        raise SystemExit(f"--shape: give Z x Y x X (each >= 8), got {text!r}")
    return tuple(parts)  # type: ignore[return-value]


def shape_str(shape) -> str:
    return "x".join(str(int(s)) for s in shape)


# ---------------------------------------------------------------------------- simulations
def simulated(shape, seed: int = 2000, name: str = "test", **kw):
    """(tomogram path, truth Picks, ClassTable) of a simulated tomogram, cached as MRC.

    The first call simulates and writes ``benchmarks/.cache/sim_<shape>_s<seed>/``; later
    calls only read the truth. 200x512x512 takes ~15 s and ~1.5 GB of RAM to simulate here.
    """
    import pandas as pd

    from napari_cryopicker.core.classes import ClassTable
    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.simulate import simulate_tomogram, write_simulation
    from napari_cryopicker.core.tomogram import read_voxel_size

    tag = f"sim_{shape_str(shape)}_s{seed}" + "".join(f"_{k}{v}" for k, v in sorted(kw.items()))
    d = CACHE / tag
    mrc, csv, cls = d / "tomogram.mrc", d / "picks.csv", d / "classes.json"
    if not (mrc.exists() and csv.exists() and cls.exists()):
        t0 = time.perf_counter()
        print(f"# simulating {shape_str(shape)} (seed {seed}) into {d} (cached for later runs) ...", flush=True)
        sim = simulate_tomogram(shape=shape, seed=seed, name=name, **kw)
        write_simulation(d, sim)
        del sim
        print(f"# simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    classes = ClassTable.from_dict(json.loads(cls.read_text()))
    df = pd.read_csv(csv)
    vs = read_voxel_size(mrc)
    truth = Picks.from_zyx(df[["z", "y", "x"]].to_numpy(float), class_name=list(df["class"].astype(str)),
                           source="imported", tomogram="tomogram", voxel_size=vs)
    return mrc, truth, classes


def noise_tomogram(shape, seed: int = 0) -> Path:
    """A cheap Gaussian-noise float32 MRC of ``shape`` (written slab by slab), cached."""
    import mrcfile

    p = CACHE / f"noise_{shape_str(shape)}_s{seed}.mrc"
    if p.exists():
        return p
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp.mrc")
    rng = np.random.default_rng(seed)
    m = mrcfile.new_mmap(tmp, shape=tuple(shape), mrc_mode=2, overwrite=True)
    for z in range(0, shape[0], 16):
        z1 = min(shape[0], z + 16)
        m.data[z:z1] = rng.standard_normal((z1 - z, shape[1], shape[2]), dtype=np.float32)
    m.voxel_size = 10.0
    m.update_header_stats()
    m.close()
    os.replace(tmp, p)
    return p


# ---------------------------------------------------------------------------- models
def resolve_model(arg: str | None, n_classes: int = 4):
    """(Checkpoint, description). --model wins, then benchmarks/.cache/model.pt (from
    training.py), then demo_out/model.pt, else a random-init default network."""
    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet, load_checkpoint
    from napari_cryopicker.core.simulate import default_classes

    for cand in ([Path(arg)] if arg else [TRAINED_MODEL, DEMO_MODEL]):
        if cand.exists():
            ck = load_checkpoint(cand)
            return ck, f"trained checkpoint {cand} (f_maps={ck.model['f_maps']}, coord_conv={ck.model['coord_conv']})"
    if arg:
        raise SystemExit(f"--model {arg}: no such file")
    import torch

    torch.manual_seed(0)
    classes = default_classes()
    mc = ModelConfig(n_classes=len(classes))
    net = ResUNet(mc)
    ck = Checkpoint(model=mc.to_dict(), state_dict=net.state_dict(), classes=classes, voxel_size=10.0)
    return ck, (f"RANDOM-INIT default network ModelConfig() f_maps={list(mc.f_maps)} coord_conv={mc.coord_conv} "
                "(no trained checkpoint found: run benchmarks/training.py or `cryopicker demo` first; speed does "
                "not depend on the weights, MP-NMS time does a little)")


# ---------------------------------------------------------------------------- measuring
def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # pragma: no cover
        return float("nan")


def calibrate(seconds: float = 1.0) -> float:
    """Current fp32 matmul speed (GFLOP/s, 1024^2, best of a few) - a machine-load indicator:
    compare it across the variants of one run to see whether the machine was equally busy."""
    import torch

    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    torch.mm(a, b)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024**3 / best / 1e9


def machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return (f"{time.strftime('%Y-%m-%d %H:%M')} | {cpu}, {os.cpu_count()} cores, {gpu} | torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), numpy {np.__version__}, python {platform.python_version()}")


def run_child(argv: list[str], timeout: float | None = None) -> dict:
    """Run ``python argv...`` in a fresh process; it prints one line 'RESULT {json}'."""
    cmd = [sys.executable, *argv]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in p.stderr.splitlines():
        if line.strip() and "warning" in line.lower():
            print("#   child: " + line.strip()[:200], flush=True)
    res = None
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT "):])
        elif line.strip():
            print("#   " + line, flush=True)
    if p.returncode != 0 or res is None:
        raise SystemExit(f"child failed (exit {p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return res


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def table(headers: list[str], rows: list[list], title: str | None = None) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = [title] if title else []
    for k, r in enumerate(cells):
        out.append("  ".join(c.rjust(w[i]) if i else c.ljust(w[i]) for i, c in enumerate(r)))
        if k == 0:
            out.append("  ".join("-" * x for x in w))
    return "\n".join(out)
