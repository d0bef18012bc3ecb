"""Batch picking: many tomograms, one task each, on Dask (a local cluster or a scheduler).

The pieces, in the order :func:`run_batch` uses them:

* :func:`expand_tomograms` (in :mod:`.batch_inputs`, with the planning and the records) turns globs, list files and folders into a sorted list of
  tomogram paths; :func:`copick_tomograms` finds each run's tomogram in a copick project.
* :func:`plan_outputs` names one picks file per tomogram (the rule of a several-tomogram
  ``cryopicker predict --out``, for any number of tomograms).
* A tomogram is *finished* when its **record** exists: a small JSON file
  ``<outdir>/.cryopicker/<output name>.json`` written atomically *after* the picks files
  were written (each atomically), holding the written paths, the canonical picks and the
  model and settings that made them. A killed run therefore never leaves a record, and a
  rerun redoes that tomogram. A record whose output files are gone, or that was made with
  another model file or threshold, does not count. ``overwrite=True`` ignores records.
* :func:`predict_one` (in :mod:`.batch_task`) is the task: it opens the checkpoint and the tomogram itself from
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

import importlib.util
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CryoPickerError

from .batch_inputs import (  # the inputs and outputs (the public ones re-exported: __all__)
    MERGED_NAME,
    BatchError,
    BatchInput,
    copick_tomograms,
    expand_tomograms,
    inputs_from_paths,
    output_dir,
    plan_outputs,
    read_record,
    record_path,
    record_picks,
    settings_for,
)


from .batch_task import (  # the task a worker runs (re-exported: __all__)
    TaskResult,
    TaskSpec,
    _cpu_count,
    failure_message,
    predict_one,
    torch_threads,
)


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
    "expand_tomograms", "failure_message", "inputs_from_paths", "plan_outputs", "predict_one", "read_record",
    "record_path", "run_batch", "torch_threads",
]
