"""Batch picking on Dask (core/batch.py and `cryopicker predict` with many tomograms).

Small on purpose: 24 x 48 x 48 simulated tomograms, an untrained two-level network whose
MP-NMS thresholds are zero (so it always returns some picks), and one shared in-process
LocalCluster of two single-thread workers.
"""

import json
import shutil
import warnings

import numpy as np
import pytest
import starfile
import torch

from napari_cryopicker.cli import main
from napari_cryopicker.core.batch import (
    BatchError, copick_tomograms, expand_tomograms, inputs_from_paths, plan_outputs, record_path, run_batch,
    torch_threads,
)
from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.formats import read_picks
from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet, save_checkpoint
from napari_cryopicker.core.simulate import simulate_tomogram
from napari_cryopicker.core.tomogram import write_tomogram

NAMES = ["TS_00", "TS_01", "TS_02"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    tomos = d / "tomos"
    tomos.mkdir()
    for i, name in enumerate(NAMES):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "slab too crowded" at this size
            sim = simulate_tomogram(shape=(24, 48, 48), seed=i, n_per_class=1, distractors=False)
        write_tomogram(tomos / f"{name}.mrc", sim.data, 10.0)
    (tomos / "TS_09.mrc").write_bytes(b"\x00" * 100)  # broken: not an MRC file
    torch.manual_seed(0)
    cfg = ModelConfig(n_classes=2, f_maps=(4, 8))
    zero = {"t_seg": 0.0, "t_lm": 0.0}
    ck = Checkpoint(model=cfg.to_dict(), state_dict=ResUNet(cfg).state_dict(),
                    classes=ClassTable([ParticleClass("ribo", 8), ParticleClass("blob", 6)]), voxel_size=10.0,
                    postprocess={"ribo": zero, "blob": zero})
    save_checkpoint(ck, d / "m.pt")
    return d


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    threads = torch.get_num_threads()
    # in-process workers: no interpreter start-up per worker, and torch is already imported
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as c:
        yield c
    torch.set_num_threads(threads)  # the tasks set torch's (process-wide) thread count


def test_expand_globs_lists_and_folders(tmp_path):
    for name in ("b.mrc", "a.mrc", "c.rec", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "d.mrc").write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# my tomograms\nb.mrc\n\nsub/*.mrc  # a glob\n/abs/missing.mrc\n")
    names = lambda ps: [p.name for p in ps]  # noqa: E731
    assert names(expand_tomograms([str(tmp_path / "*.mrc"), str(tmp_path / "a.mrc")])) == ["a.mrc", "b.mrc"]
    assert names(expand_tomograms([tmp_path / "list.txt"])) == ["b.mrc", "d.mrc", "missing.mrc"]
    assert names(expand_tomograms([tmp_path])) == ["a.mrc", "b.mrc", "c.rec"]
    both = inputs_from_paths([tmp_path / "e.zarr", tmp_path / "TS_1" / "VoxelSpacing10.000" / "wbp.zarr",
                              tmp_path / "a.mrc"])
    assert [(i.name, i.problem) for i in both] == [("e", None), ("TS_1", None), ("a", None)]
    assert names(expand_tomograms([str(tmp_path / "**" / "*.mrc")])) == ["a.mrc", "b.mrc", "d.mrc"]
    with pytest.raises(BatchError, match="matches no tomogram"):
        expand_tomograms([str(tmp_path / "*.st")])
    assert plan_outputs(tmp_path / "o", ["x"]) == [tmp_path / "o" / "x.csv"]
    assert plan_outputs(tmp_path / "p.star", ["x", "y"]) == [tmp_path / "p_x.star", tmp_path / "p_y.star"]
    assert plan_outputs(tmp_path / "p.star", ["x"]) == [tmp_path / "p_x.star"]  # stable across reruns


def test_two_workers_failure_rerun_and_overwrite(data, cluster, tmp_path):
    inputs = inputs_from_paths(expand_tomograms([str(data / "tomos" / "*.mrc")]))
    out = tmp_path / "picks.star"
    lines = []
    kw = dict(scheduler=cluster.scheduler_address, threads_per_worker=1, device="cpu", log=lines.append)

    rep = run_batch(inputs, data / "m.pt", out, **kw)
    assert [r.name for r in rep.results] == NAMES + ["TS_09"]
    assert [r.status for r in rep.results] == ["done"] * 3 + ["failed"]
    assert "not a readable MRC file" in rep.failed[0].error and rep.failed[0].tomogram.endswith("TS_09.mrc")
    assert len({r.worker for r in rep.results[:3]}) == 2  # both workers took tomograms
    outs = {n: tmp_path / f"picks_{n}.star" for n in NAMES}
    counts = {}
    for n, r in zip(NAMES, rep.results):
        p = read_picks(outs[n], voxel_size=10.0)
        assert len(p) == r.n_picks > 0 and p.tomograms == [n]
        counts[n] = len(p)
    merged = starfile.read(tmp_path / "all_picks.star", always_dict=True)["particles"]
    assert merged["rlnTomoName"].astype(str).value_counts().to_dict() == counts
    assert rep.merged_picks == sum(counts.values()) and rep.merged_tomograms == 3

    # a rerun skips the finished ones (files untouched) and tries the broken one again
    mtimes = {n: outs[n].stat().st_mtime_ns for n in NAMES}
    lines.clear()
    rep = run_batch(inputs, data / "m.pt", out, **kw)
    assert [r.status for r in rep.results] == ["skipped"] * 3 + ["failed"]
    assert {n: outs[n].stat().st_mtime_ns for n in NAMES} == mtimes
    assert sum("skipped, finished earlier" in line for line in lines) == 3
    assert starfile.read(tmp_path / "all_picks.star", always_dict=True)["particles"].shape[0] == sum(counts.values())

    # a run killed between writing picks and its record (no record), or a lost output: redone
    record_path(outs["TS_01"]).unlink()
    outs["TS_02"].unlink()
    rep = run_batch(inputs[:3], data / "m.pt", out, **kw)
    assert [r.status for r in rep.results] == ["skipped", "done", "done"] and rep.ok
    assert outs["TS_00"].stat().st_mtime_ns == mtimes["TS_00"]

    # --overwrite redoes everything
    rep = run_batch(inputs[:3], data / "m.pt", out, overwrite=True, **kw)
    assert [r.status for r in rep.results] == ["done"] * 3
    assert outs["TS_00"].stat().st_mtime_ns != mtimes["TS_00"]
    assert [r.n_picks for r in rep.results] == [counts[n] for n in NAMES]  # same model, same picks

    # another threshold is another result: redone, and the log says why
    lines.clear()
    rep = run_batch(inputs[:1], data / "m.pt", out, **{**kw, "threshold": 0.0})
    assert rep.results[0].status == "done" and any("another model file or threshold" in s for s in lines), lines


def test_torch_threads_in_a_worker(cluster):
    from distributed import Client

    assert torch_threads(None) == (None, None)  # outside a worker: torch's default stays
    with Client(cluster) as c:
        n, addr = c.submit(torch_threads, None, {}, pure=False).result()
        assert n >= 1 and addr in c.scheduler_info()["workers"]
        assert c.submit(torch_threads, 3, {}, pure=False).result()[0] == 3


def test_cli_batch_reports_failures_and_skips_on_rerun(data, cluster, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["predict", "--model", str(data / "m.pt"), "--tomograms", str(data / "tomos" / "*.mrc"),
            "--out", str(out), "--device", "cpu", "--threads-per-worker", "1"]
    # the default path: a local cluster of worker processes made by cryopicker itself (one
    # worker: each process start imports torch, the slowest part of this test)
    assert main(argv + ["--workers", "1"]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryopicker: error: ") and "TS_09.mrc: not a readable MRC" in err[0]
    assert "3 picked, 0 skipped (finished earlier), 1 failed" in cap.out
    assert sorted(p.name for p in out.glob("*.csv")) == [f"{n}.csv" for n in NAMES]
    merged = starfile.read(out / "all_picks.star", always_dict=True)["particles"]
    assert sorted(set(merged["rlnTomoName"].astype(str))) == NAMES

    listing = tmp_path / "good.txt"
    listing.write_text("".join(f"{data / 'tomos' / n}.mrc\n" for n in NAMES))
    argv[argv.index("--tomograms") + 1] = str(listing)
    assert main(argv + ["--scheduler", cluster.scheduler_address, "--merged", str(tmp_path / "m.star")]) == 0
    cap = capsys.readouterr()
    assert cap.err == "" and "0 picked, 3 skipped (finished earlier), 0 failed" in cap.out
    assert len(starfile.read(tmp_path / "m.star", always_dict=True)["particles"]) == len(merged)


def test_single_tomogram_keeps_the_in_process_path(data, tmp_path, capsys):
    out = tmp_path / "one.star"
    assert main(["predict", "--model", str(data / "m.pt"), "--tomogram", str(data / "tomos" / "TS_00.mrc"),
                 "--out", str(out), "--device", "cpu"]) == 0
    assert out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["one.star"]  # no record, no merge


def test_clashing_names_stop_before_running(data, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(data / "tomos" / "TS_00.mrc", other / "TS_00.mrc")
    assert main(["predict", "--model", str(data / "m.pt"), "--tomogram", str(data / "tomos" / "TS_00.mrc"),
                 "--tomogram", str(other / "TS_00.mrc"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same name 'TS_00'" in err[0]


def test_copick_project_runs(data, tmp_path, copick_project):
    """A project made by the copick library (OME-Zarr tomograms) beside a run with an MRC."""
    from napari_cryopicker.core.tomogram import open_tomogram

    vol = np.asarray(open_tomogram(data / "tomos" / "TS_00.mrc").data)
    cfg, root, _ = copick_project(runs={"TS_A": vol})
    run_b = root / "ExperimentRuns" / "TS_B" / "VoxelSpacing10.000"
    run_b.mkdir(parents=True)
    shutil.copy(data / "tomos" / "TS_00.mrc", run_b / "wbp.mrc")
    (root / "ExperimentRuns" / "TS_C" / "VoxelSpacing10.000").mkdir(parents=True)  # no tomogram
    inputs = copick_tomograms(cfg, voxel_size=10.0)
    assert [(i.name, i.problem is None) for i in inputs] == [("TS_A", True), ("TS_B", True), ("TS_C", False)]
    assert inputs[0].tomogram.suffix == ".zarr"
    rep = run_batch(inputs[:2], data / "m.pt", tmp_path / "out", device="cpu", log=lambda s: None)
    assert [r.status for r in rep.results] == ["done", "done"]
    merged = starfile.read(tmp_path / "out" / "all_picks.star", always_dict=True)["particles"]
    per = merged.groupby(merged["rlnTomoName"].astype(str)).size().to_dict()
    assert set(per) == {"TS_A", "TS_B"}  # named by run, not by "wbp"
    assert abs(per["TS_A"] - per["TS_B"]) <= max(2, per["TS_B"] // 10)  # the same volume, read from OME-Zarr
    with pytest.raises(BatchError, match="not a local folder"):
        cfg.write_text(json.dumps({"config_type": "filesystem", "name": "t", "version": "0.5.0",
                                   "pickable_objects": [], "overlay_root": "s3://bucket/project"}))
        copick_tomograms(cfg)


def test_batch_passes_keep_fiducials_and_tta_and_redoes_when_they_change(data, cluster, tmp_path, monkeypatch,
                                                                         capsys):
    """`cryopicker predict` over several tomograms (the batch path) honours --keep-fiducials
    and --tta as the single-tomogram path does, and a record made with other options is redone."""
    import napari_cryopicker.core.predict as predict_mod

    seen = []
    real = predict_mod.predict_picks

    def spy(tomo, ckpt, config=None, **kw):
        seen.append((config.mask_fiducials, config.tta))
        return real(tomo, ckpt, config, **kw)

    monkeypatch.setattr(predict_mod, "predict_picks", spy)
    tomos = [str(data / "tomos" / f"{n}.mrc") for n in NAMES[:2]]
    out = tmp_path / "picks"
    # the in-process cluster of the fixture, so that the spy sees the tasks
    args = ["predict", "--model", str(data / "m.pt"), "--tomogram", tomos[0], "--tomogram", tomos[1],
            "--out", str(out), "--device", "cpu",
            "--scheduler", cluster.scheduler_address, "--threads-per-worker", "1"]
    assert main([*args, "--keep-fiducials", "--tta", "2"]) == 0
    assert sorted(seen) == [(False, 2), (False, 2)]
    rec = json.loads(next((out / ".cryopicker").glob("*.json")).read_text())
    assert rec["settings"]["options"] == {"mask_fiducials": False, "tta": 2}
    seen.clear()
    assert main([*args, "--keep-fiducials", "--tta", "2"]) == 0  # same options: finished, skipped
    assert seen == []
    assert main(args) == 0  # the defaults differ from the record's options: picked again
    assert sorted(seen) == [(True, 1), (True, 1)]


def test_batch_on_a_real_dask_scheduler_with_two_worker_processes(data, tmp_path):
    """As on a cluster: `dask scheduler` and two `dask worker` processes started from the
    command line (localhost here), and the batch sent to the scheduler's address."""
    import socket
    import subprocess
    import sys
    import time
    from pathlib import Path

    from distributed import Client

    dask = Path(sys.executable).with_name("dask")
    if not dask.exists():
        pytest.skip("the dask command is not installed (pip install 'napari-cryopicker[cluster]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    logs = [open(tmp_path / f"{n}.log", "w") for n in ("scheduler", "worker0", "worker1")]  # noqa: SIM115
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0", "--no-show"], stdout=logs[0], stderr=logs[0])]
    try:
        for i in (1, 2):
            procs.append(subprocess.Popen([str(dask), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--no-dashboard", "--name", f"w{i}", "--memory-limit", "0"],
                                          stdout=logs[i], stderr=logs[i]))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            remote = set(client.scheduler_info()["workers"])
        lines = []
        inputs = inputs_from_paths([data / "tomos" / f"{n}.mrc" for n in NAMES])
        report = run_batch(inputs, data / "m.pt", tmp_path / "out", scheduler=address, threads_per_worker=1,
                           device="cpu", log=lines.append)
        done = report.with_status("done")
        assert len(done) == 3 and not report.failed
        assert {r.worker for r in done} <= remote and None not in {r.worker for r in done}
        merged = starfile.read(report.merged, always_dict=True)["particles"]
        assert sorted(set(merged["rlnTomoName"].astype(str))) == NAMES
        assert any(address in line for line in lines)
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()
        time.sleep(0.1)
