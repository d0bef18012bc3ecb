"""Batch picking: many tomograms, one task each, on Dask (a local cluster or a scheduler).

The pieces, in the order :func:`run_batch` uses them:

* :func:`expand_tomograms` turns globs, list files and folders into a sorted list of
  tomogram paths; :func:`copick_tomograms` finds each run's tomogram in a copick project.
* :func:`plan_outputs` names one picks file per tomogram (the rule of a several-tomogram
  ``cryopicker predict --out``, for any number of tomograms).
* A tomogram is *finished* when its **record** exists: a small JSON file
  ``<outdir>/.cryopicker/<output name>.json`` written atomically *after* the picks files
  were written (each atomically), holding the written paths, the canonical picks and the
  model and settings that made them. A killed run therefore never leaves a record, and a
  rerun redoes that tomogram. A record whose output files are gone, or that was made with
  another model file or threshold, does not count. ``overwrite=True`` ignores records.
* :func:`predict_one` is the task: it opens the checkpoint and the tomogram itself from
  their paths (nothing big crosses the scheduler), sets torch's thread count, picks,
  writes the picks and the record, and returns a small :class:`TaskResult`. It never
  raises: a failure comes back as a result with ``error`` set, so one bad tomogram does
  not stop the others.
* The merged star (all finished tomograms, skipped ones included, read from their
  records) is written atomically at the end.

Dask is imported only when tasks run on it (several pending tomograms, or a scheduler
or a worker count given).
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_output
from .errors import CryoPickerError

RECORD_DIR = ".cryopicker"
RECORD_VERSION = 1
MERGED_NAME = "all_picks.star"
LIST_SUFFIXES = (".txt", ".lst", ".list")
TOMOGRAM_SUFFIXES = (".mrc", ".rec", ".map", ".st", ".mrcs", ".ali")
GLOB_CHARS = set("*?[")


class BatchError(CryoPickerError):
    """The batch as a whole cannot start (no tomograms, clashing names, no scheduler)."""


# ------------------------------------------------------------------------------ inputs
@dataclass(frozen=True)
class BatchInput:
    """One tomogram to pick: its file, the name its picks carry, a known problem if any."""

    tomogram: Path
    name: str
    problem: str | None = None  # set when it is known to fail before running (copick run)


def _is_glob(spec: str) -> bool:
    return any(c in spec for c in GLOB_CHARS)


def _is_tomogram_file(p: Path) -> bool:
    return p.suffix.lower() in TOMOGRAM_SUFFIXES or p.suffix.lower() == ".zarr"


def _glob(pattern: str) -> list[Path]:
    return sorted(Path(m) for m in glob.glob(os.path.expanduser(pattern), recursive=True)
                  if _is_tomogram_file(Path(m)))


def _read_list(path: Path) -> list[Path]:
    """Tomogram paths (or globs) from a text file, one a line; '#' starts a comment.
    Relative entries are relative to the list file's folder."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise BatchError(f"{path}: is neither a tomogram ({', '.join(TOMOGRAM_SUFFIXES)}) nor a text "
                         "list of tomogram paths") from None
    except OSError as exc:
        raise BatchError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    out: list[Path] = []
    for line in text.splitlines():
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        p = Path(os.path.expanduser(entry))
        if not p.is_absolute():
            p = path.parent / p
        if _is_glob(entry):
            matched = _glob(str(p))
            if not matched:
                raise BatchError(f"{path}: pattern {entry!r} matches no tomogram files")
            out.extend(matched)
        else:
            out.append(p)
    if not out:
        raise BatchError(f"{path}: lists no tomograms")
    return out


