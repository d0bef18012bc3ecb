"""`cryopicker train`: its options, and training a model on tomograms with their picks
files or on the picked runs of a copick project (see :mod:`.cli`)."""

from __future__ import annotations

import argparse
import sys
import time

from ._cli_common import CLIError, _bar, _classes_arg, _load_tomogram, _read_picks


def add_train_parser(sub) -> None:
    """Add ``train`` to the subcommands ``sub``."""
    t = sub.add_parser("train", help="train a picking model on annotated tomograms")
    t.add_argument("--tomogram", action="append", default=[])
    t.add_argument("--picks", action="append", default=[])
    t.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME=DIAMETER_VOXELS")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=40)
    t.add_argument("--time-limit", type=float, default=None, metavar="SECONDS")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--init", default=None, metavar="MODEL.pt", help="fine-tune from this model")
    t.add_argument("--members", type=int, default=None, metavar="N",
                   help="train N networks one after another (each with 1/N of the epochs and time) and pick with "
                        "their mean (default 3; 1 for one network; fine-tuning keeps the model's own count)")
    t.add_argument("--patch", type=int, default=None, help="training crop edge (voxels of the binned tomogram)")
    t.add_argument("--bin", dest="work_binning", default=None, metavar="auto|N",
                   help="train and pick on the tomogram block-mean binned by N (default auto: the largest "
                        "factor that keeps the smallest class >= 7 voxels across; 1: never bin)")
    t.add_argument("--level", type=int, default=0, metavar="N",
                   help="OME-Zarr scale level to train on (0: full resolution, 1: the next coarser, ...); "
                        "picks are in that level's voxels and voxel size")
    t.add_argument("--rotate", type=float, default=None, metavar="DEGREES",
                   help="turn half the training crops by up to this angle (default 30; 0: off)")
    t.add_argument("--template", default=None, metavar="auto|off|NAME[,NAME]",
                   help="classes scored by a template averaged from their picks, matched at full resolution "
                        "around the network's candidates (default auto: each class under 10 voxels across "
                        "on a binned working grid and under 20 at full resolution)")
    t.add_argument("--tilt-range", type=float, default=None, metavar="DEGREES",
                   help="the tomograms' tilt range about y, for the templates' missing wedge (default 60)")
    t.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=None,
                   help="only some of the particles in the tomograms are picked: blobs the network finds away "
                        "from every pick are not taught as background (off by default: measured, plain "
                        "training did as well or better even with 40 of 113 particles picked)")
    t.add_argument("--snap", action=argparse.BooleanOptionalAction, default=None,
                   help="the networks learn from the picks of classes of 20+ voxels across moved onto their "
                        "particle's centre of density (the picks themselves stay as they are; on by default)")
    c = t.add_argument_group("copick project (train on its runs' picks; needs the copick library)")
    c.add_argument("--copick", default=None, metavar="CONFIG.json",
                   help="train on every run of this copick project that has picks (its particle objects are "
                        "the classes unless --class gives them)")
    c.add_argument("--copick-user", default=None, metavar="USER", help="only this user's picks")
    c.add_argument("--copick-session", default=None, metavar="SESSION", help="only this session's picks")
    c.add_argument("--copick-tomogram", default=None, metavar="TYPE", help="tomogram type (e.g. wbp, denoised)")
    c.add_argument("--copick-voxel-size", type=float, default=None, metavar="A",
                   help="voxel spacing to use where runs have several")
    t.set_defaults(func=cmd_train)


def _print_epoch(r: dict) -> None:
    vl = "-" if r.get("val_loss") is None else f"{r['val_loss']:.3f}"
    vf = "-" if r.get("val_f1") is None else f"{r['val_f1']:.3f}"
    net = f"  network {r['member']}" if r.get("member") else ""
    print(f"epoch {r['epoch']:3d}{net}  train loss {r['train_loss']:.3f}  val loss {vl}  val F{3} {vf}  "
          f"({r.get('seconds', 0):.0f} s)", flush=True)


