"""`cryopicker`: the command line (thin argument parsing over :mod:`napari_cryopicker.core`).

Every command exits 0 on success and 2 with a one-line ``cryopicker: error: ...`` message
(naming the file and the problem) on bad input. A batch ``predict`` exits 1 when some
tomograms failed (one such line each on stderr) while the others were picked.

``train`` is in :mod:`._cli_train`, ``predict`` (and its batch) in :mod:`._cli_predict`,
what the commands share in :mod:`._cli_common`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ._cli_common import (  # what the subcommands share (re-exported: __all__)
    EXIT_BAD_INPUT,
    EXIT_SOME_FAILED,
    CLIError,
    _bar,
    _classes_arg,
    _load_tomogram,
    _read_picks,
    _warnings_as_lines,
    one_line,
)
from ._cli_predict import add_predict_parser, cmd_predict
from ._cli_train import add_train_parser, cmd_train
from .core.errors import CryoPickerError

__all__ = ["EXIT_BAD_INPUT", "EXIT_SOME_FAILED", "CLIError", "build_parser", "cmd_predict", "cmd_train", "main",
           "one_line"]


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

    add_train_parser(sub)
    add_predict_parser(sub)

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
