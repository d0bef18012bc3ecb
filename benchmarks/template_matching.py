"""Template-matching baseline (pytme) on the realistic benchmark: the bar the picker must beat.

For each seed the test tomogram of ``realistic.py`` (seed 200 + s) is searched with the
EXACT density of each of the four benchmark classes (``core.realistic.class_template``)
by pytme's fast local correlation (FLC with a spherical mask, ``-s FLCSphericalMask``),
max over rotations. The template gets what a pytme user gives it: the data's contrast
(``--invert-target-contrast``: protein is dark in the tomogram), the unflipped CTF of the
simulation (``--defocus 30000 --ctf-correction raw``, 300 kV, Cs 2.7 mm, 7 % amplitude
contrast) and the missing wedge of its tilt series (-60..60 in 3-degree steps about Y:
``--tilt-angles`` a .tlt file, ``--wedge-axes 2,0`` = beam z, tilt in x-z). The search
runs on a block-mean binned copy (``--bin``, default 2: 100 x 256 x 256 at 20 A) with the
template made at 10 A and binned the same way (centre kept on a binned voxel centre).
Not modelled by pytme: the simulation's B-factor envelope (B = 100 A^2: < 2 % at 40 A) and
WBP's radial low-pass (beyond the bin-2 Nyquist).

Picks: each class's score map is normalised by its median and MAD (robust SDs, so classes
compare); candidates are its local maxima >= ``--floor`` (3) at least the class radius
apart (greedy, highest first; at most ``--cap`` per class), in full-size voxels; those on
gold fiducials (``core.fiducials``) are dropped; per-class thresholds; then the classes are
resolved: where picks of two classes lie within the larger radius, the higher normalised
score wins (greedy, after thresholding). Thresholds two ways, both scored with
``realistic.score`` (F1 etc. within the full and half radius):

  clicks  only what a user has, the TRAIN tomogram (seed 100 + s) and the 40 clicks per
          class of ``realistic.clicks(.., "fewclick", 40, seed)``. TM runs on the train
          tomogram too; for a threshold t, R(t) = the fraction of the 40 clicks matched
          (within the radius) by picks of their class; N(t) = the picks of that class. The
          unclicked particles are unknown, so precision is estimated PU-style: the class
          count is estimated as N_hat = min over t with >= 20 clicks matched of
          N(t) / R(t) (clicks are a random sample; the least contaminated threshold gives
          the best estimate; at least 40), and P(t) = min(1, R(t) N_hat / N(t)). The
          thresholds maximise the mean over classes of 2PR/(P+R) (coordinate ascent, the
          classes resolved). N_hat is taken first with each class alone, then again against
          the other classes at the thresholds found, and the thresholds chosen again. They
          are applied as they are (normalised units) to the test tomogram.
  oracle  the per-class thresholds maximising the mean F1 on the test truth itself (same
          coordinate ascent): an upper bound for template matching with these maps.

Results: benchmarks/.cache/realistic/tm_<mode>_s<seed>.json (+ _picks.csv); score maps
are cached in benchmarks/.cache/realistic/tm_maps/ so a re-run only re-thresholds.

Install pytme once, in its own venv (the project's venv stays untouched; tested: pytme
0.3.6, numpy 2.4, scipy 1.17):

    python3 -m venv benchmarks/.cache/tme-venv
    nice -n 19 benchmarks/.cache/tme-venv/bin/pip install pytme

Run (the TM itself is ``tme-venv/bin/pytme match`` in a subprocess, files in a temp dir):

    nice -n 10 .venv/bin/python benchmarks/template_matching.py --seeds 0 1 2 [--angular-step 30]
    nice -n 19 .venv/bin/python benchmarks/template_matching.py --quick   # a 128x256x256 crop, 45 deg

Cost: 8 searches per seed (4 classes x train and test), each ``n_rot`` rotations of two
FFTs of the padded volume (128 x 288 x 288 at bin 2): ~0.35 s per rotation on one core
here, so the default 30 degrees (360 rotations) is ~2.2 min per search, ~18 min per seed
(``--dry-run`` prints the estimate). 45 degrees (60 rotations) lost much: on the quick crop
the mitoribosome's oracle F1 went from 0.96 (30 deg) to 0.67.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C  # noqa: E402  (sets sys.path)
import realistic as R  # noqa: E402  (the network benchmark: simulations, clicks, scoring)

OUT = C.CACHE / "realistic"
MAPS = OUT / "tm_maps"
TME_VENV = C.CACHE / "tme-venv"
PYTME = TME_VENV / "bin" / "pytme"
INSTALL = f"python3 -m venv {TME_VENV} && nice -n 19 {TME_VENV}/bin/pip install pytme"

#: acquisition of the realistic simulation (core.realistic.simulate_realistic / core.tilt)
TILT = (-60.0, 60.0, 3.0)
DEFOCUS_A = 30000.0  # 3 um underfocus
VOLTAGE_KV = 300.0
CS_A = 2.7e7  # 2.7 mm
AMPLITUDE_CONTRAST = 0.07

#: seconds per rotation per million voxels of the padded FFT box with one pytme process
#: (numpyfftw backend), measured here: 60 rotations of the ribosome over the bin-2 test
#: tomogram (box 126 x 288 x 288) in 20-23 s; only for the printed estimate. Two
#: processes (-n 2) were slower on this 2-core machine (27 s): the FFTs are memory-bound.
SEC_PER_ROT_PER_MVOX = 0.034


# ----------------------------------------------------------------------------- templates
def binned_template(name: str, b: int, margin: int = 3) -> tuple[np.ndarray, int]:
    """The class density at 10 A block-mean binned by ``b``, centre on the middle voxel.

    The full-size box is shifted by (b - 1) / 2 voxel and padded so that the template's
    centre (a voxel centre at 10 A) lands on a binned voxel centre, as a particle centred
    at full-size p appears at (p - (b - 1) / 2) / b in the binned tomogram. Returns the
    (2K+1)^3 cube and K; ``margin`` binned voxels of room around the body for the mask.
    """
    from scipy import ndimage

    from napari_cryopicker.core.realistic import class_template

    t = class_template(name, 10.0, calibrated=not R.LEGACY_BODIES)
    if b == 1:
        return np.pad(t, margin), (t.shape[0] - 1) // 2 + margin
    h = (t.shape[0] - 1) // 2
    p = (-h) % b
    k = (h + p) // b
    K = k + margin
    n = (2 * K + 1) * b
    off = (K - k) * b + p
    big = np.zeros((n, n, n), np.float32)
    big[off:off + t.shape[0], off:off + t.shape[1], off:off + t.shape[2]] = t
    big = ndimage.shift(big, (b - 1) / 2.0, order=3, mode="constant")
    small = big.reshape(n // b, b, n // b, b, n // b, b).mean((1, 3, 5)).astype(np.float32)
    return small, K


def sphere_mask(K: int, radius: float) -> np.ndarray:
    g = np.arange(-K, K + 1, dtype=np.float32)
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    return (np.sqrt(zz * zz + yy * yy + xx * xx) <= radius).astype(np.float32)


def _write_mrc(path: Path, data: np.ndarray, voxel: float) -> None:
    import mrcfile

    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.ascontiguousarray(data, dtype=np.float32))
        m.voxel_size = voxel


# ----------------------------------------------------------------------------- pytme
def _tme_python(code: str) -> str:
    p = subprocess.run([str(TME_VENV / "bin" / "python"), "-c", code], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"pytme venv: {p.stderr[-2000:]}")
    return p.stdout.strip()


def pytme_info(step: float) -> tuple[str, int]:
    """(pytme version, number of rotations for ``step`` degrees)."""
    if not PYTME.exists():
        raise SystemExit(f"pytme is not installed; install it with:\n    {INSTALL}")
    out = _tme_python("from importlib.metadata import version; from tme.rotations import get_rotation_matrices as g; "
                      f"print(version('pytme'), g(angular_sampling={step!r}, dim=3, use_optimized_set=True).shape[0])")
    ver, n = out.split()[-2:]
    return ver, int(n)


def _fast_len(n: int) -> int:
    from scipy.fft import next_fast_len

    return next_fast_len(int(n), real=True)


def match(target: np.ndarray, template: np.ndarray, mask: np.ndarray, voxel: float, args, log: Path) -> tuple[
        np.ndarray, float]:
    """pytme's max-over-rotations FLC score map of ``target`` (z, y, x), same grid; seconds."""
    with tempfile.TemporaryDirectory(prefix="tm_", dir=args.tmp) as td:
        td = Path(td)
        _write_mrc(td / "target.mrc", target, voxel)
        _write_mrc(td / "template.mrc", template, voxel)
        _write_mrc(td / "mask.mrc", mask, voxel)
        np.savetxt(td / "angles.tlt", np.linspace(TILT[0], TILT[1], int(round((TILT[1] - TILT[0]) / TILT[2])) + 1),
                   fmt="%.2f")
        cmd = [str(PYTME), "match", "-m", str(td / "target.mrc"), "-i", str(td / "template.mrc"),
               "-I", str(td / "mask.mrc"), "-o", str(td / "out.pickle"), "-s", "FLCSphericalMask",
               "-a", str(args.angular_step), "-n", str(args.processes),
               "--tilt-angles", str(td / "angles.tlt"), "--wedge-axes", "2,0",
               "--defocus", str(DEFOCUS_A), "--ctf-correction", "raw", "--acceleration-voltage", str(VOLTAGE_KV),
               "--spherical-aberration", str(CS_A), "--amplitude-contrast", str(AMPLITUDE_CONTRAST),
               "--invert-target-contrast", "--pad-edges", "--temp-directory", str(td),
               *shlex.split(args.pytme_args)]
        t0 = time.monotonic()
        with open(log, "w") as fh:
            fh.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
            fh.flush()
            p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
        secs = time.monotonic() - t0
        if p.returncode:
            raise SystemExit(f"pytme match failed (exit {p.returncode}); see {log}")
        with open(td / "out.pickle", "rb") as fh:  # write_pickle: a stream; the first item is the score map
            scores = pickle.load(fh)
    scores = np.ascontiguousarray(np.asarray(scores, np.float32).T)  # pytme's Density is (x, y, z)
    if scores.shape != target.shape:
        raise SystemExit(f"pytme returned a {scores.shape} map for a {target.shape} target")
    return scores, secs


