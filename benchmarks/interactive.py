"""Live learning with a simulated annotator (issue 15): how many user actions, and how much
wall time, until every class reaches an F1 target on a held-out tomogram.

For each seed: the realistic training tomogram (seed 100 + s) and test tomogram (200 + s)
of ``realistic.py``, its four classes. The annotator answers from the truth, as a user
who knows the particles would:

* it looks at a slab of the tomogram (``--slab`` voxels deep, moved to another depth every
  ``--rounds-per-view`` epochs, as a user scrolls) and first clicks ``--first`` particles
  of each class it sees there, each off-centre by up to half a radius;
* training runs with no planned end (``TrainConfig(continuous=True)``) and takes the
  annotator's picks as they are before every epoch (``train_model(refresh=...)``);
* after each epoch the network of that epoch picks the slab in view (the GUI's live
  suggestions) and the annotator answers up to ``--answers`` candidates, the model's most
  doubtful first (``core.doubt``): a candidate within a radius of a particle of its class
  is accepted (an accepted pick where the model put it), one on a particle of another of
  the four classes is accepted as that class, anything else is rejected; then it clicks
  up to ``--clicks`` particles per class in view that the suggestions missed (with
  ``--pace S``, as a person at one action per S seconds: by then at most ``--first`` x 4 +
  t / S actions, half of them clicks on missed particles, one per class in turn, the class
  with the most missed in view first, half answers; the queue takes the classes in turn
  as the Particles panel's "doubtful first" does, ``--no-turns`` for plain doubt order);
  with ``--heed-hint N`` it does what the Training panel's live line asks ("none yet of X:
  click a few more of those"): before any other click, up to N missed particles of each
  class with no suggestion at its threshold in view;
* at the end of each learning-rate cycle (and of the run; or every ``--eval-every``
  epochs) that network picks the whole test tomogram and is scored per class (F1 within
  the full radius), outside the clock; after the run, so is the model a Stop keeps (since
  session 25 the mean of the last four networks since the picks last changed,
  ``TrainConfig.keep_average``, which *Pick* also uses while training runs; sessions 22-24
  the newest network, ``--set keep_average=1``; before, the best-validated one), and
  ``--eval-kept`` scores that mean too at each evaluation, beside the newest network of
  the same epoch, on the same run.

One action = one click or one answer. With ``--max-actions N`` the annotator stops after N
actions (the issue's bar: half the batch loop's; 80 is half its 160 clicks, 120 half of
those and the 80 answers of its correction round) and training goes on with what it
has, to see where that many actions get within the budget. The run ends when every class reaches
``--target`` or after ``--budget`` seconds of training and answering. The batch loop it is
compared with is ``realistic.py``: 40 clicks per class (160 actions), 12 minutes.

    .venv/bin/python benchmarks/interactive.py --seeds 0 1 2 --max-actions 80 --pace 2.5 [--budget 600]

Run it alone (2 cores shared with anything else train fewer epochs in the budget).
Results: benchmarks/.cache/interactive/<tag>_s<seed>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import _common as C  # noqa: E402  (sets sys.path)
from realistic import _pairs, add_legacy_flag, realistic_sim, score_against, use_legacy

OUT = C.CACHE / "interactive"


class Annotator:
    """A user who knows the truth: clicks what it sees, answers candidates correctly."""

    def __init__(self, truth, classes, slab: int, shape, seed: int):
        from napari_cryopicker.core.picks import Picks

        self.truth = truth.subset(np.isin(truth.table["class_name"].to_numpy(), classes.names))
        self.classes, self.slab, self.shape = classes, slab, shape
        self.rng = np.random.default_rng(seed)
        self.picks = Picks(voxel_size=truth.voxel_size)
        self.clicks = self.answers = 0
        self.version = 0
        zs = self.truth.zyx[:, 0]
        self.views = list(np.linspace(np.percentile(zs, 20), np.percentile(zs, 80), 5).round().astype(int))
        self.view = self.views[len(self.views) // 2]
        self.clicked: set[int] = set()  # truth rows already clicked or accepted
        self.cap: int | None = None  # the most actions this annotator makes (--max-actions)
        self.allowed: float | None = None  # the most actions by now, at a human pace (--pace)

    def left(self) -> int:
        """Actions this annotator may still make (now)."""
        n = 1 << 30 if self.cap is None else max(0, self.cap - self.actions)
        if self.allowed is not None:
            n = min(n, max(0, int(self.allowed) - self.actions))
        return n

    def in_view(self, zyx) -> np.ndarray:
        return np.abs(np.asarray(zyx)[:, 0] - self.view) <= self.slab / 2

    def _add(self, zyx, cls: str, source: str, score: float = 1.0) -> None:
        from napari_cryopicker.core.picks import Picks

        p = Picks.from_zyx(np.asarray(zyx, float).reshape(-1, 3), class_name=cls, score=score, source=source,
                           tomogram="tomogram", voxel_size=self.truth.voxel_size)
        self.picks = Picks.concat([self.picks, p])
        self.picks.voxel_size = self.truth.voxel_size
        self.version += 1

    def click(self, per_class: int, missed: np.ndarray | None = None, total: int | None = None,
              first: dict[str, int] | None = None) -> int:
        """Click up to ``per_class`` unclicked particles of each class in view (those in
        ``missed``, truth rows, first), off-centre by up to half a radius; with ``total``,
        at most that many, only missed ones, one per class in turn, the class with the most
        missed first (a user clicks where the suggestions are worst). ``first`` (class ->
        clicks): those classes' clicks come before the others', that many of each (the
        Training panel's live hint names the classes it proposes nothing of yet)."""
        first = first or {}
        names = self.truth.table["class_name"].to_numpy()
        seen = np.flatnonzero(self.in_view(self.truth.zyx))
        miss = set() if missed is None else set(int(i) for i in missed)
        queues = []
        for c in self.classes:
            rows = [i for i in seen if names[i] == c.name and i not in self.clicked]
            if missed is not None:
                rows = sorted(rows, key=lambda i: i not in miss)
            else:
                self.rng.shuffle(rows)
            if total is not None:
                rows = [i for i in rows if i in miss]
            queues.append((c, rows))
        if total is not None:  # the class with the most missed first
            queues.sort(key=lambda q: -len(q[1]))
        hinted = [(c, rows) for c, rows in queues if c.name in first]  # one of each in turn, then the next
        ahead = [(c, rows[k]) for k in range(max(first.values(), default=0)) for c, rows in hinted
                 if k < min(len(rows), first[c.name])]
        queues = [(c, rows[:per_class]) for c, rows in queues if c.name not in first]
        limit = self.left() if total is None else min(total, self.left())
        if total is None:  # each class's in turn
            order = ahead + [(c, i) for c, rows in queues for i in rows]
        else:  # one of each class in turn
            order = ahead + [(c, rows[k]) for k in range(per_class) for c, rows in queues if k < len(rows)]
        n = 0
        for c, i in order[:limit]:
            d = self.rng.normal(size=3)
            d *= self.rng.uniform(0, 0.5 * c.radius) / np.linalg.norm(d)
            self._add(self.truth.zyx[i] + d, c.name, "manual")
            self.clicked.add(i)
            n += 1
        self.clicks += n
        return n

    def tally(self) -> dict:
        """Picks per class and source (manual, accepted, rejected)."""
        t = self.picks.table
        return {f"{c}/{s}": int(v) for (c, s), v in t.groupby(["class_name", "source"]).size().items()} if len(t) else {}

    def answer(self, candidates, limit: int) -> int:
        """Answer up to ``limit`` candidates (most doubtful first) from the truth: accept (as
        its class or, T, as the particle's own), reject, or skip one on a particle already
        clicked as another class (a rejection there would carve out that pick's label)."""
        from scipy.spatial import cKDTree

        if not len(candidates):
            return 0
        tree = cKDTree(self.truth.zyx)
        names = self.truth.table["class_name"].to_numpy()
        n = 0
        for i in range(min(limit, len(candidates), self.left())):
            zyx = candidates.zyx[i]
            cls = str(candidates.table["class_name"].iloc[i])
            near = tree.query_ball_point(zyx, self.classes[cls].radius)
            hits = [j for j in near if j not in self.clicked]
            same = [j for j in hits if names[j] == cls]
            other = [j for j in hits if names[j] != cls]
            if not hits and near:
                pass  # on a particle clicked already as another class: skip it (N), no label
            elif same:
                self._add(zyx, cls, "accepted", float(candidates.table["score"].iloc[i]))
                self.clicked.add(same[0])
            elif other and np.linalg.norm(self.truth.zyx[other[0]] - zyx) <= self.classes[names[other[0]]].radius:
                self._add(zyx, str(names[other[0]]), "accepted")
                self.clicked.add(other[0])
            else:
                self._add(zyx, cls, "rejected", float(candidates.table["score"].iloc[i]))
            n += 1
        self.answers += n
        return n

    def missed(self, suggestions) -> np.ndarray:
        """Truth rows in view that no suggestion of their class is near."""
        from scipy.spatial import cKDTree

        rows = np.flatnonzero(self.in_view(self.truth.zyx))
        names = self.truth.table["class_name"].to_numpy()
        out = []
        for c in self.classes:
            mine = [i for i in rows if names[i] == c.name]
            sub = suggestions.select(class_name=c.name)
            if not len(sub):
                out += mine
                continue
            d, _ = cKDTree(sub.zyx).query(self.truth.zyx[mine])
            out += [i for i, x in zip(mine, d) if x > c.radius]
        return np.asarray(out, int)

    def unknown(self, candidates):
        """Candidates not within a radius of a pick or rejection of their class (the GUI's
        set_predictions leaves those out: they need no answer again)."""
        from scipy.spatial import cKDTree

        if not len(candidates) or not len(self.picks):
            return candidates
        keep = np.ones(len(candidates), bool)
        names = candidates.table["class_name"].to_numpy()
        for c in self.classes:
            ref = self.picks.select(class_name=c.name)
            rows = np.flatnonzero(names == c.name)
            if len(ref) and len(rows):
                d, _ = cKDTree(ref.zyx).query(candidates.zyx[rows])
                keep[rows[d <= c.radius]] = False
        return candidates.subset(keep)

    @property
    def actions(self) -> int:
        return self.clicks + self.answers


def run_seed(args, seed: int, overrides: dict, predict_overrides: dict | None = None) -> dict:
    from napari_cryopicker.core.doubt import class_turns, doubt
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.progress import Progress
    from napari_cryopicker.core.realistic import BENCHMARK_CLASSES, realistic_classes
    from napari_cryopicker.core.tomogram import Tomogram, open_tomogram
    from napari_cryopicker.core.train import TrainConfig, train_model

    shape = C.parse_shape(args.shape)
    classes = realistic_classes(10.0, BENCHMARK_CLASSES)
    train_mrc, train_truth = realistic_sim(shape, 100 + seed)
    test_mrc, test_truth = realistic_sim(shape, 200 + seed)
    tomo, test = open_tomogram(train_mrc), open_tomogram(test_mrc)
    user = Annotator(train_truth, classes, args.slab, shape, seed)
    user.cap = args.max_actions
    user.click(args.first)
    first_actions = user.actions
    cfg = TrainConfig(**{"epochs": 100_000, "continuous": True, "seed": seed, "device": args.device, **overrides})
    # the networks to score: each learning-rate cycle's last (settled) one, and the last
    ends, n = [], cfg.warmup_epochs
    for k in range(12):
        n += cfg.cycle_epochs * 2 ** k
        ends.append(n)
    cycle_ends = set(ends)
    progress = Progress()
    t0 = time.monotonic()
    off_clock = 0.0  # seconds of evaluation, not counted
    log: list[dict] = []
    seen = {"version": -1}
    first_suggestions = None
    last_model: dict = {}

    def refresh():
        if user.version == seen["version"]:
            return None
        seen["version"] = user.version
        return [user.picks]

    kept_now: dict = {}

    def on_best(ckpt) -> None:  # what Stop or "pick now" would keep (keep_average: an average)
        kept_now["ckpt"] = ckpt

    def on_model(ckpt) -> None:
        nonlocal off_clock, first_suggestions
        epoch = ckpt.best_epoch or len(log) + 1
        if args.pace > 0:  # a user makes one action per ``pace`` seconds, while training runs
            user.allowed = first_actions + (time.monotonic() - t0 - off_clock) / args.pace
        z0 = int(max(0, user.view - args.slab // 2 - 8))
        z1 = int(min(shape[0], user.view + args.slab // 2 + 8))
        slab = Tomogram(tomo.data[z0:z1], tomo.voxel_size, tomo.path, tomo.voxel_size_xyz, tomo.name)
        res = predict_picks(slab, ckpt, PredictConfig(**{"device": args.device, "mask_fiducials": False,
                                                         "score_floor": 0.05, **(predict_overrides or {})}))
        sug = res.picks.copy()
        sug.table["z"] = sug.table["z"] + z0
        sug = sug.subset(user.in_view(sug.zyx))
        sug = user.unknown(sug)  # as the GUI shows them: none on a pick or rejection already made
        if first_suggestions is None and len(sug):
            first_suggestions = round(time.monotonic() - t0 - off_clock, 1)
        known = user.picks.zyx if len(user.picks) else None
        th = {c: float(v) for c, v in (res.thresholds or {}).items()}
        names = sug.table["class_name"].to_numpy()
        keys = doubt(sug.zyx, names, sug.table["score"].to_numpy(float), th, classes, known)
        if args.turns:  # as the Particles panel's "doubtful first" orders them
            mine = user.picks.exclude_source("rejected") if len(user.picks) else user.picks
            keys = class_turns(keys, names, mine.table["class_name"].value_counts().to_dict() if len(mine) else {})
        order = np.argsort(keys, kind="stable")
        shown = sug.take(order)
        missed = user.missed(sug.subset(sug.table["score"].to_numpy() >= np.array(
            [th.get(c, 0.3) for c in sug.table["class_name"]])))
        hinted = {}
        if args.heed_hint:  # the live hint: classes with no suggestion at their threshold in view
            shown_names = set(res.picks.subset(user.in_view(res.picks.zyx + [z0, 0, 0]) & (
                res.picks.table["score"].to_numpy() >= np.array([th.get(c, 0.3) for c in res.picks.table["class_name"]])
            )).table["class_name"]) if len(res.picks) else set()
            hinted = {c.name: args.heed_hint for c in classes if c.name not in shown_names}
        if args.pace > 0:  # as many clicks on misses as answers, in the actions the pace allows
            clicked = user.click(args.clicks, missed, total=(user.left() + 1) // 2, first=hinted)
            answered = user.answer(shown, args.answers)
        else:
            answered = user.answer(shown, args.answers)
            clicked = user.click(args.clicks, missed, first=hinted)
        if epoch % args.rounds_per_view == 0:
            user.view = user.views[(user.views.index(user.view) + 1) % len(user.views)]
        row = {"epoch": epoch, "seconds": round(time.monotonic() - t0 - off_clock, 1), "actions": user.actions,
               "clicks": user.clicks, "answers": user.answers, "answered": answered, "clicked": clicked,
               **({"hinted": sorted(hinted)} if hinted else {})}
        over = time.monotonic() - t0 - off_clock > args.budget
        if epoch in cycle_ends or (args.eval_every and epoch % args.eval_every == 0) or over:
            t_e = time.monotonic()
            picks = predict_picks(test, ckpt, PredictConfig(device=args.device, **(predict_overrides or {}))).picks
            f1 = {n: round(s["f1"], 3) for n, s in score_against(picks, test_truth, classes)["1.0"].items()}
            row["f1"] = f1
            if args.eval_kept and kept_now.get("ckpt") is not None and kept_now["ckpt"].train_config.get(
                    "keep_average", 0) > 1 and ckpt.history[-1].get("kept_average", 1) > 1:
                picks = predict_picks(test, kept_now["ckpt"], PredictConfig(
                    device=args.device, **(predict_overrides or {}))).picks
                row["f1_kept"] = {n: round(s["f1"], 3)
                                  for n, s in score_against(picks, test_truth, classes)["1.0"].items()}
                row["kept_average"] = ckpt.history[-1]["kept_average"]
            off_clock += time.monotonic() - t_e
            if all(v >= args.target for v in f1.values()):
                progress.cancel()
        log.append(row)
        last_model["ckpt"] = ckpt
        print(f"  seed {seed} epoch {epoch:3d} {row['seconds']:6.0f} s  actions {user.actions:4d} "
              f"(+{clicked} clicks, +{answered} answers)"
              + ("  F1 " + " / ".join(f"{v:.2f}" for v in row["f1"].values()) if "f1" in row else "")
              + (f"  kept (mean of {row['kept_average']}) " + " / ".join(f"{v:.2f}" for v in row["f1_kept"].values())
                 if "f1_kept" in row else ""), flush=True)
        if over:
            progress.cancel()

    kept = train_model([tomo], [user.picks], classes, cfg, progress=progress, on_model=on_model, refresh=refresh,
                       on_best=on_best)
    # what the user has after Stop: the model Pick uses meanwhile (the newest, or with
    # keep_average the mean of the last networks since the picks last changed)
    picks = predict_picks(test, kept, PredictConfig(device=args.device, **(predict_overrides or {}))).picks
    stopped = {"epoch": kept.best_epoch, "f1": {n: round(s["f1"], 3)
                                                for n, s in score_against(picks, test_truth, classes)["1.0"].items()}}
    print(f"  seed {seed} after Stop: epoch {kept.best_epoch}'s model, F1 "
          + " / ".join(f"{v:.2f}" for v in stopped["f1"].values()), flush=True)
    if args.save:
        from napari_cryopicker.core.model import save_checkpoint

        save_checkpoint(kept, OUT / f"{args.tag}_s{seed}_kept.pt")
        if "ckpt" in last_model:
            save_checkpoint(last_model["ckpt"], OUT / f"{args.tag}_s{seed}_last.pt")
        user.picks.table.to_csv(OUT / f"{args.tag}_s{seed}_picks.csv", index=False)  # clicks, answers: to probe
    evals = [r for r in log if "f1" in r]
    reached = next((r for r in evals if all(v >= args.target for v in r["f1"].values())), None)
    per_class = {c.name: next(({"actions": r["actions"], "seconds": r["seconds"]} for r in evals
                               if r["f1"][c.name] >= args.target), None) for c in classes}
    return {"seed": seed, "target": args.target, "first_suggestions_s": first_suggestions,
            "reached": reached, "per_class": per_class, "last": evals[-1] if evals else None, "log": log,
            "stopped": stopped, "pace_s": args.pace, "turns": args.turns, "heed_hint": args.heed_hint,
            "picks": user.tally(),
            "overrides": {k: str(v) for k, v in overrides.items()},
            "predict_overrides": {k: str(v) for k, v in (predict_overrides or {}).items()},
            "templates": {k: {"n_particles": t["n_particles"], "threshold": round(float(t["threshold"]), 3)}
                          for k, t in (kept.templates or {}).items()},
            "template_seconds": kept.train_config.get("template_seconds")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--shape", default="200x512x512")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--first", type=int, default=5, help="clicks per class before training starts")
    ap.add_argument("--answers", type=int, default=10, help="candidates answered after each epoch")
    ap.add_argument("--clicks", type=int, default=1, help="missed particles clicked per class after each epoch")
    ap.add_argument("--slab", type=int, default=40, help="depth of the view (voxels)")
    ap.add_argument("--rounds-per-view", type=int, default=3)
    ap.add_argument("--eval-every", type=int, default=0,
                    help="also score every N epochs (0: only at the end of each learning-rate cycle and at the end)")
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--max-actions", type=int, default=None,
                    help="the annotator stops after this many actions; training goes on to the budget")
    ap.add_argument("--pace", type=float, default=0.0,
                    help="seconds per action: by time t the annotator has made at most first + t / pace actions "
                         "(0: as many as it likes after each epoch)")
    ap.add_argument("--heed-hint", type=int, default=0, metavar="N",
                    help="clicks first up to N missed particles of each class the network suggests none of in view "
                         "(as the Training panel's live hint asks: 'none yet of X: click a few more of those'); "
                         "0: off (before session 24)")
    ap.add_argument("--no-turns", dest="turns", action="store_false",
                    help="the queue in plain doubt order, not the classes in turn (before session 22)")
    ap.add_argument("--eval-kept", action="store_true",
                    help="score the kept model too (the mean of the last keep_average networks, 4 by default) "
                         "at each evaluation, beside the newest network of the same epoch")
    ap.add_argument("--save", action="store_true", help="save the model Stop keeps and the last one (.pt), and the annotator's picks (_picks.csv)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of training and answering")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig field")
    ap.add_argument("--predict", dest="predict_sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a PredictConfig field (suggestions, scoring and the model Stop keeps)")
    ap.add_argument("--tag", default="live")
    add_legacy_flag(ap)
    args = ap.parse_args(argv)
    use_legacy(args)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"# {C.machine()}", flush=True)
    print(f"$ {' '.join(['benchmarks/interactive.py', *(argv if argv is not None else sys.argv[1:])])}", flush=True)
    results = []
    for seed in args.seeds:
        r = run_seed(args, seed, _pairs(args.set), _pairs(args.predict_sets))
        (OUT / f"{args.tag}_s{seed}.json").write_text(json.dumps(r, indent=1))
        results.append(r)
    names = list(results[0]["per_class"]) if results else []
    print(f"\nactions (and seconds) until F1 >= {args.target} per class; first suggestions after")
    print("seed  first  " + "  ".join(f"{n:>16}" for n in names) + "   all    last F1 (the model Stop keeps)")
    for r in results:
        cells = [f"{v['actions']:5d} ({v['seconds']:4.0f} s)" if v else "         not met" for v in r["per_class"].values()]
        allr = r["reached"]
        last = r["last"]["f1"] if r["last"] else {}
        print(f"{r['seed']:4d}  {r['first_suggestions_s'] or float('nan'):4.0f} s  " + "  ".join(f"{c:>16}" for c in cells)
              + f"   {allr['actions'] if allr else '-':>5}  " + " / ".join(f"{v:.2f}" for v in last.values())
              + "  (" + " / ".join(f"{v:.2f}" for v in r["stopped"]["f1"].values()) + ")")
    print("batch loop (realistic.py): 160 actions (40 clicks per class), 720 s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
