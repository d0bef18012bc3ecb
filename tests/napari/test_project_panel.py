"""A three-tomogram job in a real napari: the Project panel's table, switching that keeps
everything, training on two annotated tomograms, picking all three in the background, and
a restart that brings it all back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from gui_helpers import PLUGIN, SHAPE, VOXEL, dock
from qtpy.QtCore import Qt

from napari_cryopicker._napari.session import get_session
from napari_cryopicker._napari.workers import runs_for
from napari_cryopicker.core.annotations import find_autosave, payload_predictions, read_annotation_file
from napari_cryopicker.core.tomogram import write_tomogram

BLOBS = [(10, 16, 16), (20, 40, 44), (16, 48, 20)]
TINY = {"patch": 16, "batch_size": 1, "steps_per_epoch": 2, "f_maps": (4, 8), "tune_thresholds": False,
        "device": "cpu"}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the per-user last project
    d = tmp_path / "job"
    d.mkdir()
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for i in range(3):
        vol = np.random.default_rng(i).normal(0, 1, SHAPE).astype(np.float32)
        for c in BLOBS:
            vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 <= 16] -= 3.0
        write_tomogram(d / f"TS_0{i + 1}.mrc", vol, VOXEL)
    return d


def _row(w, name):
    return w.names().index(name)


def test_three_tomograms_annotate_two_train_on_both_pick_all_and_reopen(make_napari_viewer, folder, qtbot):
    from napari_cryopicker._napari.widgets.project import ProjectWidget

    viewer = make_napari_viewer()
    s = get_session(viewer)
    viewer.open(str(folder / "TS_01.mrc"), plugin=PLUGIN)
    w = dock(viewer, ProjectWidget)
    assert w.names() == ["TS_01"]  # the tomogram in the viewer is a row
    assert w.add([str(folder)]) == 2
    qtbot.waitUntil(lambda: w.names() == ["TS_01", "TS_02", "TS_03"], timeout=3000)

    s.add_class("blob", 8)
    for c in BLOBS:
        s.add_pick(c, "blob")
    s.train_overrides.update(TINY)
    s.predict_overrides.update({"device": "cpu", "tile": 32, "margin": 4})

    # switch by double-clicking the row, as a user does
    w.show()
    rect = w.table.visualRect(w.table.model().index(_row(w, "TS_02"), 1))
    t = time.monotonic()
    qtbot.mouseClick(w.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    qtbot.mouseDClick(w.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert time.monotonic() - t < 5
    assert s.tomogram.name == "TS_02"
    images = [ly for ly in viewer.layers if ly in s.image_layers()]
    assert [ly.name for ly in images] == ["TS_02"]  # the previous tomogram left the viewer
    assert len(viewer.layers["picks: blob"].data) == 0 and "blob" in s.classes
    s.add_pick(BLOBS[0], "blob")
    s.add_pick(BLOBS[1], "blob")
    w.refresh()
    picks = {n: int(w.table.item(_row(w, n), 2).text()) for n in w.names()}
    assert picks == {"TS_01": 3, "TS_02": 2, "TS_03": 0}

    # train on both annotated tomograms (TS_03 is ticked but has no picks)
    s.train_settings["epochs"] = 2
    run = runs_for(s)["train"]
    seen = []
    import napari_cryopicker.core.train as train_mod

    real = train_mod.train_model

    def spy(tomos, picks, *a, **k):
        seen.append(([t.name for t in tomos], [len(p) for p in picks]))
        return real(tomos, picks, *a, **k)

    train_mod.train_model = spy
    try:
        w.btn_train.click()
        qtbot.waitUntil(lambda: not run.running, timeout=60000)
    finally:
        train_mod.train_model = real
    assert run.task.last_outcome.ok, run.task.last_outcome.message
    assert seen == [(["TS_01", "TS_02"], [3, 2])]
    assert s.checkpoint is not None

    # pick all three in the background; the shown one's picks appear, the others' are stored
    w.btn_pick.click()
    assert w.btn_stop.isEnabled()
    qtbot.waitUntil(lambda: not w.logic.picking, timeout=60000)
    assert w.logic.pick_task.last_outcome.ok, w.logic.pick_task.last_outcome.message
    for name in ("TS_01", "TS_03"):
        payload = read_annotation_file(find_autosave(folder / f"{name}.mrc"))
        assert len(payload_predictions(payload)) > 0
    shown = len(s.predictions(shown_only=False))
    assert shown > 0 and "predicted: blob" in viewer.layers
    qtbot.waitUntil(lambda: int(w.table.item(_row(w, "TS_03"), 3).text()) > 0, timeout=3000)

    # export every ticked tomogram's picks at once; RELION reads each file back
    import starfile

    from napari_cryopicker._napari.widgets.export import ExportWidget

    ex = dock(viewer, ExportWidget)
    for fmt, cb in ex.formats.items():
        cb.setChecked(fmt == "relion4")
    ex.which.setCurrentIndex(ex.which.findData("ticked"))
    ex.what.setCurrentIndex(ex.what.findData("annotations"))
    ex.folder.setText(str(folder / "export"))
    paths = ex.export()
    assert sorted(p.name for p in paths) == ["TS_01_picks_relion4.star", "TS_02_picks_relion4.star"]
    for p, n in zip(sorted(paths), (3, 2)):
        df = starfile.read(p)
        df = df["particles"] if isinstance(df, dict) else df
        assert len(df) == n and set(df["rlnTomoName"]) == {p.name.split("_picks")[0]}

    # back to TS_01: its picks and its stored predictions return
    w.show_tomogram("TS_01")
    assert s.tomogram.name == "TS_01"
    assert len(viewer.layers["picks: blob"].data) == 3
    assert len(s.predictions(shown_only=False)) > 0

    # close napari and open it again: the project, picks, predictions and model come back
    viewer.close()
    viewer2 = make_napari_viewer()
    s2 = get_session(viewer2)
    viewer2.open(str(folder / "TS_02.mrc"), plugin=PLUGIN)
    w2 = dock(viewer2, ProjectWidget)
    w2.reopen_last()
    qtbot.waitUntil(lambda: w2.names() == ["TS_02", "TS_01", "TS_03"], timeout=3000)
    assert len(viewer2.layers["picks: blob"].data) == 2
    assert len(s2.predictions(shown_only=False)) == shown
    qtbot.waitUntil(lambda: s2.checkpoint is not None, timeout=20000)  # the model, loaded in the background
    w2.refresh()
    got = {n: (int(w2.table.item(_row(w2, n), 2).text()), int(w2.table.item(_row(w2, n), 3).text()) > 0)
           for n in w2.names()}
    assert got == {"TS_01": (3, True), "TS_02": (2, True), "TS_03": (0, True)}


def test_picks_of_the_shown_tomogram_go_to_its_file_if_another_was_opened_meanwhile(viewer, session, tmp_path):
    """A background run picked the tomogram that was shown; the user opened another one
    before it ended (File > Open): the picks land in their own tomogram's file, not on
    the one now shown."""
    from types import SimpleNamespace

    from napari_cryopicker._napari.project import project_for
    from napari_cryopicker.core.classes import ClassTable, ParticleClass
    from napari_cryopicker.core.picks import Picks
    from napari_cryopicker.core.tomogram import open_tomogram

    other = write_tomogram(tmp_path / "TS_09.mrc", np.zeros(SHAPE, np.float32), VOXEL)
    tomo = open_tomogram(other)
    picks = Picks.from_zyx([[5, 6, 7]], class_name="blob", score=0.8, source="predicted", voxel_size=VOXEL)
    ckpt = SimpleNamespace(classes=ClassTable([ParticleClass("blob", 8)]))
    project_for(session)._result(([("TS_09", 1)], (tomo, picks.with_tomogram("TS_09"), {"blob": 0.4}, ckpt)))
    assert len(session.predictions(shown_only=False)) == 0  # nothing on TS_01
    payload = read_annotation_file(find_autosave(other))
    assert payload_predictions(payload).zyx.tolist() == [[5.0, 6.0, 7.0]] and payload["thresholds"] == {"blob": 0.4}