def expand_tomograms(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Tomogram paths from globs (``data/**/*.mrc``), list files (one path a line), folders
    (their tomogram files) and plain paths; sorted, without duplicates.

    A plain path that does not exist is kept (its task reports it); a glob, list or folder
    that yields nothing raises :class:`BatchError`.
    """
    found: list[Path] = []
    for spec in specs:
        s = str(spec)
        p = Path(os.path.expanduser(s))
        if p.is_dir() and p.suffix.lower() != ".zarr":
            matched = sorted(q for q in p.iterdir() if _is_tomogram_file(q))
            if not matched:
                raise BatchError(f"{p}: folder holds no tomogram files ({', '.join(TOMOGRAM_SUFFIXES)})")
            found.extend(matched)
        elif p.exists() or not _is_glob(s):
            if p.is_file() and (p.suffix.lower() in LIST_SUFFIXES or not _is_tomogram_file(p)):
                found.extend(_read_list(p))
            else:
                found.append(p)
        else:
            matched = _glob(s)
            if not matched:
                raise BatchError(f"{s}: pattern matches no tomogram files ({', '.join(TOMOGRAM_SUFFIXES)})")
            found.extend(matched)
    unique: dict[str, Path] = {}
    for p in found:
        unique.setdefault(os.path.abspath(p), p)
    return sorted(unique.values(), key=lambda q: (q.name, str(q)))


def inputs_from_paths(paths: Sequence[Path]) -> list[BatchInput]:
    from .formats._common import tomo_name
    from .omezarr import run_name

    out = []
    for p in map(Path, paths):
        name = run_name(p) if p.suffix.lower() == ".zarr" else (tomo_name(p.name) or p.stem)
        out.append(BatchInput(p, name))
    return out


# ------------------------------------------------------------------------------ copick
def copick_tomograms(config: str | os.PathLike, tomo_type: str | None = None,
                     voxel_size: float | None = None) -> list[BatchInput]:
    """One :class:`BatchInput` per run of a local copick project, through the copick
    library (:func:`.copick_project.run_tomograms`): ``tomo_type`` picks the type when a
    run has several, ``voxel_size`` (the model's) the spacing. A run whose tomogram is
    missing or ambiguous gets a ``problem``."""
    from .copick_project import open_project, run_tomograms

    try:
        runs = run_tomograms(open_project(config), tomo_type, voxel_size)
    except CryoPickerError as e:
        raise BatchError(f"{config}: {e}" if str(config) not in str(e) else str(e)) from None
    if not runs:
        raise BatchError(f"{config}: the copick project has no runs")
    return [BatchInput(r.path, r.run) if r.path is not None else
            BatchInput(Path(config).parent, r.run, r.problem.replace("choose a type", "choose one with "
                                                                     "--copick-tomogram TYPE"))
            for r in runs]


# ------------------------------------------------------------------------------ planning
def output_dir(out: Path) -> Path:
    """The folder that holds the per-tomogram outputs (and, by default, the merged star)."""
    return out if out.suffix == "" else out.parent


def plan_outputs(out: str | os.PathLike, names: Sequence[str]) -> list[Path]:
    """One picks file per tomogram name: ``--out DIR`` -> ``DIR/<name>.csv``; ``--out
    P.ext`` -> ``P_<name>.ext`` beside it. Always named by tomogram, however many there
    are, so that a rerun on more (or fewer) tomograms finds the earlier outputs."""
    out = Path(out)
    if out.suffix == "":
        return [out / f"{n}.csv" for n in names]
    return [out.parent / f"{out.stem}_{n}{out.suffix}" for n in names]


def record_path(output: Path) -> Path:
    return output.parent / RECORD_DIR / f"{output.name}.json"


def _file_id(path: Path) -> dict:
    p = Path(path)
    try:
        st = p.stat()
        return {"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    except OSError:
        return {"path": str(p.absolute())}


def settings_for(model: Path, threshold: float | None, options: dict | None = None) -> dict:
    """What a record must have been made with to count as finished (``options``: the
    PredictConfig fields set, e.g. ``{"mask_fiducials": False}``; none set adds no key, so
    records of earlier versions still count)."""
    out = {"model": _file_id(model), "threshold": threshold}
    if options:
        out["options"] = dict(sorted(options.items()))
    return out


def read_record(output: Path, settings: dict | None = None) -> tuple[dict | None, str]:
    """(record, "") when ``output``'s tomogram is finished, else (None, why not)."""
    rp = record_path(output)
    if not rp.exists():
        return None, "no record"
    try:
        rec = json.loads(rp.read_text(encoding="utf-8"))
        outputs = [Path(output).parent / p for p in rec["outputs"]]
        rec["outputs"] = [str(p) for p in outputs]
        rec["picks"]["columns"]  # noqa: B018 - must be there
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"unreadable record {rp}"
    missing = [p for p in outputs if not p.exists()]
    if missing:
        return None, f"{missing[0]} is missing"
    if settings is not None and rec.get("settings") != settings:
        return None, "made with another model file or threshold"
    return rec, ""


def record_picks(rec: dict):
    import pandas as pd

    from .picks import Picks

    p = rec["picks"]
    return Picks(pd.DataFrame(p["data"], columns=p["columns"]), rec.get("voxel_size"))


# ------------------------------------------------------------------------------ the task
@dataclass(frozen=True)
class TaskSpec:
    """Everything one task needs, as small picklable values (paths, not arrays). Paths are
    absolute: a worker on another node has another working directory."""

    tomogram: str
    name: str
    output: str
    model: str
    settings: dict
    device: str = "auto"
    threshold: float | None = None
    threads: int | None = None              # torch threads; None: from the worker
    host_threads: dict = field(default_factory=dict)  # host -> Dask threads on it (all workers)
    label: str = ""                         # the tomogram as the user named it (for messages)
    compile: bool | str = "auto"            # PredictConfig.compile: a worker compiles from its 2nd tomogram
    options: dict = field(default_factory=dict)  # more PredictConfig fields (mask_fiducials, tta)
    level: int = 0                          # OME-Zarr scale level to pick (0: full resolution)


@dataclass
class TaskResult:
    tomogram: str
    name: str
    status: str                      # "done" | "skipped" | "failed"
    outputs: list[str] = field(default_factory=list)
    n_picks: int = 0
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    threads: int | None = None
    worker: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def torch_threads(requested: int | None, host_threads: dict | None = None) -> tuple[int | None, str | None]:
    """Torch threads for this task and the Dask worker's address (None outside a worker).

    Given ``requested``, that. In a Dask worker: the host's CPUs (affinity) shared among all
    Dask threads on the host (``host_threads``, else this worker's own threads). Outside a
    worker: None (leave torch's default).
    """
    try:
        from distributed import get_worker

        w = get_worker()
    except (ImportError, ValueError):
        return requested, None
    if requested:
        return int(requested), w.address
    host = w.address.rsplit(":", 1)[0].split("://", 1)[-1]
    share = (host_threads or {}).get(host) or w.state.nthreads
    return max(1, _cpu_count() // max(1, int(share))), w.address


@functools.lru_cache(maxsize=2)
def _checkpoint(path: str, mtime_ns: int, size: int):
    from .model import load_checkpoint

    return load_checkpoint(path)


def _load_checkpoint(path: str):
    st = os.stat(path) if os.path.exists(path) else None
    if st is None:
        from .model import load_checkpoint

        return load_checkpoint(path)  # raises the model's own "no such file" error
    return _checkpoint(path, st.st_mtime_ns, st.st_size)


def failure_message(tomogram: str, exc: BaseException | str, label: str = "") -> str:
    """The problem without a leading '<tomogram>: ' (the report adds the file name)."""
    msg = exc if isinstance(exc, str) else (str(exc) or type(exc).__name__)
    if not isinstance(exc, (str, CryoPickerError, OSError)):
        msg = f"{type(exc).__name__}: {msg}"
    for prefix in {f"{tomogram}: ", f"{os.path.abspath(tomogram)}: ", f"{label or tomogram}: "}:
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg.strip().splitlines()[0] if msg.strip() else type(exc).__name__


def predict_one(spec: TaskSpec) -> TaskResult:
    """Pick one tomogram and write its picks file(s) and record. Never raises."""
    t0 = time.monotonic()
    label = spec.label or spec.tomogram
    result = TaskResult(label, spec.name, "failed")
    try:
        threads, result.worker = torch_threads(spec.threads, spec.host_threads)
        import torch

        from .formats import write_picks
        from .memory import keep_freed_memory
        from .predict import PredictConfig, predict_picks
        from .tomogram import open_tomogram

        keep_freed_memory()  # a worker process picks tomogram after tomogram
        if threads:
            torch.set_num_threads(threads)
            result.threads = threads
        ckpt = _load_checkpoint(spec.model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tomo = open_tomogram(spec.tomogram, level=spec.level)
        result.warnings = [str(w.message) for w in caught]
        cfg = PredictConfig(device=spec.device, compile=spec.compile, **spec.options)
        if spec.threshold is not None:
            cfg.nms = {"default": {"t_lm": spec.threshold}}
        picks = predict_picks(tomo, ckpt, cfg).picks.with_tomogram(spec.name)
        out = Path(spec.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        written = write_picks(picks, out, voxel_size=tomo.voxel_size, tomogram_shape=tomo.shape,
                              tomogram=spec.name)
        result.outputs = [str(w) for w in written]
        result.n_picks = len(picks)
        result.counts = picks.counts()
        result.seconds = time.monotonic() - t0
        t = picks.table
        rec = {
            "cryopicker_batch": RECORD_VERSION, "tomogram": spec.tomogram, "name": spec.name,
            "settings": spec.settings, "voxel_size": tomo.voxel_size,
            # relative to the output folder, so the folder can be reached from anywhere
            "outputs": [os.path.relpath(w, out.parent) for w in written],
            "shape": list(tomo.shape), "n_picks": result.n_picks, "counts": result.counts,
            "seconds": round(result.seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "picks": {"columns": [str(c) for c in t.columns],
                      "data": t.astype(object).where(t.notna(), None).values.tolist()},
        }
        rp = record_path(out)
        with atomic_output(rp) as tmp:
            tmp.write_text(json.dumps(rec) + "\n", encoding="utf-8")
        result.status = "done"
    except Exception as exc:  # one tomogram's failure is reported, never raised
        result.error = failure_message(spec.tomogram, exc, label)
    result.seconds = time.monotonic() - t0
    return result


# ------------------------------------------------------------------------------ running
@dataclass
class BatchReport:
    results: list[TaskResult]
    merged: Path | None = None
    merged_picks: int = 0
    merged_tomograms: int = 0
    merge_error: str | None = None
    cluster: str = ""

    def with_status(self, status: str) -> list[TaskResult]:
        return [r for r in self.results if r.status == status]

    @property
    def failed(self) -> list[TaskResult]:
        return self.with_status("failed")

    @property
    def ok(self) -> bool:
        return not self.failed and self.merge_error is None


def default_workers(n_tasks: int, threads: int | None, device: str = "cpu") -> tuple[int, int]:
    """(local Dask workers, torch threads per worker) for ``n_tasks`` tomograms.

    One worker per ``threads`` CPUs (default 4 threads a worker), never more workers than
    tasks; a CUDA device gets one worker (they would share the GPU).
    """
    cpus = _cpu_count()
    if device != "cpu":
        try:
            import torch

            if device.startswith("cuda") or torch.cuda.is_available():
                return 1, threads or cpus
        except ImportError:  # pragma: no cover
            pass
    per = threads or min(4, cpus)
    workers = max(1, min(n_tasks, cpus // per))
    return workers, threads or max(1, cpus // workers)


def _host_threads(client) -> dict:
    hosts: dict[str, int] = {}
    for w in client.scheduler_info().get("workers", {}).values():
        host = str(w.get("host", ""))
        hosts[host] = hosts.get(host, 0) + int(w.get("nthreads", 1) or 1)
    return hosts


def _run_on_dask(specs: list[TaskSpec], scheduler: str | None, workers: int | None,
                 threads: int | None, device: str, log: Callable[[str], None]) -> Iterator[TaskResult]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise BatchError(f"batch picking needs dask.distributed ({exc}); pip install 'napari-cryopicker[cluster]'") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as exc:
            raise BatchError(f"{scheduler}: cannot connect to the Dask scheduler ({exc})") from None
        hosts = _host_threads(client)
        n_workers = len(client.scheduler_info().get("workers", {}))
        where = f"Dask scheduler {scheduler} ({n_workers} worker(s) now)"
    else:
        n = workers or default_workers(len(specs), threads, device)[0]
        threads = threads or max(1, _cpu_count() // n)
        env = {v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        # memory_limit=0: a memory-mapped tomogram counts in a worker's RSS, and Dask would
        # pause or kill a worker reading a big one; the OS reclaims those pages itself
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, memory_limit=0,
                               dashboard_address=":0", silence_logs=logging.ERROR, env=env)
        client = Client(cluster)
        hosts = {}
        where = f"a local Dask cluster of {n} worker(s) x {threads} thread(s)"
        if importlib.util.find_spec("bokeh") is not None:
            where += f", dashboard {client.dashboard_link}"
    specs = [TaskSpec(**{**s.__dict__, "threads": threads, "host_threads": hosts}) for s in specs]
    log(f"picking {len(specs)} tomogram(s) on {where}")
    tag = uuid.uuid4().hex[:8]
    try:
        keys = [f"cryopicker-predict-{s.name}-{tag}" for s in specs]
        futures = client.map(predict_one, specs, key=keys, pure=False)
        by_key = {f.key: s for f, s in zip(futures, specs)}
        for fut in as_completed(futures):
            spec = by_key[fut.key]
            try:
                yield fut.result()
            except Exception as exc:  # the worker died (killed, out of memory) or the task was lost
                yield TaskResult(spec.label or spec.tomogram, spec.name, "failed",
                                 error=f"the Dask task failed ({type(exc).__name__}: {exc})")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def write_merged(results: Sequence[TaskResult], outputs: dict[str, Path], merged: Path) -> tuple[int, int]:
    """Write every finished tomogram's picks (from the records) into ``merged``, atomically.
    Returns (picks, tomograms)."""
    from .formats import write_picks
    from .picks import Picks

    parts, shapes = [], {}
    for r in results:
        if r.status == "failed":
            continue
        rec, _ = read_record(outputs[r.tomogram])
        if rec is None:
            continue
        parts.append(record_picks(rec))
        shapes[rec["name"]] = tuple(rec["shape"])
    if not parts:
        return 0, 0
    allp = Picks.concat(parts)
    merged.parent.mkdir(parents=True, exist_ok=True)
    write_picks(allp, merged, tomogram_shape=shapes)
    return len(allp), len(parts)


def run_batch(
    inputs: Sequence[BatchInput],
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    merged: str | os.PathLike | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    device: str = "auto",
    threshold: float | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    compile: bool | str = "auto",
    options: dict | None = None,
    level: int = 0,
) -> BatchReport:
    """Pick every input tomogram (skipping finished ones unless ``overwrite``) and write
    the merged star. Failures are in the report, not raised; :class:`BatchError` only
    when the batch cannot start."""
    if not inputs:
        raise BatchError("no tomograms to pick")
    if workers is not None and workers < 1:
        raise BatchError(f"--workers must be at least 1, got {workers}")
    if threads_per_worker is not None and threads_per_worker < 1:
        raise BatchError(f"--threads-per-worker must be at least 1, got {threads_per_worker}")
    seen: dict[str, BatchInput] = {}
    for it in inputs:
        if it.name in seen:
            raise BatchError(f"{it.tomogram}: has the same name {it.name!r} as {seen[it.name].tomogram}; "
                             "outputs and the merged star need one name per tomogram (rename or link one)")
        seen[it.name] = it
    out = Path(out)
    outs = plan_outputs(out, [it.name for it in inputs])
    merged = Path(merged) if merged is not None else output_dir(out) / MERGED_NAME
    if merged.resolve() in {o.resolve() for o in outs}:
        raise BatchError(f"{merged}: the merged file would overwrite a per-tomogram output; give --merged")
    model = Path(model)
    options = dict(options or {})
    unknown = sorted(set(options) - {"mask_fiducials", "tta", "tile", "batch_size"})
    if unknown:
        raise BatchError(f"unknown picking option(s) {', '.join(unknown)}")
    settings = settings_for(model, threshold, options)
    results: list[TaskResult] = []
    pending: list[TaskSpec] = []
    by_tomo: dict[str, Path] = {}
    for it, op in zip(inputs, outs):
        key = str(it.tomogram)
        by_tomo[key] = op
        if it.problem:
            results.append(TaskResult(key, it.name, "failed", error=it.problem))
            continue
        if not overwrite:
            rec, why = read_record(op, settings)
            if rec is not None:
                results.append(TaskResult(key, it.name, "skipped", outputs=rec["outputs"],
                                          n_picks=int(rec.get("n_picks", 0)), counts=rec.get("counts", {})))
                continue
            if why not in ("no record",):
                log(f"{key}: redoing ({why})")
        pending.append(TaskSpec(os.path.abspath(it.tomogram), it.name, os.path.abspath(op),
                                os.path.abspath(model), settings, device, threshold, threads_per_worker,
                                label=key, compile=compile, options=options, level=int(level)))
    for r in results:
        if r.status == "skipped":
            log(f"{r.tomogram}: skipped, finished earlier ({r.n_picks} picks in "
                f"{', '.join(r.outputs)}; --overwrite redoes it)")
    report = BatchReport(results)
    if pending:
        use_dask = len(pending) > 1 or scheduler is not None or workers is not None
        if use_dask:
            stream = _run_on_dask(pending, scheduler, workers, threads_per_worker, device, log)
        else:
            log("picking 1 tomogram in this process")
            stream = (predict_one(s) for s in pending)
        for r in stream:
            results.append(r)
            if r.status == "done":
                counts = ", ".join(f"{k} {v}" for k, v in r.counts.items()) or "none"
                for w in r.warnings:
                    log(f"{r.tomogram}: warning: {w}")
                log(f"{r.tomogram}: {r.n_picks} picks ({counts}) in {r.seconds:.1f} s -> "
                    + ", ".join(r.outputs))
            else:
                log(f"{r.tomogram}: FAILED: {r.error}")
    order = {str(it.tomogram): i for i, it in enumerate(inputs)}
    results.sort(key=lambda r: order.get(r.tomogram, len(order)))
    try:
        report.merged_picks, report.merged_tomograms = write_merged(results, by_tomo, merged)
        report.merged = merged if report.merged_tomograms else None
    except (CryoPickerError, ValueError, OSError) as exc:
        report.merge_error = failure_message(str(merged), exc)
    return report


__all__ = [
    "BatchError", "BatchInput", "BatchReport", "TaskResult", "TaskSpec", "copick_tomograms",
    "expand_tomograms", "inputs_from_paths", "plan_outputs", "predict_one", "read_record", "run_batch",
]
