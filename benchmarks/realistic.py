"""The few-click benchmark on realistic tomograms: what a new user gets.

For each seed: simulate a realistic training tomogram (seed 100 + s) and a test tomogram
(seed 200 + s; another layout) with ``core.realistic.simulate_realistic`` (200x512x512
at 10 A, ~1,450 particles of 13 classes, tilt series with unflipped CTF, 100 e/A^2, WBP).
The user "clicks" 40 particles of each of four classes (ribosome 28 vox, mitoribosome 28,
proteasome 24, chaperonin 14) and leaves every other particle unclicked; the engine
trains for 12 minutes of wall time with its defaults, then picks the test tomogram. Picks
are scored per class against the test truth of those four classes: precision, recall and
F1 with a match within the full radius and within half the radius (the CZII rule), and
the mean distance of the matches.

Scenarios (``--scenario``):
  fewclick   40 clicks per class at the true centres (the default)
  all        every particle of the four classes clicked (an upper bound)
  offcentre  40 clicks per class, each off the centre by up to half a radius (human clicks)

``--distractors fas,ferritin`` clicks as many of those never-benchmarked classes too, each as a
class of its own (a user who labels the look-alikes that steal picks); they are trained and
picked like the others, and their picks are left out of the scores.

``--set KEY=VALUE`` overrides a TrainConfig field (engine experiments, e.g.
``--set f_maps=16,32,48,64``; ``--set seed=K`` trains the same clicks along another
trajectory, to measure the run-to-run spread); ``--predict KEY=VALUE`` a PredictConfig field.
The learning-rate schedule follows steps: a run is repeated bit for bit on the same CPU
by ``--set epochs=N --time-limit 0`` with the N it printed. Results go
to benchmarks/.cache/realistic/<tag>_s<seed>.json and a summary is printed at the end.
Run it alone: 2 cores shared with anything else train fewer steps in the budget.

    nice -n 10 .venv/bin/python benchmarks/realistic.py --seeds 0 1 2 [--time-limit 720]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import numpy as np

import _common as C  # noqa: E402  (sets sys.path)

OUT = C.CACHE / "realistic"


#: --legacy-bodies: the class bodies of sessions up to 17 (only the ribosome's contrast
#: matched to its real map; the others 0.35-0.7x theirs), to repeat numbers measured on them
LEGACY_BODIES = False


def add_legacy_flag(ap) -> None:
    """The ``--legacy-bodies`` option of every benchmark on these simulations."""
    ap.add_argument("--legacy-bodies", action="store_true",
                    help="the class bodies of sessions up to 17 (lighter than their real counterparts)")


def use_legacy(args) -> None:
    global LEGACY_BODIES
    LEGACY_BODIES = bool(args.legacy_bodies)


def realistic_sim(shape, seed: int):
    """(tomogram path, truth Picks) of a realistic simulation, cached as MRC + CSV
    (``real_<shape>_s<seed>_m``: bodies with their real contrast; without ``_m``, the
    legacy bodies)."""
    import pandas as pd

    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.realistic import simulate_realistic
    from napari_cryopicker.core.simulate import write_simulation

    d = C.CACHE / (f"real_{C.shape_str(shape)}_s{seed}" + ("" if LEGACY_BODIES else "_m"))
    mrc, csv = d / "tomogram.mrc", d / "picks.csv"
    if not (mrc.exists() and csv.exists()):
        t0 = time.perf_counter()
        sim = simulate_realistic(shape, seed=seed, name="tomogram", calibrated=not LEGACY_BODIES)
        write_simulation(d, sim)
        print(f"# simulated {d.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    df = pd.read_csv(csv)
    truth = Picks.from_zyx(df[["z", "y", "x"]].to_numpy(float), class_name=list(df["class"].astype(str)),
                           source="imported", tomogram="tomogram", voxel_size=10.0)
    return mrc, truth


def clicks(truth, classes, scenario: str, per_class: int, seed: int):
    """The picks a user makes: ``per_class`` of each class (all for 'all'), maybe off-centre."""
    from napari_cryopicker.core.picks import Picks

    rng = np.random.default_rng(seed)
    parts = []
    for c in classes:
        sub = truth.select(class_name=c.name)
        if scenario != "all" and len(sub) > per_class:
            keep = np.zeros(len(sub), bool)
            keep[rng.choice(len(sub), per_class, replace=False)] = True
            sub = sub.subset(keep)
        if scenario == "offcentre":
            d = rng.normal(size=(len(sub), 3))
            d /= np.linalg.norm(d, axis=1, keepdims=True)
            zyx = sub.zyx + d * rng.uniform(0, 0.5 * c.radius, (len(sub), 1))
            sub = Picks.from_zyx(zyx, class_name=c.name, source="manual", tomogram="tomogram", voxel_size=10.0)
        parts.append(sub)
    out = Picks.concat(parts)
    out.table["source"] = "manual"
    return out


def _value(text: str):
    if "," in text:
        return tuple(_value(t) for t in text.split(",") if t)
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _pairs(items):
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k.strip()] = _value(v.strip())
    return out


def run_seed(args, seed: int, overrides: dict, predict_overrides: dict) -> dict:
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes
    from napari_cryopicker.core.tomogram import open_tomogram
    from napari_cryopicker.core.train import TrainConfig, train_model

    shape = C.parse_shape(args.shape)
    classes = realistic_classes(10.0, BENCHMARK_CLASSES + tuple(args.distractors))
    train_mrc, train_truth = realistic_sim(shape, 100 + seed)
    test_mrc, _ = realistic_sim(shape, 200 + seed)
    picks = clicks(train_truth, classes, args.scenario, args.per_class, seed)
    cfg = TrainConfig(**{"epochs": 10_000, "time_limit": args.time_limit, "seed": seed, "device": args.device,
                         **overrides})
    history = []
    t0 = time.monotonic()

    def on_epoch(r):
        history.append({k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_f1", "self_labelled")}
                       | {"seconds": round(time.monotonic() - t0, 1)})
        vf = "-" if r.get("val_f1") is None else f"{r['val_f1']:.3f}"
        print(f"  seed {seed} epoch {r['epoch']:3d} {time.monotonic() - t0:6.0f} s  loss {r['train_loss']:.3f}  "
              f"val F3 {vf}" + (f"  self-labelled {r['self_labelled']}" if r.get("self_labelled") else ""),
              flush=True)

    from napari_cryopicker.core.train import training_binning

    spied = _spy_self_label(train_truth, classes, training_binning(classes, cfg))
    ckpt = train_model([open_tomogram(train_mrc)], [picks], classes, cfg, on_epoch=on_epoch)
    spied.undo()
    train_s = time.monotonic() - t0
    t1 = time.monotonic()
    test = open_tomogram(test_mrc)
    res = predict_picks(test, ckpt, PredictConfig(device=args.device, **predict_overrides))
    predict_s = time.monotonic() - t1
    # the model and the picks, to look at or re-score offline (benchmarks/.cache is ignored by git)
    from napari_cryopicker.core.model import save_checkpoint

    save_checkpoint(ckpt, OUT / f"{args.tag_resolved}_s{seed}.pt")
    res.picks.table.to_csv(OUT / f"{args.tag_resolved}_s{seed}_picks.csv", index=False)
    scores = score(res.picks, seed, shape)
    return {"seed": seed, "scenario": args.scenario, "distractors": list(args.distractors), "clicks": picks.counts(),
            "train_seconds": round(train_s, 1),
            "predict_seconds": round(predict_s, 1), "best_epoch": ckpt.best_epoch, "epochs": len(ckpt.history),
            "train_seed": cfg.seed, "self_label_check": spied.report,
            "history": history, "scores": scores,
            "thresholds": {k: v.get("t_lm") for k, v in (ckpt.postprocess or {}).items()},
            "overrides": {k: str(v) for k, v in overrides.items()},
            "predict_overrides": {k: str(v) for k, v in predict_overrides.items()}}


class _spy_self_label:
    """While training, check each self-labelled pick against the training truth (the
    engine never sees it): how many per class sit on a particle of that class."""

    def __init__(self, truth, classes, factor: int):
        import napari_cryopicker.core.train as T
        from napari_cryopicker.core.binning import picks_from_binned

        self.T, self.orig, self.report = T, T._self_label, {}

        def spy(net, vols, *a, **k):
            before = len(vols[0].picks)
            out = self.orig(net, vols, *a, **k)
            new = vols[0].picks.subset(np.arange(len(vols[0].picks)) >= before)
            new = picks_from_binned(new, factor) if factor > 1 else new
            for c in classes:
                got = new.select(class_name=c.name)
                ok = 0
                if len(got):
                    from scipy.spatial import cKDTree

                    t = truth.select(class_name=c.name)
                    d, _ = cKDTree(t.zyx).query(got.zyx)
                    ok = int((d <= c.radius).sum())
                self.report[c.name] = {"added": len(got), "on_that_class": ok}
            print("  self-labelled (on a particle of that class / added): "
                  + ", ".join(f"{k} {v['on_that_class']}/{v['added']}" for k, v in self.report.items()), flush=True)
            return out

        T._self_label = spy

    def undo(self):
        self.T._self_label = self.orig


def score(picks, seed: int, shape) -> dict:
    """Per-class scores of ``picks`` against the test truth of seed ``seed`` (full and half radius)."""
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes

    _, truth = realistic_sim(shape, 200 + seed)
    return score_against(picks, truth, realistic_classes(10.0, BENCHMARK_CLASSES))


def score_against(picks, truth, classes) -> dict:
    """Per-class scores of ``picks`` against the benchmark classes of ``truth`` (full and half
    radius); picks of other classes (``--distractors``) are left out."""
    from napari_cryopicker.core.metrics import evaluate
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    truth = truth.subset(np.isin(truth.table["class_name"].to_numpy(), list(BENCHMARK_CLASSES)))
    picks = picks.subset(np.isin(picks.table["class_name"].to_numpy(), list(BENCHMARK_CLASSES)))
    picks = picks.with_tomogram("tomogram")
    out = {}
    for frac in (1.0, 0.5):
        rep = evaluate(picks, truth, classes, distance_fraction=frac)
        out[str(frac)] = {n: {k: getattr(s, k) for k in ("n_pred", "n_true", "tp", "precision", "recall", "f1",
                                                       "mean_distance")}
                          for n, s in rep.per_class.items()}
    return out


def rescore(args) -> int:
    """Score the picks a run saved again, optionally without those on gold fiducials."""
    import pandas as pd

    from napari_cryopicker.core.fiducials import find_fiducials, off_fiducials
    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.tomogram import open_tomogram

    shape = C.parse_shape(args.shape)
    results = []
    for seed in args.seeds:
        saved = json.loads((OUT / f"{args.rescore}_s{seed}.json").read_text())
        df = pd.read_csv(OUT / f"{args.rescore}_s{seed}_picks.csv")
        picks = Picks(df, 10.0)
        if args.mask_fiducials:
            mrc, _ = realistic_sim(shape, 200 + seed)
            fid = find_fiducials(open_tomogram(mrc).data, 10.0)
            keep = off_fiducials(picks.zyx, fid)
            print(f"# seed {seed}: {len(fid)} fiducials found, {int((~keep).sum())} of {len(picks)} picks on them dropped")
            picks = picks.subset(keep)
        saved["scores"] = score(picks, seed, shape)
        results.append(saved)
    print(f"\n== {args.rescore}" + (" with picks on gold fiducials dropped" if args.mask_fiducials else ""))
    print_table(results)
    return 0


def _retemplate(ckpt, args, seed: int, shape, saved: dict):
    """``ckpt`` with the click-averaged templates (core.template) of today's TrainConfig and
    ``--set`` overrides, built from the training tomogram and clicks of its run."""
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes
    from napari_cryopicker.core.tomogram import open_tomogram
    from napari_cryopicker.core.train import TrainConfig
    from napari_cryopicker.core.train_template import attach_templates, template_classes

    classes = realistic_classes(10.0, BENCHMARK_CLASSES + tuple(saved.get("distractors") or ()))
    train_mrc, train_truth = realistic_sim(shape, 100 + seed)
    scenario = saved.get("scenario", args.scenario) if args.retemplate == "same" else args.retemplate
    picks = clicks(train_truth, classes, scenario, args.per_class, seed)
    saved["template_scenario"] = scenario
    cfg = TrainConfig(**{"seed": seed, **_pairs(args.sets)})
    names = template_classes(classes, cfg, ckpt.binning)
    t0 = time.monotonic()
    out = attach_templates(ckpt, [open_tomogram(train_mrc)], [picks], names, cfg)
    saved["template_seconds"] = round(time.monotonic() - t0, 1)
    return out


def repredict(args) -> int:
    """Pick the test tomograms again with the models an earlier run saved (TAG), with
    today's prediction and MP-NMS code; results as <TAG>_repredict."""
    from napari_cryopicker.core.model import load_checkpoint
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.tomogram import open_tomogram

    shape = C.parse_shape(args.shape)
    predict_overrides = _pairs(args.predict_sets)
    tag = args.tag or f"{args.repredict}_repredict"
    results = []
    for seed in args.seeds:
        saved = json.loads((OUT / f"{args.repredict}_s{seed}.json").read_text())
        ckpt = load_checkpoint(OUT / f"{args.repredict}_s{seed}.pt")
        test_mrc, _ = realistic_sim(shape, 200 + seed)
        if args.retemplate:  # build the templates the model's run would build today, from its clicks
            ckpt = _retemplate(ckpt, args, seed, shape, saved)
        t1 = time.monotonic()
        res = predict_picks(open_tomogram(test_mrc), ckpt, PredictConfig(device=args.device, **predict_overrides))
        saved["predict_seconds"] = round(time.monotonic() - t1, 1)
        saved["scores"] = score(res.picks, seed, shape)
        saved["predict_overrides"] = {k: str(v) for k, v in predict_overrides.items()}
        saved["thresholds"] = {k: round(float(v), 4) for k, v in (res.thresholds or {}).items()}
        saved["templates"] = {k: {f: round(float(t[f]), 4) for f in ("threshold", "clicks_median", "left_out_share")
                                  if f in t} for k, t in (ckpt.templates or {}).items()}
        res.picks.table.to_csv(OUT / f"{tag}_s{seed}_picks.csv", index=False)
        (OUT / f"{tag}_s{seed}.json").write_text(json.dumps(saved, indent=1))
        results.append(saved)
    print(f"\n== {tag}: the models of {args.repredict}, picked again with today's code")
    print_table(results)
    return 0


