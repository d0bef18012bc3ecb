"""`cryopicker demo`: the whole method end to end on phantom data, on CPU in minutes.

Simulates a training and a test tomogram, keeps ``per_class`` picks per class of the
training truth (as a user would click them), trains within a time budget, picks the test
tomogram, prints per-class precision/recall/F1 and writes the picks in every format.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np


def _subsample(picks, per_class: int, seed: int):
    from .core.picks import Picks

    rng = np.random.default_rng(seed)
    parts = []
    for name in picks.class_names:
        sub = picks.select(class_name=name)
        if len(sub) > per_class:
            idx = np.sort(rng.choice(len(sub), per_class, replace=False))
            mask = np.zeros(len(sub), bool)
            mask[idx] = True
            sub = sub._subset(mask)
        parts.append(sub)
    out = Picks.concat(parts)
    out.table["source"] = "manual"
    return out


def run_demo(out: Path = Path("demo_out"), time_limit: float = 600.0, seed: int = 0, per_class: int = 40,
             device: str = "auto", shape=(96, 256, 256), epochs: int = 200, log=print) -> int:
    from .core.formats import write_picks
    from .core.metrics import evaluate, format_report
    from .core.model import count_parameters, macs_per_voxel, save_checkpoint
    from .core.predict import predict_picks
    from .core.progress import Progress, TerminalBar
    from .core.simulate import simulate_tomogram, write_simulation
    from .core.tomogram import open_tomogram
    from .core.train import TrainConfig, train_model

    out = Path(out)
    t_all = time.monotonic()
    log(f"[1/5] simulating a training and a test tomogram {shape} into {out}/ ...")
    train_sim = simulate_tomogram(shape=shape, seed=1000 + seed, name="train")
    test_sim = simulate_tomogram(shape=shape, seed=2000 + seed, name="test")
    train_mrc, _ = write_simulation(out / "train", train_sim)
    test_mrc, _ = write_simulation(out / "test", test_sim)
    classes = train_sim.classes
    picks = _subsample(train_sim.picks, per_class, seed).with_tomogram("tomogram")
    log("      classes: " + ", ".join(f"{c.name} (d={c.diameter:g} vox)" for c in classes)
        + f"; {len(picks)} training picks ({', '.join(f'{k} {v}' for k, v in picks.counts().items())})")

    train_tomo = open_tomogram(train_mrc)
    test_tomo = open_tomogram(test_mrc)
    cfg = TrainConfig(epochs=epochs, time_limit=time_limit, device=device, seed=seed)
    from .core.model import ModelConfig

    mc = ModelConfig(n_classes=len(classes), f_maps=tuple(cfg.f_maps))
    log(f"[2/5] training a ResUNet f_maps={list(cfg.f_maps)} ({macs_per_voxel(mc) / 1e3:.0f} k multiply-adds "
        f"per voxel) for up to {time_limit:.0f} s ...")
    bar = TerminalBar()

    def on_epoch(r):
        bar.close()
        vf = "-" if r["val_f1"] is None else f"{r['val_f1']:.3f}"
        vl = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        log(f"      epoch {r['epoch']:3d}  train loss {r['train_loss']:.3f}  val loss {vl}  val F3 {vf}  "
            f"({time.monotonic() - t_train:.0f} s, validation {r.get('val_seconds', 0):.1f} s)")

    t_train = time.monotonic()
    ckpt = train_model([train_tomo], [picks], classes, cfg, progress=Progress(callback=bar), on_epoch=on_epoch)
    bar.close()
    model_path = save_checkpoint(ckpt, out / "model.pt")
    log(f"      saved {model_path} (best epoch {ckpt.best_epoch}, {count_parameters(ckpt.build()):,} parameters, "
        f"{time.monotonic() - t_train:.0f} s)")

    log("[3/5] picking the test tomogram ...")
    t0 = time.monotonic()
    res = predict_picks(test_tomo, ckpt, progress=Progress(callback=bar))
    bar.close()
    log(f"      {len(res.picks)} picks in {time.monotonic() - t0:.1f} s")

    log("[4/5] scoring against the test tomogram's truth (match within the class radius):")
    report = evaluate(res.picks, test_sim.picks.with_tomogram(test_tomo.name), classes)
    for line in format_report(report).splitlines():
        log("      " + line)

    log("[5/5] writing the picks in every format:")
    pdir = out / "picks"
    pdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, ext in [("csv", ".csv"), ("relion3", "_relion3.star"), ("relion4", "_relion4.star"),
                      ("relion5", "_relion5.star"), ("dynamo", ".tbl"), ("copick", ""), ("napari", "_napari.csv")]:
        target = pdir / "copick" if name == "copick" else pdir / f"test{ext}"
        written += write_picks(res.picks, target, format=name, voxel_size=test_tomo.voxel_size,
                               tomogram_shape=test_tomo.shape, tomogram="test")
    for w in written:
        log(f"      {w}")
    big = sorted(classes, key=lambda c: -c.diameter)[:2]
    f1s = {c.name: report.per_class[c.name].f1 for c in big}
    log(f"done in {time.monotonic() - t_all:.0f} s; F1 of the two largest classes: "
        + ", ".join(f"{k} {v:.3f}" for k, v in f1s.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo())
