"""Replay a live run's stream of picks with other engine settings: a paired comparison.

``interactive.py --save`` writes the simulated annotator's picks (``<tag>_s<seed>_picks.csv``,
in the order made) and the last network's history (``<tag>_s<seed>_last.pt``, which records
at which epoch the picks grew to how many). This script trains live
(``TrainConfig(continuous=True)``) on the same tomogram, handing training the same picks at
the same epochs, without the annotator and without suggestions, for as many epochs as
asked, with ``--set KEY=VALUE`` TrainConfig overrides; then it scores the model a Stop would
keep at the epochs asked on the held-out tomogram. Two settings replayed on one stream
differ only by the settings: the annotator's reaction to the suggestions, the pace of
the clock and the machine's load, which make two live runs of the same code differ by
up to 0.3 F1 on the chaperonin, are out. (The replay of ``live26p`` seed 2 with no
override gave the live run's own F1 at its Stop epoch: 0.94 / 1.00 / 0.97 / 0.40.)

    .venv/bin/python benchmarks/replay.py --from live26p --seed 2 --epochs 40 53 [--set cycle_decay=1.0]

Run it alone (~8 min for 53 epochs on 2 cores, plus ~20 s per scored epoch).
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import numpy as np

import _common as C  # noqa: E402  (sets sys.path)
from realistic import _pairs, realistic_sim, score_against

OUT = C.CACHE / "interactive"


def pick_stream(tag: str, seed: int):
    """(every pick in the order made, picks at the start, {epoch: picks training had by then})."""
    import pandas as pd

    from napari_cryopicker.core.model import load_checkpoint
    from napari_cryopicker.core.picks import Picks

    t = pd.read_csv(OUT / f"{tag}_s{seed}_picks.csv")
    picks = Picks.from_zyx(t[["z", "y", "x"]].to_numpy(float), class_name=list(t["class_name"]),
                           source=list(t["source"]), tomogram="tomogram", voxel_size=10.0)
    count, first, n = {}, None, None
    for r in load_checkpoint(OUT / f"{tag}_s{seed}_last.pt").history:
        m = re.match(r"(\d+) -> (\d+)", str(r.get("picks_renewed", "")))
        if m:
            first = int(m.group(1)) if first is None else first
            n = int(m.group(2))
        count[r["epoch"]] = n
    return picks, first or len(picks), count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="tag", required=True, help="the interactive.py --save run (its --tag)")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--epochs", type=int, nargs="+", required=True, help="score the kept model at these epochs")
    ap.add_argument("--shape", default="200x512x512")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field")
    args = ap.parse_args(argv)
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes
    from napari_cryopicker.core.tomogram import open_tomogram
    from napari_cryopicker.core.train import TrainConfig, train_model

    print(f"# {C.machine()}", flush=True)
    print(f"$ {' '.join(['benchmarks/replay.py', *(argv if argv is not None else sys.argv[1:])])}", flush=True)
    shape = C.parse_shape(args.shape)
    classes = realistic_classes(10.0, BENCHMARK_CLASSES)
    picks, first, count = pick_stream(args.tag, args.seed)
    tomo = open_tomogram(realistic_sim(shape, 100 + args.seed)[0])
    test_mrc, test_truth = realistic_sim(shape, 200 + args.seed)
    test = open_tomogram(test_mrc)
    state = {"epoch": 0, "n": first}
    kept = {}

    def refresh():  # called before every epoch but the first; the record of epoch k + 1 says what it had
        state["epoch"] += 1
        n = count.get(state["epoch"] + 1) or state["n"]
        if n == state["n"]:
            return None
        state["n"] = n
        return [picks.take(np.arange(n))]

    def on_best(ckpt) -> None:
        if ckpt.best_epoch in args.epochs:
            kept[ckpt.best_epoch] = ckpt

    overrides = _pairs(args.set)
    cfg = TrainConfig(**{"epochs": max(args.epochs), "continuous": True, "seed": args.seed, **overrides})
    t0 = time.monotonic()
    train_model([tomo], [picks.take(np.arange(first))], classes, cfg, refresh=refresh, on_best=on_best)
    print(f"{args.tag} seed {args.seed} {overrides or 'defaults'}: {max(args.epochs)} epochs in "
          f"{time.monotonic() - t0:.0f} s, {state['n']} of {len(picks)} picks", flush=True)
    for e in sorted(kept):
        res = predict_picks(test, kept[e], PredictConfig()).picks
        f1 = [s["f1"] for s in score_against(res, test_truth, classes)["1.0"].values()]
        print(f"  epoch {e}: F1 " + " / ".join(f"{v:.2f}" for v in f1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
