"""The calibration picture of the realistic simulator (docs/images/realistic.png).

Simulates one 200x512x512 tomogram with the default parameters (seed 0) and draws:
an XY slice as reconstructed and the same with a 1-voxel Gaussian (what an expert looks
at), the noise-free potential of that slice with the truth of four classes circled, an
XZ slice (the wedge's elongation, gold streaks), close-ups of a ribosome, a 26S
proteasome-like particle, a 6-nm and a 4-nm particle, and the XZ power spectrum with its
missing wedge. Prints the simulation time and a per-class visibility figure: the mean
value (in SDs of the slab) at the truth centres after the 1-voxel Gaussian.

    .venv/bin/python benchmarks/simulator_figure.py [--out docs/images/realistic.png] [--dose 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import _common as C  # noqa: E402  (sets sys.path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(C.REPO / "docs" / "images" / "realistic.png"))
    ap.add_argument("--dose", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage

    from napari_cryopicker.core.realistic import simulate_realistic

    t0 = time.perf_counter()
    sim = simulate_realistic(seed=args.seed, dose=args.dose, keep_clean=True)
    print(f"simulated 200x512x512 in {time.perf_counter() - t0:.1f} s; {len(sim.picks)} particles")
    d, clean, t = sim.data, sim.clean, sim.picks.table
    smooth = ndimage.gaussian_filter(d, 1.0)
    print("mean value at the truth centres after a 1-voxel Gaussian (slab SD units; dark is negative):")
    for name in sim.classes.names:
        zyx = np.rint(sim.picks.select(class_name=name).zyx).astype(int)
        print(f"  {name:13s} {sim.classes[name].diameter:5.1f} vox  {smooth[tuple(zyx.T)].mean():+.2f}")

    z = int(np.median(t["z"]))
    fig = plt.figure(figsize=(16, 11))
    gs = fig.add_gridspec(3, 4, height_ratios=[1.25, 1.25, 0.8])

    def show(ax, img, title, lim=None):
        lo, hi = lim or np.percentile(img, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])

    win = (slice(0, 256), slice(0, 256))
    show(fig.add_subplot(gs[0, 0]), d[z][win], f"XY slice z={z}, as reconstructed (256x256 of 512)")
    show(fig.add_subplot(gs[0, 1]), smooth[z][win], "the same, Gaussian 1 voxel")
    ax = fig.add_subplot(gs[0, 2])
    show(ax, -clean[z][win], "noise-free potential; circles: truth within 3 slices")
    near = t[(abs(t["z"] - z) < 3) & (t["y"] < 256) & (t["x"] < 256)]
    for name, col in [("ribosome", "red"), ("mitoribosome", "magenta"), ("proteasome", "yellow"),
                      ("chaperonin", "cyan"), ("globule4", "lime")]:
        s = near[near["class_name"] == name]
        r = sim.classes[name].diameter / 2
        for _, row in s.iterrows():
            ax.add_patch(plt.Circle((row["x"], row["y"]), r, fill=False, color=col, lw=0.8))
    ax = fig.add_subplot(gs[0, 3])
    f = np.abs(np.fft.fftshift(np.fft.fft2(d[:, 200:312, :] - d.mean(), axes=(0, 2)), axes=(0, 2))) ** 2
    ax.imshow(np.log(f.mean(axis=1) + 1e-6), cmap="magma", aspect="auto")
    ax.set_title("XZ power spectrum (kz down, kx across): the missing wedge", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    gold = [g for g in sim.distractors if g["kind"] == "gold"]
    yg = int(round(gold[0]["centre_zyx"][1])) if gold else 256
    show(fig.add_subplot(gs[1, :]), smooth[:, yg, :],
         f"XZ slice y={yg} through a gold bead, Gaussian 1 voxel: elongation along z, the bead's streaks, the slab")
    for k, name in enumerate(["ribosome", "proteasome", "globule6", "globule4"]):
        row = t[t["class_name"] == name].iloc[0]
        zi, yi, xi = int(row["z"]), int(row["y"]), int(row["x"])
        h = 24
        patch = smooth[zi, max(yi - h, 0):yi + h, max(xi - h, 0):xi + h]
        show(fig.add_subplot(gs[2, k]), patch, f"{name} ({sim.classes[name].diameter:g} vox), Gaussian 1")
    fig.suptitle(f"Realistic preset, defaults: 10 A voxels, -60..60 deg every 3 deg, {args.dose:g} e/A^2, "
                 "3 um underfocus, unflipped CTF, WBP (seed 0)", fontsize=12)
    fig.tight_layout()
    fig.savefig(args.out, dpi=72)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
