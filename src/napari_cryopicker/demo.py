"""`cryopicker demo`: the whole method end to end on simulated data, on CPU in minutes.

Simulates a training and a test tomogram (the realistic preset by default: a crowded cell
slab of 13 classes imaged as a tilt series, see ``core/realistic.py``), keeps
``per_class`` picks of each of four classes of the training truth (as a user would click
them, the rest left unclicked), trains within a time budget, picks the test tomogram,
prints per-class precision/recall/F1 and writes the picks in every format.
``preset="simple"`` runs the quick phantom of the tests instead (every class clicked).
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
            sub = sub.subset(mask)
        parts.append(sub)
    out = Picks.concat(parts)
    out.table["source"] = "manual"
    return out


def _simulated(preset: str, shape, seed: int, name: str):
    """(SimulatedTomogram, ClassTable of the classes to click) of a preset."""
    if preset == "simple":
        from .core.simulate import simulate_tomogram

        sim = simulate_tomogram(shape=shape or (96, 256, 256), seed=seed, name=name)
        return sim, sim.classes
    if preset != "realistic":
        raise ValueError(f"unknown preset {preset!r}: realistic or simple")
    from .core.realistic import BENCHMARK_CLASSES, REALISTIC_SHAPE, realistic_classes, simulate_realistic

    sim = simulate_realistic(shape or REALISTIC_SHAPE, seed=seed, name=name)
    return sim, realistic_classes(sim.voxel_size, BENCHMARK_CLASSES)


def run_demo(out: Path = Path("demo_out"), time_limit: float = 600.0, seed: int = 0, per_class: int = 40,
             device: str = "auto", shape=None, epochs: int = 200, log=print, preset: str = "realistic") -> int:
    from .core.formats import write_picks
    from .core.metrics import evaluate, format_report
    from .core.model import count_parameters, macs_per_voxel, save_checkpoint
    from .core.predict import predict_picks
    from .core.progress import Progress, TerminalBar
    from .core.simulate import write_simulation
    from .core.tomogram import open_tomogram
    from .core.train import TrainConfig, train_model, wants_fine_decoder

    out = Path(out)
    t_all = time.monotonic()
    log(f"[1/5] simulating a training and a test tomogram ({preset} preset) into {out}/ ...")
    train_sim, classes = _simulated(preset, shape, 1000 + seed, "train")
    test_sim, _ = _simulated(preset, shape, 2000 + seed, "test")
    log(f"      {' x '.join(map(str, train_sim.shape))} voxels at {train_sim.voxel_size:g} A, "
        f"{len(train_sim.picks)} and {len(test_sim.picks)} particles of {len(train_sim.classes)} classes")
    train_mrc, _ = write_simulation(out / "train", train_sim)
    test_mrc, _ = write_simulation(out / "test", test_sim)
    wanted = train_sim.picks.select(class_name=classes.names)
    picks = _subsample(wanted, per_class, seed).with_tomogram("tomogram")
    test_truth = test_sim.picks.select(class_name=classes.names)
    log("      classes: " + ", ".join(f"{c.name} (d={c.diameter:g} vox)" for c in classes)
        + f"; {len(picks)} training picks ({', '.join(f'{k} {v}' for k, v in picks.counts().items())})")

    train_tomo = open_tomogram(train_mrc)
    test_tomo = open_tomogram(test_mrc)
    cfg = TrainConfig(epochs=epochs, time_limit=time_limit, device=device, seed=seed)
    from .core.model import ModelConfig

    mc = ModelConfig(n_classes=len(classes), f_maps=tuple(cfg.f_maps), coord_conv=cfg.coord_conv,
                     fine_decoder=wants_fine_decoder(cfg))
    log(f"[2/5] training a ResUNet f_maps={list(cfg.f_maps)} ({macs_per_voxel(mc) / 1e3:.0f} k multiply-adds "
        f"per voxel) for up to {time_limit:.0f} s ...")
    bar = TerminalBar()

    def on_epoch(r):
        bar.close()
        vf = "-" if r["val_f1"] is None else f"{r['val_f1']:.3f}"
        vl = "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}"
        net = f"  network {r['member']}" if r.get("member") else ""
        log(f"      epoch {r['epoch']:3d}{net}  train loss {r['train_loss']:.3f}  val loss {vl}  val F3 {vf}  "
            f"({time.monotonic() - t_train:.0f} s, validation {r.get('val_seconds', 0):.1f} s)")

    t_train = time.monotonic()
    ckpt = train_model([train_tomo], [picks], classes, cfg, progress=Progress(callback=bar), on_epoch=on_epoch)
    bar.close()
    model_path = save_checkpoint(ckpt, out / "model.pt")
    nets = f"{ckpt.n_members} networks of " if ckpt.n_members > 1 else ""
    log(f"      saved {model_path} ({nets}{count_parameters(ckpt.member(0).build()):,} parameters, "
        f"best epoch {ckpt.best_epoch}, "
        f"{time.monotonic() - t_train:.0f} s)")

    log("[3/5] picking the test tomogram ...")
    t0 = time.monotonic()
    res = predict_picks(test_tomo, ckpt, progress=Progress(callback=bar))
    bar.close()
    log(f"      {len(res.picks)} picks in {time.monotonic() - t0:.1f} s")

    log("[4/5] scoring against the test tomogram's truth (match within the class radius):")
    report = evaluate(res.picks, test_truth.with_tomogram(test_tomo.name), classes)
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