def score_cells(scores: dict) -> list[str]:
    """One table cell per benchmark class: F1 [F1 at half radius] precision/recall, mean distance."""
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    cells = []
    for n in BENCHMARK_CLASSES:
        a, b = scores["1.0"][n], scores["0.5"][n]
        cells.append(f"{a['f1']:.2f} [{b['f1']:.2f}] {a['precision']:.2f}/{a['recall']:.2f} "
                     f"{a['mean_distance']:4.1f}".rjust(28))
    return cells


def print_table(results: list[dict]) -> None:
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES

    print("\nper class: F1 within the full radius [within half the radius], precision / recall (full), "
          "mean distance of matches (voxels)")
    head = f"{'seed':>4}  " + "  ".join(f"{n:>28}" for n in BENCHMARK_CLASSES)
    print(head)
    for r in results:
        cells = score_cells(r["scores"])
        again = f"; repeat: --set epochs={r['epochs']} --time-limit 0" if r.get("train_seed") is not None else ""
        print(f"{r['seed']:>4}  " + "  ".join(cells) + f"   (best epoch {r['best_epoch']}/{r['epochs']}, "
              f"predict {r['predict_seconds']:.0f} s{again})")
    if len(results) > 1:
        mean = [np.mean([r["scores"]["1.0"][n]["f1"] for r in results]) for n in BENCHMARK_CLASSES]
        worst = [np.min([r["scores"]["1.0"][n]["f1"] for r in results]) for n in BENCHMARK_CLASSES]
        print(f"{'mean':>4}  " + "  ".join(f"{m:.2f}".rjust(28) for m in mean))
        print(f"{'min':>4}  " + "  ".join(f"{m:.2f}".rjust(28) for m in worst))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scenario", choices=("fewclick", "all", "offcentre"), default="fewclick")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--distractors", type=lambda t: tuple(n for n in t.split(",") if n), default=(),
                    metavar="NAMES", help="more classes to click and train (e.g. fas,ferritin), not scored")
    ap.add_argument("--time-limit", type=float, default=720.0, help="training budget, seconds (default 720)")
    ap.add_argument("--shape", default="200x512x512")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field")
    ap.add_argument("--predict", dest="predict_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a PredictConfig field")
    ap.add_argument("--tag", default=None,
                    help="name of the result files (default: scenario and overrides; with --repredict: TAG_repredict)")
    ap.add_argument("--rescore", default=None, metavar="TAG",
                    help="score the picks saved by an earlier run TAG again instead of training")
    ap.add_argument("--mask-fiducials", action="store_true", help="with --rescore: drop picks on gold fiducials")
    ap.add_argument("--retemplate", nargs="?", const="same", default=None, metavar="SCENARIO",
                    help="with --repredict: first build the click-averaged templates a run would build today "
                         "(from the clicks of the run's scenario, or of SCENARIO, e.g. offcentre)")
    ap.add_argument("--repredict", default=None, metavar="TAG",
                    help="pick the test tomograms again with the models run TAG saved, instead of training")
    add_legacy_flag(ap)
    args = ap.parse_args(argv)
    use_legacy(args)
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, REALISTIC_CLASSES

    known = [c.name for c in REALISTIC_CLASSES if c.name not in BENCHMARK_CLASSES]
    bad = [n for n in args.distractors if n not in known]
    if bad:
        ap.error(f"--distractors: {bad[0]!r} is not a class of the simulator's library (known: {', '.join(known)})")
    print("# command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    if args.rescore:
        return rescore(args)
    if args.repredict:
        return repredict(args)
    overrides, predict_overrides = _pairs(args.sets), _pairs(args.predict_sets)
    tag = args.tag or "_".join([args.scenario] + [f"with-{n}" for n in args.distractors]
                               + [f"{k}{v}" for k, v in {**overrides, **predict_overrides}.items()])
    tag = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in tag)
    args.tag_resolved = tag
    print(f"# {C.machine()}")
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in args.seeds:
        r = run_seed(args, seed, overrides, predict_overrides)
        (OUT / f"{tag}_s{seed}.json").write_text(json.dumps(r, indent=1))
        results.append(r)
        print_table([r])
    print(f"\n== {tag}: {len(results)} seed(s), {args.time_limit:.0f} s training each")
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
