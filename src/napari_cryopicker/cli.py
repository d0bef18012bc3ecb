"""`cryopicker`: the command line (thin argument parsing over :mod:`napari_cryopicker.core`).

Every command exits 0 on success and 2 with a one-line ``cryopicker: error: ...`` message
(naming the file and the problem) on bad input. A batch ``predict`` exits 1 when some
tomograms failed (one such line each on stderr) while the others were picked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .core.errors import CryoPickerError, CryoPickerWarning

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1


class CLIError(CryoPickerError):
    pass


# ------------------------------------------------------------------------------ helpers
def _bar():
    from .core.progress import Progress, TerminalBar

    bar = TerminalBar()
    return Progress(callback=bar), bar


def _load_tomogram(path, level: int = 0):
    from .core.tomogram import open_tomogram

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tomo = open_tomogram(path, level=level)
    for w in caught:
        print(f"cryopicker: warning: {one_line(w.message)}", file=sys.stderr)
    return tomo


def one_line(text: str) -> str:
    """A message as one plain line: no terminal colour codes, whitespace runs collapsed."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(text)).split())


@contextlib.contextmanager
def _warnings_as_lines():
    """Show the core's warnings (what it rescaled, ignored or assumed) as ``cryopicker: warning:`` lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CryoPickerWarning)
        previous = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CryoPickerWarning):
                print(f"cryopicker: warning: {one_line(message)}", file=sys.stderr, flush=True)
            else:
                previous(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _read_picks(path, **kw):
    from .core.formats import read_picks

    return read_picks(path, **kw)


def _classes_arg(specs, fallback_picks=None, sidecar: Path | None = None):
    from .core.classes import ClassTable

    if specs:
        return ClassTable.parse(specs)
    if sidecar is not None and sidecar.exists():
        return ClassTable.from_dict(json.loads(sidecar.read_text()))
    return None


# ------------------------------------------------------------------------------ commands
def cmd_simulate(a) -> int:
    from .core.simulate import write_simulation

    prog, bar = _bar()
    if a.preset == "simple":
        from .core.simulate import simulate_tomogram

        sim = simulate_tomogram(shape=tuple(a.shape or (96, 256, 256)), seed=a.seed,
                                snr=0.5 if a.snr is None else a.snr, voxel_size=a.voxel_size, name=a.name,
                                progress=prog)
    else:
        from .core.realistic import REALISTIC_SHAPE, simulate_realistic

        sim = simulate_realistic(shape=tuple(a.shape or REALISTIC_SHAPE), seed=a.seed, dose=a.dose, snr=a.snr,
                                 defocus_um=a.defocus, voxel_size=a.voxel_size, name=a.name, progress=prog)
    bar.close()
    tomo, picks = write_simulation(a.outdir, sim)
    counts = ", ".join(f"{k} {v}" for k, v in sim.picks.counts().items())
    print(f"wrote {tomo} ({' x '.join(map(str, sim.data.shape))} voxels, {sim.voxel_size:g} A) and {picks} "
          f"({len(sim.picks)} particles: {counts})")
    return 0


def cmd_evaluate(a) -> int:
    from .core.metrics import czii_score, evaluate, format_report

    truth = _read_picks(a.truth)
    picks = _read_picks(a.picks, voxel_size=truth.voxel_size)
    classes = _classes_arg(a.classes, sidecar=Path(a.truth).with_name("classes.json"))
    if classes is None:
        if a.max_distance is None:
            raise CLIError(
                f"{a.truth}: no class diameters known; give --class NAME=DIAMETER_VOXELS for each class "
                "(or --max-distance)"
            )
    names = set(truth.class_names) | set(picks.class_names)
    if classes is not None:
        missing = sorted(n for n in names if n not in classes)
        if missing:
            raise CLIError(
                f"{a.picks}: class(es) {', '.join(missing)} have no diameter; add --class NAME=DIAMETER_VOXELS"
            )
    rep = evaluate(picks, truth, classes, distance_fraction=a.distance_fraction,
                   max_distance=a.max_distance, beta=a.fbeta)
    if a.czii:
        rep.czii = czii_score(picks, truth, voxel_size=truth.voxel_size or a.voxel_size)
    print(format_report(rep))
    return 0


def cmd_convert(a) -> int:
    from .core.formats import read_picks, write_picks

    shape = None
    vs = a.voxel_size
    if a.tomogram:
        t = _load_tomogram(a.tomogram)
        shape = t.shape
        vs = vs or t.voxel_size
    picks = read_picks(a.input, format=a.from_format, voxel_size=vs, binning=a.in_binning,
                       tomogram=a.tomogram_name)
    out = write_picks(picks, a.output, format=a.to_format, voxel_size=vs, binning=a.binning,
                      tomogram_shape=shape, tomogram=a.tomogram_name or (Path(a.tomogram).stem if a.tomogram else None))
    print(f"converted {len(picks)} picks: " + ", ".join(str(p) for p in out))
    return 0


def _print_epoch(r: dict) -> None:
    vl = "-" if r.get("val_loss") is None else f"{r['val_loss']:.3f}"
    vf = "-" if r.get("val_f1") is None else f"{r['val_f1']:.3f}"
    print(f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.3f}  val loss {vl}  val F{3} {vf}  "
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
    if a.work_binning is not None:
        b = str(a.work_binning).strip().lower()
        if b != "auto" and not (b.isdigit() and int(b) >= 1):
            raise CLIError(f"--bin {a.work_binning}: give auto or a whole number >= 1")
        cfg.binning = b if b == "auto" else int(b)
    if a.sparse is not None:
        cfg.sparse = a.sparse
    prog, bar = _bar()

    def on_epoch(r):
        bar.close()
        _print_epoch(r)

    t0 = time.monotonic()
    ckpt = train_model(tomos, picks, classes, cfg, init=init, progress=prog, on_epoch=on_epoch)
    bar.close()
    save_checkpoint(ckpt, a.out)
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


def _outputs_for(out: Path, tomos: list[Path]) -> list[Path]:
    if len(tomos) == 1:
        return [out]
    base = out if out.suffix == "" else out.parent
    ext = out.suffix or ".csv"
    stem = "" if out.suffix == "" else out.stem + "_"
    if out.suffix == "":
        base.mkdir(parents=True, exist_ok=True)
    return [base / f"{stem}{Path(t).stem}{ext}" for t in tomos]


def _batch_requested(a) -> bool:
    """Batch mode (Dask, skip finished, merged star) unless it is one plain --tomogram file."""
    if a.tomograms or a.copick or a.scheduler or a.workers or a.threads_per_worker or a.merged:
        return True
    if len(a.tomogram) != 1:
        return True
    from .core.batch_inputs import LIST_SUFFIXES, _is_glob

    spec = a.tomogram[0]
    p = Path(spec)
    if p.exists():
        return (p.is_dir() and p.suffix.lower() != ".zarr") or p.suffix.lower() in LIST_SUFFIXES
    return _is_glob(spec)


def _predict_batch(a) -> int:
    from .core.batch import copick_tomograms, expand_tomograms, inputs_from_paths, run_batch
    from .core.model import load_checkpoint

    ckpt = load_checkpoint(a.model)  # a bad model fails once, here, not once per tomogram
    inputs = []
    if a.tomogram or a.tomograms:
        inputs = inputs_from_paths(expand_tomograms([*a.tomogram, *a.tomograms]))
    if a.copick:
        inputs += copick_tomograms(a.copick, a.copick_tomogram, ckpt.voxel_size)
    report = run_batch(
        inputs, a.model, a.out, merged=a.merged, scheduler=a.scheduler, workers=a.workers,
        threads_per_worker=a.threads_per_worker, device=a.device, threshold=a.threshold,
        overwrite=a.overwrite, log=lambda line: print(line, flush=True), compile=_COMPILE[a.compile],
        options=_predict_options(a), level=a.level,
    )
    n = {s: len(report.with_status(s)) for s in ("done", "skipped", "failed")}
    if a.copick and a.copick_user:
        _copick_write_back(a, report, ckpt)
    if report.merged is not None:
        print(f"merged {report.merged_picks} picks from {report.merged_tomograms} tomogram(s) -> {report.merged}")
    print(f"{n['done']} picked, {n['skipped']} skipped (finished earlier), {n['failed']} failed")
    for r in report.failed:
        print(f"cryopicker: error: {r.tomogram}: {r.error}", file=sys.stderr)
    if report.merge_error:
        merged = a.merged or "merged picks"
        print(f"cryopicker: error: {merged}: {report.merge_error}", file=sys.stderr)
    return 0 if report.ok else EXIT_SOME_FAILED


def _copick_write_back(a, report, ckpt) -> None:
    """Store the picks of every finished copick run in the project (--copick-user and
    --copick-session), where copick and napari-copick read them."""
    from .core.copick_project import open_project, write_project_picks
    from .core.formats import read_picks
    from .core.picks import Picks

    from .core.tomogram import open_tomogram

    parts = []
    for r in report.results:
        if r.status in ("done", "skipped") and r.outputs:
            vs = open_tomogram(r.tomogram, level=a.level).voxel_size  # the run's own voxels (the model's within 5 %)
            parts.append(read_picks(r.outputs[0], voxel_size=vs).with_tomogram(r.name).rescaled(ckpt.voxel_size))
    picks = Picks.concat(parts)
    picks.voxel_size = ckpt.voxel_size
    done = write_project_picks(open_project(a.copick), picks, user_id=a.copick_user, session_id=a.copick_session)
    print(f"copick: stored {len(picks)} picks as {a.copick_user}/{a.copick_session} in {len(done)} file(s)")


_COMPILE = {"auto": "auto", "on": True, "off": False}


def cmd_predict(a) -> int:
    if not (a.tomogram or a.tomograms or a.copick):
        raise CLIError("give the tomograms: --tomogram T.mrc, --tomograms 'GLOB' or LIST.txt, "
                       "or --copick CONFIG.json")
    if (a.copick_user or a.copick_session) and not a.copick:
        raise CLIError("--copick-user and --copick-session store picks in a copick project: give --copick CONFIG.json")
    if bool(a.copick_user) != bool(a.copick_session):
        raise CLIError("give both --copick-user and --copick-session (copick files are per user and session)")
    if _batch_requested(a):
        return _predict_batch(a)
    from .core.formats import write_picks
    from .core.memory import keep_freed_memory
    from .core.model import load_checkpoint
    from .core.predict import PredictConfig, predict_picks

    keep_freed_memory()  # tiles reuse freed activations instead of page-faulting fresh memory

    ckpt = load_checkpoint(a.model)
    tomos = [Path(t) for t in a.tomogram]
    outs = _outputs_for(Path(a.out), tomos)
    cfg = PredictConfig(device=a.device, compile=_COMPILE[a.compile], **_predict_options(a))
    if a.tile:
        cfg.tile = a.tile
    if a.batch_size:
        cfg.batch_size = a.batch_size
    if a.threshold is not None:
        cfg.nms = {"default": {"t_lm": a.threshold}}
    for tp, op in zip(tomos, outs):
        t = _load_tomogram(tp, a.level)
        prog, bar = _bar()
        t0 = time.monotonic()
        res = predict_picks(t, ckpt, cfg, progress=prog)
        bar.close()
        written = write_picks(res.picks, op, voxel_size=t.voxel_size, tomogram_shape=t.shape, tomogram=t.name)
        counts = ", ".join(f"{k} {v}" for k, v in res.picks.counts().items()) or "none"
        print(f"{tp}: {len(res.picks)} picks ({counts}) in {time.monotonic() - t0:.1f} s -> "
              + ", ".join(str(w) for w in written))
    return 0


def cmd_demo(a) -> int:
    from .core.memory import keep_freed_memory
    from .demo import run_demo

    keep_freed_memory()
    return run_demo(out=Path(a.out), time_limit=a.time_limit, seed=a.seed, per_class=a.per_class,
                    device=a.device, preset=a.preset, shape=tuple(a.shape) if a.shape else None)


def cmd_gui(a) -> int:
    from ._napari.launch import main as gui_main

    return gui_main(a.rest)


# ------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cryopicker",
        description="Deep-learning particle picking for cryo-electron tomography (after DeepETPicker).",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("simulate", help="write a simulated tomogram and its true picks")
    s.add_argument("outdir")
    s.add_argument("--preset", choices=("realistic", "simple"), default="realistic",
                   help="realistic: a crowded cell slab of 13 classes imaged as a tilt series (unflipped CTF, "
                        "dose, weighted back-projection); simple: the quick phantom of the tests")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="default 200 512 512 (realistic) or 96 256 256 (simple)")
    s.add_argument("--dose", type=float, default=100.0, help="realistic: e/A^2 over the tilt series (default 100)")
    s.add_argument("--defocus", type=float, default=3.0, help="realistic: underfocus in um (default 3)")
    s.add_argument("--snr", type=float, default=None,
                   help="simple: particle SNR (default 0.5); realistic: per-view SNR instead of --dose")
    s.add_argument("--voxel-size", type=float, default=10.0, help="Angstrom per voxel (default 10)")
    s.add_argument("--name", default="tomogram")
    s.set_defaults(func=cmd_simulate)

    e = sub.add_parser("evaluate", help="score picks against a reference (precision, recall, F1)")
    e.add_argument("--picks", required=True)
    e.add_argument("--truth", required=True)
    e.add_argument("--class", dest="classes", action="append", default=[], metavar="NAME=DIAMETER_VOXELS",
                   help="class diameter (voxels); default: classes.json beside the truth file")
    e.add_argument("--fbeta", type=float, default=1.0, help="also report F-beta with this beta")
    e.add_argument("--distance-fraction", type=float, default=1.0,
                   help="match within this fraction of the class radius (default 1)")
    e.add_argument("--max-distance", type=float, default=None, help="match within this many voxels")
    e.add_argument("--czii", action="store_true", help="also print the CZII weighted F-beta(4) score")
    e.add_argument("--voxel-size", type=float, default=None)
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("convert", help="convert a picks file between formats")
    c.add_argument("input")
    c.add_argument("output")
    c.add_argument("--voxel-size", type=float, default=None, help="voxel size (A) of the tomogram")
    c.add_argument("--tomogram", default=None, help="the tomogram (.mrc) the picks belong to")
    c.add_argument("--binning", type=float, default=1.0, help="output pixels per tomogram voxel (RELION 4/5)")
    c.add_argument("--in-binning", type=float, default=1.0, help="input pixels per tomogram voxel")
    c.add_argument("--from", dest="from_format", default=None)
    c.add_argument("--to", dest="to_format", default=None)
    c.add_argument("--tomogram-name", default=None)
    c.set_defaults(func=cmd_convert)

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
    t.add_argument("--patch", type=int, default=None, help="training crop edge (voxels of the binned tomogram)")
    t.add_argument("--bin", dest="work_binning", default=None, metavar="auto|N",
                   help="train and pick on the tomogram block-mean binned by N (default auto: the largest "
                        "factor that keeps the smallest class >= 7 voxels across; 1: never bin)")
    t.add_argument("--level", type=int, default=0, metavar="N",
                   help="OME-Zarr scale level to train on (0: full resolution, 1: the next coarser, ...); "
                        "picks are in that level's voxels and voxel size")
    t.add_argument("--sparse", action=argparse.BooleanOptionalAction, default=None,
                   help="only some of the particles in the tomograms are picked: blobs the network finds away "
                        "from every pick are not taught as background (off by default: measured, plain "
                        "training did as well or better even with 40 of 113 particles picked)")
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

    r = sub.add_parser("predict", help="pick particles with a trained model")
    r.add_argument("--model", required=True)
    r.add_argument("--tomogram", action="append", default=[],
                   help="a tomogram (.mrc); repeat, or give a glob or a list file, for a batch")
    r.add_argument("--out", required=True, help="picks file (.csv .star .tbl .json); a folder for several")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--threshold", type=float, default=None, help="minimum pick score (overrides the model's)")
    r.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8],
                   help="average over this many flips of each tile (test-time augmentation; 4: ~4x the time)")
    r.add_argument("--level", type=int, default=0, metavar="N",
                   help="OME-Zarr scale level to pick (0: full resolution, 1: the next coarser, ...); "
                        "picks are in that level's voxels and voxel size")
    r.add_argument("--keep-fiducials", action="store_true",
                   help="keep picks on gold fiducials (by default the beads are found and picks on them dropped)")
    r.add_argument("--tile", type=int, default=None, metavar="N",
                   help="inference tile edge in voxels (default 160; smaller needs less memory)")
    r.add_argument("--batch-size", type=int, default=None, metavar="N", help="tiles per forward pass (default 1)")
    r.add_argument("--compile", default="auto", choices=sorted(_COMPILE),
                   help="compile the network for this CPU (AOTInductor): ~1.3x faster per tile; building takes "
                        "about a minute once per model and tile shape and is kept in ~/.cache/napari-cryopicker "
                        "(needs a C++ compiler; falls back if it fails). auto (default): use a built one for 16+ "
                        "tiles, build one for tomograms of 96+ tiles or from the second tomogram of a run or "
                        "batch worker")
    b = r.add_argument_group("batch (several tomograms as tasks on Dask; docs/cluster.md)")
    b.add_argument("--tomograms", action="append", default=[], metavar="GLOB_OR_LISTFILE",
                   help="tomograms by glob ('data/**/*.mrc', quoted), list file (one path a line) or folder")
    b.add_argument("--copick", default=None, metavar="CONFIG.json",
                   help="pick every run of a local copick project (OME-Zarr or MRC tomograms)")
    b.add_argument("--copick-tomogram", default=None, metavar="TYPE",
                   help="copick tomogram type when a run has several (e.g. wbp, denoised)")
    b.add_argument("--copick-user", default=None, metavar="USER",
                   help="also store the picks in the copick project as this user (with --copick-session), "
                        "where copick and napari-copick read them")
    b.add_argument("--copick-session", default=None, metavar="SESSION", help="copick session id of the stored picks")
    b.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on this dask.distributed scheduler (e.g. tcp://host:8786) instead of a local cluster")
    b.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local cluster worker processes (default: one per 4 CPUs, at most one per tomogram)")
    b.add_argument("--threads-per-worker", type=int, default=None, metavar="N",
                   help="torch threads each tomogram task uses (default: the CPUs shared among the workers)")
    b.add_argument("--merged", default=None, metavar="PATH.star",
                   help="all picks in one file (default: <output folder>/all_picks.star)")
    b.add_argument("--overwrite", action="store_true",
                   help="redo tomograms that were finished earlier (default: skip them)")
    r.set_defaults(func=cmd_predict)

    d = sub.add_parser("demo", help="simulate, train from ~40 picks per class, pick, evaluate, export")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--time-limit", type=float, default=720.0, help="training budget in seconds (default 720)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--per-class", type=int, default=40)
    d.add_argument("--preset", choices=("realistic", "simple"), default="realistic",
                   help="realistic (default): 4 of 13 classes clicked in a crowded tilt-series tomogram; "
                        "simple: the quick phantom")
    d.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                   help="default 200 512 512 (realistic) or 96 256 256 (simple)")
    d.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    d.set_defaults(func=cmd_demo)

    g = sub.add_parser("gui", help="open napari with the cryopicker widgets (see --help there)",
                       add_help=False)
    g.add_argument("rest", nargs=argparse.REMAINDER)
    g.set_defaults(func=cmd_gui)
    return p


def _predict_options(a) -> dict:
    """PredictConfig fields that `predict` options set (only those not at their default)."""
    out = {}
    if a.keep_fiducials:
        out["mask_fiducials"] = False
    if a.tta != 1:
        out["tta"] = a.tta
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _warnings_as_lines():
            return int(args.func(args) or 0)
    except (CryoPickerError, ValueError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, OSError) and getattr(e, "filename", None) and str(e.filename) not in msg:
            msg = f"{e.filename}: {msg}"
        print(f"cryopicker: error: {one_line(msg)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("cryopicker: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
