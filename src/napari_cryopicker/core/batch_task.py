"""One tomogram's task of a batch run, as a Dask worker (or this process) runs it.

:func:`predict_one` opens the checkpoint and the tomogram itself from their paths (nothing
big crosses the scheduler), sets torch's thread count (:func:`torch_threads`), picks,
writes the picks and then the record (see :mod:`.batch`), and returns a small
:class:`TaskResult`. It never raises: a failure comes back as a result with ``error`` set,
so one bad tomogram does not stop the others.
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_output
from .batch_inputs import RECORD_VERSION, record_path
from .errors import CryoPickerError


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