# ----------------------------------------------------------------------------- data
class Volume:
    """A test or train tomogram as searched: the binned (cropped) data and its truth."""

    def __init__(self, seed: int, args):
        import mrcfile

        from napari_cryopicker.core.fiducials import find_fiducials

        shape = C.parse_shape(args.shape)
        b = args.bin
        self.seed, self.b = seed, b
        full_mrc, truth = R.realistic_sim(shape, seed)  # truth in full-size voxels
        crop = C.parse_shape(args.crop) if args.crop else shape
        lo = np.array([(s - c) // 2 // b * b for s, c in zip(shape, crop)])  # full-size corner
        n = np.array([c // b for c in crop])
        self.lo, self.hi = lo, lo + n * b
        fsl = tuple(slice(int(a), int(c)) for a, c in zip(self.lo, self.hi))
        with mrcfile.mmap(full_mrc, permissive=True) as m:
            full = np.array(m.data[fsl], dtype=np.float32)
        # block mean, as the network benchmark bins (a particle at p lands at (p - (b-1)/2) / b)
        self.data = full.reshape(n[0], b, n[1], b, n[2], b).mean((1, 3, 5)) if b > 1 else full
        self.name = f"{full_mrc.parent.name}_b{b}" + (f"_crop{C.shape_str(crop)}" if args.crop else "")
        inside = np.all((truth.zyx >= self.lo - 0.5) & (truth.zyx < self.hi - 0.5), axis=1)
        self.truth = truth.subset(inside)
        self.full_truth = truth
        fid = find_fiducials(full, 10.0)
        del full
        fid.zyx = fid.zyx + self.lo
        self.fiducials = fid

    def to_full(self, idx_b: np.ndarray) -> np.ndarray:
        """Binned-grid indices of the searched volume -> full-size voxel coordinates."""
        return (np.asarray(idx_b, float) + self.lo / self.b) * self.b + (self.b - 1) / 2.0


def score_maps(vol: Volume, names, args, timing: dict) -> dict[str, np.ndarray]:
    MAPS.mkdir(parents=True, exist_ok=True)
    extra = "".join(ch if ch.isalnum() else "-" for ch in args.pytme_args)
    out = {}
    for nm in names:
        key = f"{vol.name}_{nm}_a{args.angular_step:g}" + (f"_{extra}" if extra else "") \
            + (f"_m{args.mask_scale:g}" if args.mask_scale != 1.1 else "")
        path = MAPS / f"{key}.npy"
        if path.exists() and not args.recompute:
            out[nm] = np.load(path)
            print(f"#   {nm:13s} score map cached ({path.name})", flush=True)
            continue
        tmpl, K = binned_template(nm, vol.b)
        radius_b = args.classes_full[nm].radius / vol.b
        mask = sphere_mask(K, min(K - 0.5, radius_b * args.mask_scale + 1.0))
        smap, secs = match(vol.data, tmpl, mask, 10.0 * vol.b, args, MAPS / f"{key}.log")
        np.save(path, smap)
        timing[f"{vol.name}_{nm}"] = round(secs, 1)
        print(f"#   {nm:13s} {secs:6.0f} s  (template {tmpl.shape[0]}^3, mask radius "
              f"{min(K - 0.5, radius_b * args.mask_scale + 1.0):.1f} binned voxels)", flush=True)
        out[nm] = smap
    return out


# ----------------------------------------------------------------------------- peaks
def robust_z(smap: np.ndarray) -> np.ndarray:
    sample = smap[:: max(1, smap.shape[0] // 64)]
    med = float(np.median(sample))
    mad = float(np.median(np.abs(sample - med))) * 1.4826 or float(sample.std()) or 1.0
    return (smap - np.float32(med)) / np.float32(mad)


def local_maxima(z: np.ndarray, radius: float, floor: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (n, 3) and values of the maxima of ``z`` at least ``radius`` voxels apart.

    The 3x3x3 local maxima >= ``floor``, then greedy non-maximum suppression in a ball of
    ``radius`` (the highest first); at most ``cap`` of them, the highest.
    """
    from scipy import ndimage
    from scipy.spatial import cKDTree

    mx = ndimage.maximum_filter(z, size=3, mode="nearest")
    idx = np.argwhere((z >= mx) & (z >= floor) & np.isfinite(z))
    val = z[tuple(idx.T)]
    order = np.argsort(-val, kind="stable")
    idx, val = idx[order], val[order]
    keep = np.ones(len(idx), bool)
    if len(idx) > 1:
        pairs = cKDTree(idx).query_pairs(max(float(radius), 1.0), output_type="ndarray")
        if len(pairs):
            pairs.sort(axis=1)  # (higher, lower): idx is sorted by value
            o = np.argsort(pairs[:, 0], kind="stable")
            pairs = pairs[o]
            starts = np.searchsorted(pairs[:, 0], np.arange(len(idx) + 1))
            for i in np.unique(pairs[:, 0]):
                if keep[i]:
                    keep[pairs[starts[i]:starts[i + 1], 1]] = False
    idx, val = idx[keep], val[keep]
    return idx[:cap], val[:cap]


class Candidates:
    """All candidate picks of one tomogram: full-size zyx, class index, normalised and raw scores."""

    def __init__(self, vol: Volume, maps: dict[str, np.ndarray], names, classes_full, args):
        from scipy.spatial import cKDTree

        from napari_cryopicker.core.fiducials import off_fiducials

        zyx, cls, zs, raw = [], [], [], []
        self.n_fid = 0
        for k, nm in enumerate(names):
            z = robust_z(maps[nm])
            idx, val = local_maxima(z, classes_full[nm].radius / vol.b, args.floor, args.cap)
            p = vol.to_full(idx)
            keep = off_fiducials(p, vol.fiducials)
            self.n_fid += int((~keep).sum())
            zyx.append(p[keep])
            cls.append(np.full(int(keep.sum()), k))
            zs.append(val[keep])
            raw.append(maps[nm][tuple(idx[keep].T)])
        self.names = list(names)
        self.zyx = np.concatenate(zyx).reshape(-1, 3)
        self.cls = np.concatenate(cls).astype(int)
        self.z = np.concatenate(zs).astype(float)
        self.raw = np.concatenate(raw).astype(float)
        self.radius = np.array([classes_full[n].radius for n in names])
        self.order = np.argsort(-self.z, kind="stable")
        # cross-class conflicts: pairs within the larger of the two radii
        pairs = cKDTree(self.zyx).query_pairs(float(self.radius.max()), output_type="ndarray") \
            if len(self.zyx) else np.zeros((0, 2), int)
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            d = np.linalg.norm(self.zyx[i] - self.zyx[j], axis=1)
            ok = (self.cls[i] != self.cls[j]) & (d <= np.maximum(self.radius[self.cls[i]], self.radius[self.cls[j]]))
            pairs = pairs[ok]
        # for each conflicting candidate, its lower-ranked conflicting neighbours
        rank = np.empty(len(self.z), int)
        rank[self.order] = np.arange(len(self.z))
        lower: dict[int, list[int]] = {}
        for a, c in pairs:
            hi_, lo_ = (a, c) if rank[a] < rank[c] else (c, a)
            lower.setdefault(int(hi_), []).append(int(lo_))
        self.lower = {i: np.asarray(v, int) for i, v in lower.items()}
        self.conflicted = np.asarray([i for i in self.order if int(i) in self.lower], int)

    def picks_mask(self, thr: np.ndarray) -> np.ndarray:
        """Picks kept with per-class thresholds ``thr`` (normalised units), classes resolved."""
        keep = self.z >= thr[self.cls]
        for i in self.conflicted[keep[self.conflicted]]:  # descending score: the higher one wins
            if keep[i]:
                keep[self.lower[int(i)]] = False
        return keep

    def to_picks(self, keep: np.ndarray):
        from napari_cryopicker.core.picks import Picks

        return Picks.from_zyx(self.zyx[keep], class_name=[self.names[k] for k in self.cls[keep]],
                              score=self.z[keep], source="predicted", tomogram="tomogram", voxel_size=10.0)

    def candidates(self, k: int, n: int = 60) -> np.ndarray:
        v = np.sort(self.z[self.cls == k])
        if len(v) > n:
            v = np.quantile(v, np.linspace(0, 1, n))
        return np.unique(np.concatenate([v, [np.inf]]))


def ascend(cand: Candidates, objective, passes: int = 2) -> tuple[np.ndarray, float]:
    """Per-class thresholds maximising ``objective(keep) -> mean F1`` by coordinate ascent."""
    K = len(cand.names)
    thr = np.full(K, np.inf)
    # start: each class alone at its best, then alternate with the classes resolved
    for k in range(K):
        best = (-1.0, np.inf)
        for t in cand.candidates(k):
            th = np.full(K, np.inf)
            th[k] = t
            f = objective(cand.picks_mask(th), only=k)
            best = max(best, (f, -t))
        thr[k] = -best[1]
    cur = objective(cand.picks_mask(thr))
    for _ in range(passes):
        changed = False
        for k in range(K):
            for t in cand.candidates(k):
                th = thr.copy()
                th[k] = t
                f = objective(cand.picks_mask(th))
                if f > cur + 1e-9:
                    cur, thr, changed = f, th, True
        if not changed:
            break
    return thr, cur


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def oracle_objective(cand: Candidates, truth):
    from napari_cryopicker.core.metrics import match as mt

    true = [truth.select(class_name=n).zyx for n in cand.names]

    def one(k, p):
        tp = len(mt(p, true[k], cand.radius[k])[0]) if len(p) else 0
        return _f1(tp / len(p) if len(p) else 0.0, tp / len(true[k]) if len(true[k]) else 0.0)

    return _memo(cand, one)


def _memo(cand: Candidates, one):
    """objective(keep, only=None): the mean of ``one(k, picked zyx of class k)`` over the
    classes, each class's value cached by its set of picks (most moves change one class)."""
    cache: dict = {}
    members = [np.flatnonzero(cand.cls == k) for k in range(len(cand.names))]

    def f(keep, only=None):
        out = []
        for k in range(len(cand.names)) if only is None else [only]:
            sel = members[k][keep[members[k]]]
            key = (k, sel.tobytes())
            if key not in cache:
                cache[key] = one(k, cand.zyx[sel])
            out.append(cache[key])
        return float(np.mean(out))

    return f


def clicks_objective(cand: Candidates, clicks, report: dict, others: np.ndarray):
    """Mean over classes of the F1 estimated from the clicks alone (see the module doc).

    The class counts are estimated with the other classes at thresholds ``others`` (their
    picks resolved against the class's candidates).
    """
    from napari_cryopicker.core.metrics import match as mt

    ck = [clicks.select(class_name=n).zyx for n in cand.names]
    n_hat = []
    for k, n in enumerate(cand.names):
        est = []
        for t in cand.candidates(k, 100):
            th = others.copy()
            th[k] = t
            p = cand.zyx[cand.picks_mask(th) & (cand.cls == k)]
            L = len(mt(p, ck[k], cand.radius[k])[0]) if len(p) else 0
            est.append((L, len(p)))
        lmax = max(L for L, _ in est)
        need = min(len(ck[k]) // 2, lmax)
        vals = [N * len(ck[k]) / L for L, N in est if L >= need and L > 0]
        n_hat.append(max(float(len(ck[k])), min(vals)) if vals else float("inf"))
        report[n] = {"n_hat": round(n_hat[-1], 1), "clicks": len(ck[k]), "max_clicks_found": int(lmax)}

    def one(k, p):
        L = len(mt(p, ck[k], cand.radius[k])[0]) if len(p) else 0
        r = L / len(ck[k]) if len(ck[k]) else 0.0
        prec = min(1.0, r * n_hat[k] / len(p)) if len(p) and math.isfinite(n_hat[k]) else 0.0
        return _f1(prec, r)

    return _memo(cand, one)


def clicks_thresholds(cand: Candidates, clicks, report: dict) -> tuple[np.ndarray, float]:
    """Thresholds from the clicks: class counts estimated with each class alone, thresholds
    chosen; counts estimated again against the other classes at those thresholds, chosen again."""
    others = np.full(len(cand.names), np.inf)
    for _ in range(2):
        thr, f = ascend(cand, clicks_objective(cand, clicks, report, others))
        others = thr
    return thr, f


def score_picks(picks, vol: Volume, seed: int, args) -> dict:
    """``realistic.score`` (the full tomogram), or the same on the truth inside the crop."""
    if not args.crop:
        return R.score(picks, seed, C.parse_shape(args.shape))
    return R.score_against(picks, vol.truth, args.classes_full)


# ----------------------------------------------------------------------------- report
def print_table(results: list[dict]) -> None:
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    print("\nper class: F1 within the full radius [within half the radius], precision / recall (full), "
          "mean distance of matches (voxels)")
    print(f"{'seed':>4}  {'mode':>6}  " + "  ".join(f"{n:>28}" for n in BENCHMARK_CLASSES))
    for r in results:
        cells = R.score_cells(r["scores"])
        thr = " ".join("none" if t is None else f"{t:.1f}" for t in r["thresholds"].values())
        print(f"{r['seed']:>4}  {r['mode']:>6}  " + "  ".join(cells) + f"   (thresholds {thr})")
    for mode in dict.fromkeys(r["mode"] for r in results):
        rs = [r for r in results if r["mode"] == mode]
        if len(rs) > 1:
            mean = [np.mean([r["scores"]["1.0"][n]["f1"] for r in rs]) for n in BENCHMARK_CLASSES]
            worst = [np.min([r["scores"]["1.0"][n]["f1"] for r in rs]) for n in BENCHMARK_CLASSES]
            print(f"{'mean':>4}  {mode:>6}  " + "  ".join(f"{m:.2f}".rjust(28) for m in mean))
            print(f"{'min':>4}  {mode:>6}  " + "  ".join(f"{m:.2f}".rjust(28) for m in worst))


def run_seed(args, seed: int, names, n_rot: int) -> list[dict]:
    classes = args.classes_full
    timing: dict = {}
    t0 = time.monotonic()
    test = Volume(200 + seed, args)
    train = Volume(100 + seed, args)
    print(f"# seed {seed}: test {test.name} {test.data.shape}, train {train.name}; "
          f"{len(test.fiducials)} / {len(train.fiducials)} fiducials found", flush=True)
    print("# train tomogram (for the click thresholds):", flush=True)
    train_maps = score_maps(train, names, args, timing)
    print("# test tomogram:", flush=True)
    test_maps = score_maps(test, names, args, timing)
    tm_s = time.monotonic() - t0

    clicks = R.clicks(train.full_truth, classes, "fewclick", args.per_class, seed)
    if args.crop:  # only the clicks inside the searched crop
        clicks = clicks.subset(np.all((clicks.zyx >= train.lo - 0.5) & (clicks.zyx < train.hi - 0.5), axis=1))
    c_train = Candidates(train, train_maps, names, classes, args)
    c_test = Candidates(test, test_maps, names, classes, args)
    print(f"# candidates (normalised score >= {args.floor:g}, local maxima): train {len(c_train.z)}, "
          f"test {len(c_test.z)}; {c_test.n_fid} test candidates on fiducials dropped", flush=True)
    _sanity(c_test, test)

    results = []
    est: dict = {}
    t1 = time.monotonic()
    thr_clicks, f_hat = clicks_thresholds(c_train, clicks, est)
    thr_oracle, f_or = ascend(c_test, oracle_objective(c_test, test.truth))
    th_s = time.monotonic() - t1
    print(f"# thresholds in {th_s:.0f} s; clicks: estimated train mean F1 {f_hat:.3f} "
          f"(class counts estimated {', '.join(n + ' ' + str(v['n_hat']) for n, v in est.items())}); "
          f"oracle: test mean F1 {f_or:.3f}", flush=True)
    for mode, thr in (("clicks", thr_clicks), ("oracle", thr_oracle)):
        keep = c_test.picks_mask(thr)
        picks = c_test.to_picks(keep)
        r = {"seed": seed, "mode": mode, "method": "pytme FLCSphericalMask", "bin": args.bin,
             "angular_step": args.angular_step, "n_rotations": n_rot, "crop": args.crop,
             "pytme_args": args.pytme_args, "thresholds": {n: float(t) if np.isfinite(t) else None for n, t in zip(names, thr)},
             "clicks_estimate": est if mode == "clicks" else None, "picks": picks.counts(),
             "tm_seconds": round(tm_s, 1), "tm_job_seconds": timing, "scores": score_picks(picks, test, seed, args)}
        results.append(r)
        if args.save:
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / f"{args.tag}_{mode}_s{seed}.json").write_text(json.dumps(r, indent=1))
            picks.table.to_csv(OUT / f"{args.tag}_{mode}_s{seed}_picks.csv", index=False)
    return results


def _sanity(cand: Candidates, vol: Volume) -> None:
    """How many of the 20 best candidates of each class sit on a true particle of that class."""
    from scipy.spatial import cKDTree

    t = vol.truth
    if not len(t):
        return
    tree = cKDTree(t.zyx)
    names = np.asarray(t.table["class_name"].astype(str))
    parts = []
    for k, n in enumerate(cand.names):
        sel = np.flatnonzero(cand.cls == k)[:20]
        if not len(sel):
            continue
        d, j = tree.query(cand.zyx[sel])
        hit = (d <= cand.radius[k] / 2) & (names[j] == n)
        parts.append(f"{n} {int(hit.sum())}/{len(sel)}")
    print("# top-20 candidates per class on a true particle of the class (half radius): " + ", ".join(parts),
          flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--bin", type=int, default=2, help="search a block-mean binned copy (default 2)")
    ap.add_argument("--angular-step", type=float, default=None,
                    help="degrees between rotations (pytme -a; default 30: 360 rotations, ~17 min per seed "
                         "here; 20: 648, 15: 1992, 45: 60)")
    ap.add_argument("--processes", type=int, default=1,
                    help="pytme -n (default 1: two were slower on 2 cores, the FFTs are memory-bound)")
    ap.add_argument("--per-class", type=int, default=40, help="clicks per class (default 40)")
    ap.add_argument("--shape", default="200x512x512")
    ap.add_argument("--crop", default=None, metavar="ZxYxX",
                    help="search only a centred crop of this full-size shape (a quick check; scored on its truth)")
    ap.add_argument("--quick", action="store_true", help="--crop 128x256x256 --angular-step 45 --seeds 0")
    ap.add_argument("--mask-scale", type=float, default=1.1, help="mask radius = scale x class radius + 1 voxel")
    ap.add_argument("--floor", type=float, default=3.0, help="candidates: normalised score >= this")
    ap.add_argument("--cap", type=int, default=4000, help="at most this many candidates per class")
    ap.add_argument("--pytme-args", default="", help="more options for `pytme match`, e.g. '--whiten-spectrum'")
    ap.add_argument("--recompute", action="store_true", help="ignore cached score maps")
    ap.add_argument("--tag", default=None, help="result names (default tm, tm_quick for --crop)")
    ap.add_argument("--tmp", default=None, help="temp dir for pytme's inputs and outputs")
    ap.add_argument("--dry-run", action="store_true", help="print the time estimate and stop")
    R.add_legacy_flag(ap)
    args = ap.parse_args(argv)
    R.use_legacy(args)
    if args.quick:
        args.crop = args.crop or "128x256x256"
        args.angular_step = args.angular_step or 45.0
        if argv is None and "--seeds" not in sys.argv:
            args.seeds = [0]
    args.angular_step = args.angular_step or 30.0
    args.tag = args.tag or ("tm_quick" if args.crop else "tm")
    args.save = True

    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes

    args.classes_full = realistic_classes(10.0, BENCHMARK_CLASSES)
    names = list(BENCHMARK_CLASSES)
    print("# command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"# {C.machine()}")
    ver, n_rot = pytme_info(args.angular_step)
    shape = C.parse_shape(args.crop or args.shape)
    tshape = [s // args.bin for s in shape]
    k_max = max(binned_template(n, args.bin)[1] for n in names)
    fft = [_fast_len(s + 2 * k_max) for s in tshape]  # the target padded by the largest template
    mvox = float(np.prod(fft)) / 1e6
    per_job = 3.0 + n_rot * SEC_PER_ROT_PER_MVOX * mvox  # one process; more did not help here
    print(f"# pytme {ver}: FLCSphericalMask, {n_rot} rotations ({args.angular_step:g} deg), bin {args.bin} "
          f"-> {'x'.join(map(str, tshape))} searched (FFT box ~{'x'.join(map(str, fft))}); "
          f"estimate ~{per_job:.0f} s per search x 8 = ~{8 * per_job / 60:.0f} min per seed "
          f"(with {args.processes} process(es); cached maps are reused)", flush=True)
    if args.dry_run:
        return 0
    results = []
    t0 = time.monotonic()
    for seed in args.seeds:
        rs = run_seed(args, seed, names, n_rot)
        results += rs
        print_table(rs)
        print(f"# seed {seed} done at {time.monotonic() - t0:.0f} s", flush=True)
    print(f"\n== template matching (pytme {ver}, {n_rot} rotations, bin {args.bin}"
          + (f", crop {args.crop}" if args.crop else "") + f"): {len(args.seeds)} seed(s), "
          f"{time.monotonic() - t0:.0f} s")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
