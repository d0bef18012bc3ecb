"""`cryopicker predict`: its options, and picking one or a few tomograms here, or a batch
(globs, list files, folders, a copick project) as tasks on Dask, storing the picks of a
copick batch back in the project (see :mod:`.cli`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ._cli_common import EXIT_SOME_FAILED, CLIError, _bar, _load_tomogram

_COMPILE = {"auto": "auto", "on": True, "off": False}


def add_predict_parser(sub) -> None:
    """Add ``predict`` to the subcommands ``sub``."""
    r = sub.add_parser("predict", help="pick particles with a trained model")
    r.add_argument("--model", required=True)
    r.add_argument("--tomogram", action="append", default=[],
                   help="a tomogram (.mrc); repeat, or give a glob or a list file, for a batch")
    r.add_argument("--out", required=True, help="picks file (.csv .star .tbl .json); a folder for several")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--threshold", type=float, default=None,
                   help="minimum pick score (overrides the model's; not for a class scored by its template, "
                        "whose score is a cross-correlation)")
    r.add_argument("--no-template", dest="template", action="store_false",
                   help="score every class by the network alone, also those the model holds a click-averaged "
                        "template for")
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


def _predict_options(a) -> dict:
    """PredictConfig fields that `predict` options set (only those not at their default)."""
    out = {}
    if a.keep_fiducials:
        out["mask_fiducials"] = False
    if a.tta != 1:
        out["tta"] = a.tta
    if not a.template:
        out["template"] = False
    return out



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
