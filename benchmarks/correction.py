"""The batch loop's correction round on realistic tomograms: 40 clicks, train, pick, correct, retrain.

What a user does after `realistic.py`'s few-click run, in the GUI: pick the training
tomogram with the model, answer the candidates of the Particles panel's doubtful-first
queue (accept, accept as another class, reject), press *Retrain from the current model*,
and pick the next tomogram. For each seed, from the model and clicks of an earlier
`realistic.py` run (``--from TAG``, its `<TAG>_s<seed>.pt`):

1. the model picks the training tomogram (seed 100 + s); the shown candidates (at or
   above their class's threshold, none within a radius of a click, as the GUI shows them;
   ``--queue all``: every candidate down to a score of 0.05) are ordered by
   ``core.doubt`` as the queue orders them;
2. a simulated user answers the first ``--answers`` of them from the truth (the
   interactive benchmark's `Annotator`: accept when a particle of that class is there,
   accept as the right class when another benchmark class is, reject otherwise; a
   fatty-acid synthase or any other particle outside the four classes is rejected);
3. the model is fine-tuned on the 40 clicks per class plus the answers for ``--epochs``
   epochs (the engine's defaults otherwise, ``--set KEY=VALUE`` to change one);
4. it picks the test tomogram (seed 200 + s), scored as `realistic.py` scores.

    nice -n 5 .venv/bin/python benchmarks/correction.py --from steps --seeds 0 1 2 --answers 80 --epochs 10

Results in benchmarks/.cache/realistic/<tag>_s<seed>.json; the table puts the score of
the model before the round (from the earlier run's JSON) beside the one after.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import numpy as np

import _common as C  # noqa: E402  (sets sys.path)
from interactive import Annotator
from realistic import OUT, _pairs, add_legacy_flag, clicks, print_table, realistic_sim, score, use_legacy


def shown_candidates(res, user, classes, below: bool = False, data=None):
    """The predictions the Particles panel's queue holds, doubtful first (``below``: every
    candidate down to the score floor, the misses below the thresholds too; ``data``: the
    tomogram, to rank candidates unlike the clicks of their class early, as the panel's
    "unlike the clicks first" does)."""
    from napari_cryopicker.core.doubt import doubt, unlike_clicks

    cand = user.unknown(res.picks)
    th = {c: float(v) for c, v in (res.thresholds or {}).items()}
    names = cand.table["class_name"].to_numpy()
    if not below:
        cand = cand.subset(cand.table["score"].to_numpy(float) >= np.array([th.get(c, 0.3) for c in names]))
    known = user.picks.zyx if len(user.picks) else None
    unlike = None
    if data is not None:
        ok = user.picks.exclude_source("rejected")
        unlike = unlike_clicks(data, cand.zyx, cand.table["class_name"].to_numpy(), ok.zyx,
                               ok.table["class_name"].to_numpy(), classes)
    order = np.argsort(doubt(cand.zyx, cand.table["class_name"].to_numpy(), cand.table["score"].to_numpy(float),
                             th, classes, known, unlike=unlike), kind="stable")
    return cand.take(order)


def run_seed(args, seed: int, overrides: dict) -> dict:
    from napari_cryopicker.core.model import load_checkpoint, save_checkpoint
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes
    from napari_cryopicker.core.tomogram import open_tomogram
    from napari_cryopicker.core.train import TrainConfig, train_model

    shape = C.parse_shape(args.shape)
    classes = realistic_classes(10.0, BENCHMARK_CLASSES)
    before = json.loads((OUT / f"{args.source}_s{seed}.json").read_text())
    ckpt = load_checkpoint(OUT / f"{args.source}_s{seed}.pt")
    train_mrc, train_truth = realistic_sim(shape, 100 + seed)
    test_mrc, _ = realistic_sim(shape, 200 + seed)
    tomo = open_tomogram(train_mrc)
    scenario = before.get("scenario", "fewclick")
    made = clicks(train_truth, classes, scenario, args.per_class, seed)  # the clicks the model learnt from
    user = Annotator(train_truth, classes, slab=shape[0], shape=shape, seed=seed)
    user.picks = made.copy()
    from scipy.spatial import cKDTree

    tree = cKDTree(user.truth.zyx)
    user.clicked = {int(i) for i in tree.query(made.zyx)[1]}
    t0 = time.monotonic()
    below = args.queue == "all"
    res = predict_picks(tomo, ckpt, PredictConfig(device=args.device, score_floor=0.05 if below else None))
    queue = shown_candidates(res, user, classes, below, tomo.data if args.unlike else None)
    kinds = {"accepted": 0, "rejected": 0, "skipped": 0}  # accepted: as its class or as the right one
    n_before = len(user.picks)
    user.answer(queue, args.answers)
    new = user.picks.table.iloc[n_before:]
    for _, r in new.iterrows():
        if r["source"] == "rejected":
            kinds["rejected"] += 1
        else:
            kinds["accepted"] += 1
    kinds["skipped"] = min(args.answers, len(queue)) - len(new)
    pick_s = time.monotonic() - t0
    print(f"  seed {seed}: {len(queue)} candidates shown; answered {min(args.answers, len(queue))}: "
          f"{kinds['accepted']} accepted (as the right class), {kinds['rejected']} rejected, "
          f"{kinds['skipped']} skipped", flush=True)
    cfg = TrainConfig(**{"epochs": args.epochs, "seed": seed, "device": args.device, **overrides})
    t1 = time.monotonic()

    def on_epoch(r):
        vf = "-" if r.get("val_f1") is None else f"{r['val_f1']:.3f}"
        print(f"  seed {seed} fine-tune epoch {r['epoch']:3d} {time.monotonic() - t1:6.0f} s  "
              f"loss {r['train_loss']:.3f}  val F3 {vf}", flush=True)

    tuned = train_model([tomo], [user.picks], classes, cfg, init=ckpt, on_epoch=on_epoch)
    tune_s = time.monotonic() - t1
    t2 = time.monotonic()
    out = predict_picks(open_tomogram(test_mrc), tuned, PredictConfig(device=args.device))
    predict_s = time.monotonic() - t2
    save_checkpoint(tuned, OUT / f"{args.tag}_s{seed}.pt")
    out.picks.table.to_csv(OUT / f"{args.tag}_s{seed}_picks.csv", index=False)
    return {"seed": seed, "from": args.source, "answers": args.answers, "answered": kinds, "queue_kind": args.queue,
            "unlike": bool(args.unlike),
            "queue": len(queue), "pick_train_seconds": round(pick_s, 1), "fine_tune_seconds": round(tune_s, 1),
            "predict_seconds": round(predict_s, 1), "best_epoch": tuned.best_epoch, "epochs": len(tuned.history),
            "scores": score(out.picks, seed, shape), "scores_before": before["scores"],
            "overrides": {k: str(v) for k, v in overrides.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source", required=True, metavar="TAG",
                    help="the realistic.py run whose models and clicks to start from")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--answers", type=int, default=80, help="queue items the user answers (default 80)")
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    ap.add_argument("--queue", choices=("shown", "all"), default="shown",
                    help="shown: the predictions at or above their threshold, as the Particles panel "
                         "queues them (default); all: every candidate down to a score of 0.05")
    ap.add_argument("--unlike", action="store_true",
                    help="order the queue as the Particles panel's 'unlike the clicks first' "
                         "(core.doubt.unlike_clicks); default: its 'doubtful first'")
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--shape", default="200x512x512")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field of the fine-tuning")
    ap.add_argument("--tag", default=None)
    add_legacy_flag(ap)
    args = ap.parse_args(argv)
    use_legacy(args)
    args.tag = args.tag or f"{args.source}_corrected{args.answers}" + ("_all" if args.queue == "all" else "")
    print("# command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"# {C.machine()}")
    overrides = _pairs(args.sets)
    results = []
    for seed in args.seeds:
        r = run_seed(args, seed, overrides)
        (OUT / f"{args.tag}_s{seed}.json").write_text(json.dumps(r, indent=1))
        results.append(r)
    print(f"\n== before the round: {args.source} (40 clicks per class)")
    print_table([{**r, "scores": r["scores_before"], "best_epoch": "-", "epochs": "-", "predict_seconds": 0}
                 for r in results])
    print(f"\n== after answering {args.answers} queue items and fine-tuning {args.epochs} epochs: {args.tag}")
    print_table(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
