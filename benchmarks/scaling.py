"""Scaling: time and peak memory of `cryopicker predict` (inference + MP-NMS) against the
tomogram size, each size in a fresh process.

Tomograms: crops (and, for sizes beyond it, periodic tilings) of the cached simulated
200x512x512 tomogram, written as memory-mapped MRC in benchmarks/.cache/ (speed hardly
depends on the content; the content keeps MP-NMS realistic). Each size runs the 'ours'
child of inference.py (open_tomogram, load_checkpoint, predict_picks, write_picks).

Printed per size: seconds, seconds per Mvoxel of the tomogram and per Mvoxel the network
actually ran on (tiles overlap and are padded, see inference.py's tiling table), the
ratio of per-voxel time to the smallest size, peak RSS (includes the memory-mapped file's
pages, which are page cache and can be dropped by the kernel) and peak anonymous memory
(what the process owns). Memory claim checked: peak anonymous memory = a constant tile
working set (the network's activations on one tile, MP-NMS's slab buffers) + the
stitched output at 2 bytes/voxel (uint8 label + uint8 probability); the column
'anon - 2 B/vox' should then be flat once the tile reaches its full size.

    nice -n 10 .venv/bin/python benchmarks/scaling.py [--big] [--sizes 64,128x256x256,200x512x512]
"""

from __future__ import annotations

import argparse
import math
import os

import _common as C  # noqa: E402  (sets sys.path)
import numpy as np

DEFAULT_SIZES = "64x64x64,128x256x256,200x512x512"
BIG = "512x1024x1024"


def tomogram_of(shape, src_shape=(200, 512, 512), seed=2000):
    """A crop / periodic tiling of the simulated ``src_shape`` tomogram, as float32 MRC."""
    import mrcfile

    src_path, _, _ = C.simulated(src_shape, seed=seed)
    if tuple(shape) == tuple(src_shape):
        return src_path
    p = C.CACHE / f"tiled_{C.shape_str(shape)}_from_{C.shape_str(src_shape)}_s{seed}.mrc"
    if p.exists():
        return p
    src = mrcfile.mmap(src_path, mode="r", permissive=True)
    s = src.data
    tmp = p.with_suffix(".tmp.mrc")
    m = mrcfile.new_mmap(tmp, shape=tuple(shape), mrc_mode=2, overwrite=True)
    yi = np.arange(shape[1]) % s.shape[1]
    xi = np.arange(shape[2]) % s.shape[2]
    for z in range(shape[0]):
        m.data[z] = s[z % s.shape[0]][np.ix_(yi, xi)]
    m.voxel_size = src.voxel_size
    m.close()
    src.close()
    os.replace(tmp, p)
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=DEFAULT_SIZES, help=f"comma-separated sizes (default {DEFAULT_SIZES})")
    ap.add_argument("--big", action="store_true", help=f"also {BIG} (~256 tiles: about an hour on 2 cores)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--tile", type=int, default=160)
    a = ap.parse_args()
    sizes = [C.parse_shape(s) for s in a.sizes.split(",") if s.strip()]
    if a.big:
        sizes.append(C.parse_shape(BIG))
    print(f"# scaling.py | {C.machine()}")
    ckpt, desc = C.resolve_model(a.model)
    print(f"# model: {desc}")
    from inference import _tiling

    mult = ckpt.model_config.multiple
    results = []

    def run(shape):
        tomo = tomogram_of(shape)
        tshape, jobs = _tiling(shape, a.tile, 12, mult)
        # ours alone: no baseline tiles interleaved (their freed memory would stay in the kept heap)
        argv = [os.path.join(C.HERE, "inference.py"), "--child", "ours", "--tomo", str(tomo), "--tile", str(a.tile),
                "--baseline-tiles", "0", "--same-tiling-tiles", "0", "--deepetpicker-tiles", "0"]
        if a.model:
            argv += ["--model", a.model]
        print(f"# {C.shape_str(shape)}: {len(jobs)} tiles of {C.shape_str(tshape)} (fresh process) ...", flush=True)
        out = C.run_child(argv)
        r = out["ours"]
        r.update(voxels=out["voxels"], calib=out["calib"], threads=out["threads"])
        r["shape"], r["tshape"], r["tiles"] = shape, tshape, len(jobs)
        r["run_vox"] = len(jobs) * math.prod(tshape)
        print(f"#   {r['total']:.1f} s, peak anon {r['peak_anon_mb']:.0f} MB", flush=True)
        return r

    for shape in sizes:
        results.append(run(shape))
    again = run(sizes[0]) if len(sizes) > 1 else None  # the smallest again: did the machine's load drift?
    base = results[0]
    per0 = base["total"] / base["voxels"]
    if again is not None:  # the reference per-voxel time: the mean of the two runs of the smallest
        per0 = 0.5 * (per0 + again["total"] / again["voxels"])
    rows = []
    for r in results:
        mv = r["voxels"] / 1e6
        t = r["times"]
        inf = t.get("network", 0) + t.get("tile_read", 0)
        stitched = 2 * r["voxels"] / 2**20
        rows.append([C.shape_str(r["shape"]), f"{mv:.1f}", f"{r['tiles']}x{C.shape_str(r['tshape'])}",
                     f"{r['run_vox'] / r['voxels']:.2f}", f"{inf:.1f}", f"{t.get('nms', 0):.1f}", f"{r['total']:.1f}",
                     f"{r['total'] / mv:.2f}", f"{inf / (r['run_vox'] / 1e6):.2f}",
                     f"{(r['total'] / r['voxels']) / per0:.2f}", f"{t.get('nms', 0) / mv * 1e3:.0f}",
                     f"{r['peak_rss_mb']:.0f}", f"{r['peak_anon_mb']:.0f}", f"{stitched:.0f}",
                     f"{r['peak_anon_mb'] - stitched:.0f}", f"{r['calib'][0]:.0f}/{r['calib'][1]:.0f}"])
    print()
    print(C.table(["size", "Mvox", "tiles", "run/out", "inference s", "MP-NMS s", "total s", "s/Mvox",
                   "infer s/Mvox run", "per-vox vs smallest", "NMS ms/Mvox", "peak RSS MB", "peak anon MB",
                   "2 B/vox MB", "anon - 2 B/vox", "GFLOP/s calib"], rows,
                  title=f"cryopicker predict against tomogram size ({results[0]['threads']} threads, tile {a.tile})"))
    print("memory: peak anon - 2 B/voxel (stitched output) per size = "
          + ", ".join(f"{r['peak_anon_mb'] - 2 * r['voxels'] / 2**20:.0f} MB (tile {C.shape_str(r['tshape'])})"
                      for r in results)
          + f"; the tile, and with it the working set, is capped at {a.tile}^3 whatever the tomogram's size")
    if again is not None:
        print(f"the smallest size ran first and last: {base['total']:.2f} s and {again['total']:.2f} s "
              f"(machine speed {base['calib'][0]:.0f} and {again['calib'][0]:.0f} GFLOP/s); the reference is their mean")
    ratio = (results[-1]["total"] / results[-1]["voxels"]) / per0
    print(f"RATIO per-voxel time largest/smallest = {ratio:.2f} (1.0 = flat); per Mvoxel the network ran on: "
          + ", ".join(f"{(r['times'].get('network', 0) + r['times'].get('tile_read', 0)) / (r['run_vox'] / 1e6):.2f} s"
                      for r in results))


if __name__ == "__main__":
    main()