def cmd_train(a) -> int:
    from .core.model import load_checkpoint, save_checkpoint
    from .core.train import TrainConfig, train_model

    if len(a.tomogram) != len(a.picks):
        raise CLIError(f"give one --picks per --tomogram (got {len(a.tomogram)} tomograms, {len(a.picks)} picks)")
    if not a.tomogram and not a.copick:
        raise CLIError("give the training data: --tomogram T.mrc --picks P.star (repeat per tomogram), "
                       "or --copick CONFIG.json")
    init = load_checkpoint(a.init) if a.init else None
    classes = _classes_arg(a.classes)
    tomos, picks = [], []
    if a.copick:
        classes = _copick_training(a, classes, tomos, picks)
    if classes is None:
        if init is None:
            raise CLIError("give the particle classes: --class NAME=DIAMETER_VOXELS (one per class)")
        classes = init.classes
    for tp, pp in zip(a.tomogram, a.picks):
        t = _load_tomogram(tp, a.level)
        p = _read_picks(pp, voxel_size=t.voxel_size, tomogram=None).with_tomogram(t.name)
        unknown = sorted(set(p.exclude_source("rejected").class_names) - set(classes.names))
        if unknown:
            raise CLIError(f"{pp}: class(es) {', '.join(unknown)} are not among --class "
                           f"{', '.join(classes.names)}; add --class {unknown[0]}=DIAMETER")
        tomos.append(t)
        picks.append(p)
    # the best model so far is saved to --out after every better epoch, so a killed run leaves one
    cfg = TrainConfig(epochs=a.epochs, time_limit=a.time_limit, device=a.device, seed=a.seed,
                      checkpoint_path=str(a.out))
    if a.patch:
        cfg.patch = a.patch
    if a.members is not None:
        if a.members < 1:
            raise CLIError(f"--members {a.members}: give a whole number >= 1")
        cfg.members = a.members
    if a.work_binning is not None:
        b = str(a.work_binning).strip().lower()
        if b != "auto" and not (b.isdigit() and int(b) >= 1):
            raise CLIError(f"--bin {a.work_binning}: give auto or a whole number >= 1")
        cfg.binning = b if b == "auto" else int(b)
    if a.rotate is not None:
        if not 0 <= a.rotate <= 180:
            raise CLIError(f"--rotate {a.rotate}: give an angle from 0 to 180 degrees")
        cfg.rotate = a.rotate
    if a.sparse is not None:
        cfg.sparse = a.sparse
    if a.snap is not None:
        cfg.snap_clicks = a.snap
    if a.template is not None:
        cfg.template = a.template
    if a.tilt_range is not None:
        if not 0 < a.tilt_range <= 90:
            raise CLIError(f"--tilt-range {a.tilt_range}: give the largest tilt in degrees, above 0 and at most 90")
        cfg.template_tilt_range = a.tilt_range
    prog, bar = _bar()

    def on_epoch(r):
        bar.close()
        _print_epoch(r)

    t0 = time.monotonic()
    ckpt = train_model(tomos, picks, classes, cfg, init=init, progress=prog, on_epoch=on_epoch)
    bar.close()
    save_checkpoint(ckpt, a.out)
    if ckpt.n_members > 1:
        best = f", {ckpt.n_members} networks" + (
            "" if ckpt.best_score is None else f", their best val F3 {ckpt.best_score:.3f} on average")
    else:
        best = "" if ckpt.best_score is None else f", best val F3 {ckpt.best_score:.3f} at epoch {ckpt.best_epoch}"
    print(f"saved {a.out} ({time.monotonic() - t0:.0f} s{best})")
    return 0


def _copick_training(a, classes, tomos: list, picks: list):
    """Append each copick run with picks of --copick-user/--copick-session (and its
    tomogram) to ``tomos``/``picks``; the project's particle objects are the classes unless
    --class gives them."""
    import numpy as np

    from .core.batch import copick_tomograms
    from .core.copick_project import open_project, project_classes, read_project_picks

    if not a.copick_user:
        raise CLIError("--copick needs --copick-user: whose picks to train on (a project also holds "
                       "other users' picks, and the picks tools such as cryopicker stored)")
    root = open_project(a.copick)
    for inp in copick_tomograms(a.copick, a.copick_tomogram, a.copick_voxel_size):
        if inp.problem:
            print(f"copick: run {inp.name} left out: {inp.problem}", file=sys.stderr)
            continue
        t = _load_tomogram(str(inp.tomogram), a.level)
        p = read_project_picks(root, t.voxel_size, user_id=a.copick_user, session_id=a.copick_session,
                               runs=[inp.name])
        if classes is None:
            classes = project_classes(root, t.voxel_size)
        p = p.subset(np.isin(p.table["class_name"].to_numpy(), classes.names)) if len(p) else p
        if len(p):
            tomos.append(t)
            picks.append(p.with_tomogram(t.name))
    if not tomos:
        who = " ".join(x for x in (a.copick_user and f"user {a.copick_user}",
                                   a.copick_session and f"session {a.copick_session}") if x)
        raise CLIError(f"{a.copick}: no run has picks{' of ' + who if who else ''} of its particle objects "
                       "next to a tomogram")
    print(f"copick: training on {len(tomos)} run(s): " + ", ".join(f"{t.name} ({len(p)} picks)"
                                                                     for t, p in zip(tomos, picks)))
    return classes

