"""Training time-to-accuracy: validation F3 (and final test F1) against wall time.

The scenario of ``cryopicker demo``: a simulated 96x256x256 training tomogram with 40
picks per class (4 classes), the default network and TrainConfig (epochs=200 as the
demo sets it, so the time budget is what stops it), a wall-time budget (default 600 s).
Every epoch records (seconds since the start, epoch, train loss, val loss, val F3) via
``on_epoch``; the validation score that ``train_model`` computes is the recall-weighted
F-alpha with alpha = 3 (called ``val_f1`` in the record). After training, the best
checkpoint picks a separate simulated test tomogram and its F1 per class is printed.

In-process ratios: before training, the speed of one training step (forward, backward,
AdamW; batch 4 of 48^3 crops) as train_model does it (channels_last_3d, the first block's
one-channel shortcut computed as a product) is compared with the plain way (contiguous
NCDHW) and with that shortcut as the 1x1x1 convolution it replaces, alternated in this
process.

The best checkpoint is saved to benchmarks/.cache/model.pt, where inference.py,
postprocess.py and scaling.py find it.

    nice -n 10 .venv/bin/python benchmarks/training.py [--time-limit 600]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import _common as C  # noqa: E402  (sets sys.path)


def step_speed(n_classes: int, steps: int = 8, patch: int = 48, batch: int = 4, device: str = "cpu") -> dict:
    """Seconds per training step: as train_model runs it (channels_last_3d), the plain
    contiguous layout, channels_last with the first shortcut as a Conv3d, and with the
    finest decoder block (the default until session 14)."""
    import numpy as np
    import torch

    from napari_cryopicker.core.model import ModelConfig, ResUNet
    from napari_cryopicker.core.train import TrainConfig, loss_fn, wants_fine_decoder

    cfg = TrainConfig()
    mc = ModelConfig(n_classes=n_classes, f_maps=tuple(cfg.f_maps), coord_conv=cfg.coord_conv, pyramid=cfg.pyramid,
                     fine_decoder=wants_fine_decoder(cfg))
    rng = np.random.default_rng(0)
    x0 = torch.from_numpy(rng.standard_normal((batch, 1, patch, patch, patch), dtype=np.float32)).to(device)
    y = torch.from_numpy(rng.integers(0, n_classes + 1, (batch, patch, patch, patch))).to(device)
    w = torch.ones(n_classes + 1, device=device)
    out = {"channels_last": [], "contiguous": [], "conv_shortcut": [], "fine_decoder": []}
    nets = {}
    for name in out:
        torch.manual_seed(0)
        net = ResUNet(replace(mc, fine_decoder=True) if name == "fine_decoder" else mc).train().to(device)
        if name == "conv_shortcut" and not mc.coord_conv:
            first = net.enc[0][0]
            conv = torch.nn.Conv3d(1, first.short.out_channels, 1, bias=False).to(device)
            conv.load_state_dict(first.short.state_dict())
            first.short = conv
        if name != "contiguous":
            net = net.to(memory_format=torch.channels_last_3d)
        nets[name] = (net, torch.optim.AdamW(net.parameters(), lr=1e-3))

    def one(name):
        net, opt = nets[name]
        x = x0 if name == "contiguous" else x0.contiguous(memory_format=torch.channels_last_3d)
        t = time.perf_counter()
        loss = loss_fn(net(x), y, n_classes, w, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for name in out:  # warm-up
        one(name)
    for _ in range(steps):
        for name in out:
            out[name].append(one(name))
    return {k: float(np.median(v)) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-limit", type=float, default=600.0, help="training budget in seconds (default 600)")
    ap.add_argument("--shape", default="96x256x256")
    ap.add_argument("--per-class", type=int, default=40, help="training picks per class (as the demo)")
    ap.add_argument("--epochs", type=int, default=200, help="epoch cap (the demo's 200; the budget stops it first)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=str(C.TRAINED_MODEL), help="where to save the best model ('' = do not)")
    ap.add_argument("--device", default="cpu", help="cpu (default: the 2-core target) or cuda")
    a = ap.parse_args()

    import numpy as np
    import torch

    from napari_cryopicker.core.metrics import evaluate
    from napari_cryopicker.core.model import count_parameters, macs_per_voxel, save_checkpoint
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.tomogram import open_tomogram
    from napari_cryopicker.core.train import TrainConfig, train_model, wants_fine_decoder
    from napari_cryopicker.demo import _subsample

    shape = C.parse_shape(a.shape)
    print(f"# training.py | {C.machine()}")
    train_mrc, train_truth, classes = C.simulated(shape, seed=1000 + a.seed, name="train")
    test_mrc, test_truth, _ = C.simulated(shape, seed=2000 + a.seed, name="test")
    picks = _subsample(train_truth, a.per_class, a.seed).with_tomogram("tomogram")
    print(f"# data: simulated {C.shape_str(shape)} train (seed {1000 + a.seed}) / test (seed {2000 + a.seed}); "
          f"{len(picks)} training picks ({', '.join(f'{k} {v}' for k, v in picks.counts().items())})")

    sp = step_speed(len(classes), device=a.device)
    print(f"# training step (batch 4 x 48^3, fwd+bwd+AdamW), median of 8 after a warm-up, alternated in this process: "
          f"channels_last {sp['channels_last']:.2f} s, contiguous (plain) {sp['contiguous']:.2f} s -> "
          f"ratio plain/ours = {sp['contiguous'] / sp['channels_last']:.2f}x; the first shortcut as a 1x1x1 "
          f"convolution {sp['conv_shortcut']:.2f} s -> ratio {sp['conv_shortcut'] / sp['channels_last']:.2f}x; "
          f"with the finest decoder block {sp['fine_decoder']:.2f} s -> ratio "
          f"{sp['fine_decoder'] / sp['channels_last']:.2f}x")

    cfg = TrainConfig(epochs=a.epochs, time_limit=a.time_limit, device=a.device, seed=a.seed)
    from napari_cryopicker.core.model import ModelConfig

    mc = ModelConfig(n_classes=len(classes), f_maps=tuple(cfg.f_maps), coord_conv=cfg.coord_conv,
                     fine_decoder=wants_fine_decoder(cfg))
    print(f"# network: f_maps={list(cfg.f_maps)} coord_conv={cfg.coord_conv} pyramid={cfg.pyramid}; "
          f"{macs_per_voxel(mc) / 1e3:.1f} k MACs/voxel; patch {cfg.patch}, batch {cfg.batch_size}, "
          f"{cfg.steps_per_epoch} steps/epoch, lr {cfg.lr}; budget {a.time_limit:.0f} s")
    calib0 = C.calibrate()
    rows = []
    t0 = time.monotonic()

    def on_epoch(r):
        el = time.monotonic() - t0
        rows.append((el, r))
        vf = "-" if r["val_f1"] is None else f"{r['val_f1']:.3f}"
        net = f"  network {r['member']}" if r.get("member") else ""
        print(f"#   {el:6.0f} s  epoch {r['epoch']:3d}{net}  loss {r['train_loss']:.3f}  val F3 {vf}", flush=True)

    ckpt = train_model([open_tomogram(train_mrc)], [picks], classes, cfg, on_epoch=on_epoch)
    t_train = time.monotonic() - t0
    calib1 = C.calibrate()

    best = -1.0
    trows = []
    for el, r in rows:
        vf = r["val_f1"]
        if vf is not None and vf > best:
            best = vf
        trows.append([f"{el:.0f}", r["epoch"], f"{r['train_loss']:.3f}",
                      "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}",
                      "-" if vf is None else f"{vf:.3f}", f"{best:.3f}" if best >= 0 else "-",
                      f"{r.get('val_seconds', 0):.1f}"])
    print()
    print(C.table(["seconds", "epoch", "train loss", "val loss", "val F3", "best F3", "val s"], trows,
                  title=f"Training on {C.shape_str(shape)} ({len(picks)} picks), "
                        + (f"{torch.get_num_threads()} CPU threads, " if a.device == "cpu" else f"{a.device}, ")
                        + f"budget {a.time_limit:.0f} s"))
    if best > 0:
        for frac in (0.5, 0.8, 0.9, 0.95, 1.0):
            hit = next((el for el, r in rows if r["val_f1"] is not None and r["val_f1"] >= frac * best), None)
            print(f"time to {frac:.0%} of the best val F3 ({frac * best:.3f}): {hit:.0f} s "
                  f"({hit / t_train:.0%} of the run)")
    print(f"trained {len(rows)} epochs in {t_train:.0f} s; best epoch {ckpt.best_epoch} (val F3 {ckpt.best_score}); "
          f"{count_parameters(ckpt.build()):,} parameters; machine speed (fp32 1024^2 matmul) "
          f"{calib0:.0f} GFLOP/s before, {calib1:.0f} after")

    if a.save:
        save_checkpoint(ckpt, a.save)
        print(f"saved the best model to {a.save}")
    t = time.perf_counter()
    res = predict_picks(open_tomogram(test_mrc), ckpt, PredictConfig(device=a.device))
    t_pred = time.perf_counter() - t
    rep = evaluate(res.picks, test_truth.with_tomogram("tomogram"), classes)
    trows = [[n, s.n_true, s.n_pred, s.tp, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}"]
             for n, s in list(rep.per_class.items()) + [("overall", rep.overall)]]
    print()
    print(C.table(["class", "truth", "picks", "TP", "precision", "recall", "F1"], trows,
                  title=f"Best model on the test tomogram {C.shape_str(shape)} (predict {t_pred:.0f} s)"))
    print(f"test F1 (micro, 4 classes): {rep.overall.f1:.3f}; mean of per-class F1: "
          f"{np.mean([s.f1 for s in rep.per_class.values()]):.3f}")
    _ = torch


if __name__ == "__main__":
    main()
