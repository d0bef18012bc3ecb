"""A copick project made by the copick library, worked on in a real napari: open its two
OME-Zarr runs with a user's picks, train on both, pick both in the background, and store
the results back, where copick reads them from ExperimentRuns/<run>/Picks/."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import SHAPE, dock

from napari_cryopicker._napari.session import get_session
from napari_cryopicker._napari.workers import runs_for

copick = pytest.importorskip("copick")
VS = 10.0
BLOBS = [(10, 16, 16), (20, 40, 44), (16, 48, 20)]
TINY = {"patch": 16, "batch_size": 1, "steps_per_epoch": 2, "f_maps": (4, 8), "tune_thresholds": False,
        "device": "cpu"}


def _volume(seed: int) -> np.ndarray:
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    vol = np.random.default_rng(seed).normal(0, 1, SHAPE).astype(np.float32)
    for c in BLOBS:
        vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 16] -= 3.0
    return vol


def test_a_copick_project_trained_on_and_picked_in_napari(viewer, qtbot, copick_project):
    from napari_cryopicker._napari.widgets.project import ProjectWidget
    from napari_cryopicker._napari.widgets.tomogram import TomogramWidget

    objects = [{"name": "blob", "is_particle": True, "label": 1, "radius": 40.0, "color": [200, 40, 40, 255]}]
    cfg, _, root = copick_project(objects, runs={"TS_1": _volume(1), "TS_2": _volume(2)}, voxel_size=VS)
    for run, n in (("TS_1", 3), ("TS_2", 2)):
        xyz = np.array([c[::-1] for c in BLOBS[:n]], float) * VS
        root.get_run(run).new_picks("blob", "0", "alice").from_numpy(xyz)

    s = get_session(viewer)
    w = dock(viewer, TomogramWidget)
    w.open_project(str(cfg))
    w.user.setText("alice")
    for run in ("TS_2", "TS_1"):  # each run opens with alice's picks, which are saved with it
        w.runs.setCurrentText(run)
        w.btn_run.click()
        assert s.tomogram.name == run and s.classes["blob"].diameter == pytest.approx(8.0)
    assert len(s.annotations()) == 3

    p = dock(viewer, ProjectWidget)
    assert sorted(p.logic.ticked()) == ["TS_1", "TS_2"]
    s.train_overrides.update(TINY)
    s.predict_overrides.update({"device": "cpu", "tile": 32, "margin": 4})
    s.train_settings["epochs"] = 2
    run = runs_for(s)["train"]
    p.btn_train.click()
    qtbot.waitUntil(lambda: not run.running, timeout=60000)
    assert run.task.last_outcome.ok, run.task.last_outcome.message
    assert s.checkpoint is not None
    p.btn_pick.click()
    qtbot.waitUntil(lambda: not p.logic.picking, timeout=60000)
    assert p.logic.pick_task.last_outcome.ok, p.logic.pick_task.last_outcome.message

    w.user.setText("cryopicker")
    w.session_id.setText("7")
    w.store_what.setCurrentIndex(w.store_what.findData("both"))
    w.btn_store_all.click()
    fresh = copick.from_file(str(cfg))
    for name, n in (("TS_1", 3), ("TS_2", 2)):
        (pk,) = fresh.get_run(name).get_picks(object_name="blob", user_id="cryopicker", session_id="7")
        xyz = pk.numpy()[0]
        assert len(xyz) >= n  # alice's picks (imported, so training picks) and the model's
        for c in BLOBS[:n]:  # each of alice's picks is there, in Angstrom
            assert np.min(np.linalg.norm(xyz - np.array(c[::-1]) * VS, axis=1)) < 1e-3
