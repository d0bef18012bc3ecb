"""Dock widgets driven like a user would: buttons, spin boxes, sliders; workers in threads."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import SHAPE, VOXEL, dock
from napari.layers import Image, Labels

from napari_cryopicker._napari.session import Key
from napari_cryopicker._napari.widgets import (
    ClassesWidget,
    CorrectWidget,
    CryoPickerWidget,
    ExportWidget,
    LabelsWidget,
    PickingWidget,
    TomogramWidget,
    TrainingWidget,
)
from napari_cryopicker._napari.workers import runs_for
from napari_cryopicker.core.picks import Picks

BLOBS = [(10, 16, 16), (20, 40, 44), (16, 48, 20)]  # dark blobs of the tomo_path fixture
TINY = {"patch": 16, "batch_size": 1, "steps_per_epoch": 2, "f_maps": (4, 8), "tune_thresholds": False,
        "device": "cpu"}


@pytest.fixture
def picked(session):
    session.add_class("blob", 8)
    for c in BLOBS:
        session.add_pick(c, "blob")
    session.train_overrides.update(TINY)
    session.predict_overrides.update({"device": "cpu", "tile": 32, "margin": 4})
    return session


def test_all_panels_widget_and_classes_table(viewer, session, qtbot):
    w = dock(viewer, CryoPickerWidget)
    assert w.tabs.count() == 9  # Tomogram ... Correct, Particles, Export, Project
    classes = w.panel(ClassesWidget)
    classes.name.setText("ribosome")
    classes.diameter.setValue(10)
    classes.btn_add.click()
    classes.name.setText("proteasome")
    classes.btn_add.click()
    assert session.classes.names == ["ribosome", "proteasome"]
    assert classes.table.rowCount() == 2
    assert classes.table.item(0, 4).text() == f"{10 * VOXEL:.0f}"  # diameter in Angstrom
    assert session.active_class == "proteasome"
    session.add_pick((5, 5, 5), "ribosome")
    session.add_pick((6, 6, 6), "ribosome")
    assert classes.table.item(0, 5).text() == "2"  # counts follow edits
    assert classes.btn_undo.isEnabled() and not classes.btn_redo.isEnabled()
    classes.btn_undo.click()
    assert classes.table.item(0, 5).text() == "1"
    assert classes.btn_redo.isEnabled()
    classes.table.selectRow(0)
    assert session.active_class == "ribosome"
    assert viewer.layers.selection.active is viewer.layers["picks: ribosome"]


def test_class_diameters_in_angstrom_stay_right_at_another_binning(viewer, session, tmp_path):
    import mrcfile

    from napari_cryopicker.core.tomogram import write_tomogram

    w = dock(viewer, ClassesWidget)
    w.unit.setCurrentText("A")
    w.name.setText("ribosome")
    w.diameter.setValue(280.0)  # A
    w.btn_add.click()
    assert session.classes["ribosome"].diameter == pytest.approx(280.0 / VOXEL)
    assert w.table.item(0, 4).text() == "280"
    session.set_diameter_angstrom("ribosome", 300.0)
    assert session.classes["ribosome"].diameter == pytest.approx(300.0 / VOXEL)
    # the same sample binned by 2 (written by mrcfile itself, voxel size in the header)
    with mrcfile.open(session.tomogram.path) as m:
        data = m.data.copy()
    binned = data[:, ::2, ::2][::2]
    path = write_tomogram(tmp_path / "TS_01_bin2.mrc", binned, 2 * VOXEL)
    viewer.open(str(path), plugin="napari-cryopicker")
    tw = dock(viewer, TomogramWidget)
    tw.combo.setCurrentText("TS_01_bin2")  # the user switches the tomogram to annotate
    assert session.voxel_size == pytest.approx(2 * VOXEL)
    assert session.classes["ribosome"].diameter == pytest.approx(300.0 / (2 * VOXEL))  # voxels halve
    assert session.diameter_angstrom("ribosome") == pytest.approx(300.0)
    assert w.table.item(0, 3).text() == f"{300.0 / (2 * VOXEL):g}"


def test_tomogram_filters_run_in_a_worker(viewer, session, qtbot, monkeypatch):
    w = dock(viewer, TomogramWidget)
    assert w.combo.currentText() == "TS_01"
    w.sigma.setValue(1.0)
    w.btn_gauss.click()
    qtbot.waitUntil(lambda: "TS_01 [gaussian s=1]" in viewer.layers, timeout=10000)
    layer = viewer.layers["TS_01 [gaussian s=1]"]
    assert isinstance(layer, Image) and layer.data.shape == SHAPE
    assert tuple(layer.scale) == pytest.approx((VOXEL,) * 3)
    assert layer.data.std() < np.asarray(session.tomogram.data).std()
    w.slab.setValue(3)
    w.btn_slab.click()
    qtbot.waitUntil(lambda: "TS_01 [slab 3]" in viewer.layers, timeout=10000)
    w.btn_eq.click()
    qtbot.waitUntil(lambda: "TS_01 [equalised]" in viewer.layers, timeout=10000)
    eq = viewer.layers["TS_01 [equalised]"].data
    assert 0 <= eq.min() and eq.max() <= 1
    w.btn_band.click()
    qtbot.waitUntil(lambda: not runs_for(session)["filter"].running, timeout=10000)
    assert any("band-pass" in lyr.name for lyr in viewer.layers)
    assert session.image_layer.name == "TS_01"  # filters never replace the picked tomogram
    # Stop: a slow filter stops between slabs and adds no layer
    import napari_cryopicker._napari.filters as filters_mod

    real = filters_mod.FILTERS["gaussian"]

    def slow(vol, **kw):
        import time

        time.sleep(0.3)
        return real(vol, **kw)

    monkeypatch.setitem(filters_mod.FILTERS, "gaussian", slow)
    monkeypatch.setattr(filters_mod, "SLAB", 2)
    w.sigma.setValue(2.0)
    w.btn_gauss.click()
    qtbot.waitUntil(lambda: w.btn_stop.isEnabled(), timeout=5000)
    w.btn_stop.click()
    qtbot.waitUntil(lambda: not runs_for(session)["filter"].running, timeout=10000)
    assert "TS_01 [gaussian s=2]" not in viewer.layers
    assert runs_for(session)["filter"].task.last_outcome.status == "cancelled"


def test_weak_label_preview(viewer, picked, qtbot):
    w = dock(viewer, LabelsWidget)
    w.mode.setCurrentIndex(1)  # Ball
    assert picked.label_mode == "ball"
    w.btn.click()
    qtbot.waitUntil(lambda: "weak labels" in viewer.layers, timeout=10000)
    lab = viewer.layers["weak labels"]
    assert isinstance(lab, Labels)
    # the picks layer stays selected: a number key chooses a class, it does not erase labels
    assert viewer.layers.selection.active is viewer.layers[f"picks: {picked.active_class}"]
    before = lab.data.copy()
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, "1")
    assert viewer.layers.selection.active.name.startswith("picks: ") and lab.mode != "erase"
    np.testing.assert_array_equal(lab.data, before)
    assert lab.data.shape == SHAPE and tuple(lab.scale) == pytest.approx((VOXEL,) * 3)
    for c in BLOBS:
        assert lab.data[c] == 1
    assert lab.data[0, 0, 0] == 0
    n_ball = int((lab.data == 1).sum())
    w.mode.setCurrentIndex(2)  # Cubic: bigger
    w.btn.click()
    qtbot.waitUntil(lambda: not runs_for(picked)["labels"].running, timeout=10000)
    assert int((viewer.layers["weak labels"].data == 1).sum()) > n_ball
    w.override.setChecked(True)  # one diameter for all classes: 3-voxel cubes
    w.diameter.setValue(3)
    assert picked.label_diameter == 3 and not w.scale.isEnabled()
    w.btn.click()
    qtbot.waitUntil(lambda: not runs_for(picked)["labels"].running, timeout=10000)
    assert int((viewer.layers["weak labels"].data == 1).sum()) == 3 * 27
    assert runs_for(picked)["train"].config_values()["diameter"] == 3  # training uses the same


def test_training_started_and_stopped_from_the_widget(viewer, picked, qtbot):
    w = dock(viewer, TrainingWidget)
    run = runs_for(picked)["train"]
    w.epochs.setValue(500)
    w.device.setCurrentText("cpu")
    assert picked.train_settings["epochs"] == 500
    assert not w.sparse.isChecked() and run.config_values()["sparse"] is False  # off by default
    w.sparse.setChecked(True)  # the user says only some particles are picked
    assert run.config_values()["sparse"] is True
    assert w.binning.currentText() == "auto binning" and run.config_values()["binning"] == "auto"
    w.binning.setCurrentText("bin 2")  # the user chooses the grid the network works on
    assert run.config_values()["binning"] == 2
    assert w.snap.isChecked() and run.config_values()["snap_clicks"] is True  # on by default
    w.snap.setChecked(False)
    assert run.config_values()["snap_clicks"] is False
    w.snap.setChecked(True)
    assert w.template.isChecked() and run.config_values()["template"] == "auto"  # on by default
    w.template.setChecked(False)
    assert run.config_values()["template"] == "off" and not w.tilt.isEnabled()
    w.template.setChecked(True)
    assert w.tilt.value() == 60 and run.config_values()["template_tilt_range"] == 60
    w.tilt.setValue(45)  # a tilt series of +/- 45 degrees
    assert run.config_values()["template_tilt_range"] == 45
    w.btn_train.click()
    assert run.running and w.btn_stop.isEnabled() and not w.btn_train.isEnabled()
    # napari's animated "in progress" label is slowed (each frame repaints the window)
    from qtpy.QtWidgets import QLabel

    from napari_cryopicker._napari.tasks import BUSY_ANIMATION_SPEED

    movies = [lb.movie() for lb in w.window().findChildren(QLabel) if lb.movie() is not None]
    assert movies and all(m.speed() == BUSY_ANIMATION_SPEED for m in movies)
    qtbot.waitUntil(lambda: len(run.history) >= 2, timeout=60000)
    w.btn_stop.click()
    qtbot.waitUntil(lambda: not run.running, timeout=60000)
    assert run.task.last_outcome.ok
    ck = picked.checkpoint
    assert ck is not None and ck.classes.names == ["blob"]
    assert 2 <= len(ck.history) < 500  # stopped early, best checkpoint kept
    assert ck.train_config["sparse"] is True and all("left_out" in r for r in ck.history)
    assert ck.templates == {}  # three blob picks: too few for a template (the networks alone)
    assert w.btn_train.isEnabled() and w.btn_save.isEnabled()
    assert "Model for blob" in w.summary.text()
    assert ck.binning == 2 and "works at bin 2" in w.summary.text()
    lines = w.plot.ax.get_lines()
    assert lines and len(lines[0].get_xdata()) == len(run.history)
    w.plot.canvas.draw()
    ticks = [t for t in w.plot.ax.get_xticks() if w.plot.ax.get_xlim()[0] <= t <= w.plot.ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks  # epochs, never 30.75


def test_a_stopped_run_keeps_the_old_model_unless_it_validates_better(viewer, picked, qtbot):
    """Stop before the first epoch ends (cancelled) or after it (a partial model): either
    way the previous model stays unless the new one has a better validation score."""
    from types import SimpleNamespace

    from napari_cryopicker._napari.workers import validates_better

    run = runs_for(picked)["train"]
    previous = SimpleNamespace(best_score=1.0, best_epoch=7, history=[], classes=picked.classes)
    for wait_epochs in (0, 1):
        picked.checkpoint = previous
        run.start()
        if wait_epochs:
            qtbot.waitUntil(lambda: len(run.history) >= wait_epochs, timeout=60000)
        run.stop()
        qtbot.waitUntil(lambda: not run.running, timeout=60000)
        assert run.task.last_outcome.status in ("cancelled", "ok")
        assert picked.checkpoint is previous
        if wait_epochs:
            assert run.task.last_outcome.ok and run.discarded is not None  # trained, but not better
            # the stopped run's model is not lost: it is on disk, to load back
            from napari_cryopicker.core.model import load_checkpoint

            assert run.set_aside is not None and run.set_aside.name.endswith(".cryopicker.set-aside.pt")
            assert load_checkpoint(run.set_aside).best_epoch == run.discarded.best_epoch
    picked.checkpoint = None
    assert validates_better(SimpleNamespace(best_score=0.5), SimpleNamespace(best_score=None))
    assert not validates_better(SimpleNamespace(best_score=None), SimpleNamespace(best_score=0.5))


def test_a_stopped_live_run_keeps_its_model_and_sets_the_previous_one_aside(viewer, picked, qtbot):
    """Live training validates in-sample (it trains on its validation slab's picks too), so
    its score cannot be weighed against a planned run's held-out one: during the run *Pick*
    uses the live model, and Stop keeps it, whatever the previous model's score; the
    previous model is saved beside the annotations and the notification says where."""
    import dataclasses

    from napari_cryopicker._napari.controllers import load_model
    from napari_cryopicker._napari.messages import MESSAGES
    from napari_cryopicker._napari.workers import is_live
    from napari_cryopicker.core.model import load_checkpoint

    w = dock(viewer, TrainingWidget)
    w.epochs.setValue(1)
    w.btn_train.click()
    qtbot.waitUntil(lambda: not w.run.running, timeout=60000)
    assert w.run.task.last_outcome.ok and not is_live(picked.checkpoint)
    planned = dataclasses.replace(picked.checkpoint, best_score=1.0)  # a score no live run can beat
    picked.set_checkpoint(planned)
    w.continuous.setChecked(True)
    w.btn_train.click()
    qtbot.waitUntil(lambda: w.run.interim is not None, timeout=60000)
    assert w.run.pick_model() is w.run.interim  # what the suggestions show, not the 1.0 model
    w.btn_stop.click()
    qtbot.waitUntil(lambda: not w.run.running, timeout=60000)
    assert w.run.task.last_outcome.ok and w.run.discarded is None
    assert is_live(picked.checkpoint) and picked.checkpoint is not planned
    aside = w.run.set_aside
    assert aside is not None and aside.name.endswith(".cryopicker.set-aside.pt") and aside != picked.model_path
    back = load_checkpoint(aside)
    assert back.best_score == 1.0 and not is_live(back)
    assert any(aside.name in m and "Load model" in m for m in MESSAGES.texts())
    load_model(picked, aside)  # and the user can go back to it
    assert picked.checkpoint.best_score == 1.0 and picked.model_path == aside


def test_a_small_class_holding_the_grid_back_is_a_notification(viewer, picked, qtbot):
    """A 16-voxel class beside the 8-voxel blob: auto binning stays at full resolution
    because of the blob alone, and the user reads so in a notification; training goes on.
    (The core's warnings from a worker thread reach the user: napari 0.9 does not relay them.)"""
    from napari.utils.notifications import notification_manager

    from napari_cryopicker._napari.messages import MESSAGES

    picked.add_class("big", 16)
    for c in [(16, 20, 40), (16, 44, 44)]:
        picked.add_pick(c, "big")
    w = dock(viewer, TrainingWidget)
    w.epochs.setValue(1)
    w.device.setCurrentText("cpu")
    assert w.binning.currentText() == "auto binning"
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n.message))
    w.btn_train.click()
    qtbot.waitUntil(lambda: not runs_for(picked)["train"].running, timeout=60000)
    assert runs_for(picked)["train"].task.last_outcome.ok
    said = ("class 'blob' (8 voxels across) keeps auto binning at full resolution; without it the network would "
            "work at bin 2, with 8x less work per step. For a look-alike kept apart only, choose bin 2 (the Training "
            "panel's 'work at', or cryopicker train --bin 2)")
    assert said in MESSAGES.texts("warning")  # in full in the panels' message bar
    assert sum(m.startswith("class 'blob' (8 voxels across) keeps auto binning") for m in seen) == 1, seen  # a toast
    assert picked.checkpoint is not None and picked.checkpoint.binning == 1


def test_training_errors_become_notifications(viewer, picked, qtbot, monkeypatch):
    from napari.utils.notifications import notification_manager

    import napari_cryopicker.core.train as train_mod
    from napari_cryopicker.core.errors import CryoPickerError

    def broken(*a, **k):
        raise CryoPickerError("the picks are all outside the tomogram")

    monkeypatch.setattr(train_mod, "train_model", broken)
    w = dock(viewer, TrainingWidget)
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n.message))
    w.btn_train.click()
    qtbot.waitUntil(lambda: not runs_for(picked)["train"].running, timeout=10000)
    assert any("Training failed: the picks are all outside the tomogram" in m for m in seen)
    assert not any("Traceback" in m for m in seen)
    assert picked.checkpoint is None
    assert w.btn_train.isEnabled()


def _fake_predict(monkeypatch, picks_by_class, shape=SHAPE, thresholds=None, seen_configs=None):
    import napari_cryopicker.core.predict as predict_mod

    from napari_cryopicker.core.predict import ScoreMap

    class Result:
        def __init__(self, picks, score_map):
            self.picks, self.score_map = picks, score_map
            self.thresholds = dict(thresholds or {})

    def fake(tomogram, checkpoint, config=None, progress=None):
        import time

        if seen_configs is not None:
            seen_configs.append(config)
        for i in range(3):
            time.sleep(0.1)
            progress.check()
            progress.update(i + 1, 3, "inference")
        # what a model working at bin 2 keeps: the arg-max class and its probability
        work = tuple(n // 2 for n in shape)
        lab, conf = np.zeros(work, np.uint8), np.zeros(work, np.uint8)
        lab[5, 8, 8], conf[5, 8, 8] = 1, 200
        lab[5, 8, 9], conf[5, 8, 9] = 2, 250  # another class wins here
        return Result(picks_by_class, ScoreMap(lab, conf, 2, tuple(shape)))

    monkeypatch.setattr(predict_mod, "predict_picks", fake)


def test_picking_run_and_threshold_slider(viewer, picked, qtbot, monkeypatch):
    from napari_cryopicker.core.classes import ClassTable

    class Ck:  # only what the GUI reads
        classes = ClassTable.from_dict([{"name": "blob", "diameter": 8}])
        voxel_size, history, best_score, best_epoch = VOXEL, [], None, None

    picked.set_checkpoint(Ck())
    # three new particles, one weak candidate, and one on a manual pick (left out: already known)
    pred = Picks.from_zyx([(10, 16, 28), (20, 40, 56), (16, 48, 32), (5, 5, 5), BLOBS[0]], class_name="blob",
                          score=[0.95, 0.8, 0.6, 0.1, 0.99], source="predicted", voxel_size=VOXEL)
    configs = []
    _fake_predict(monkeypatch, pred, thresholds={"blob": 0.5}, seen_configs=configs)
    w = dock(viewer, PickingWidget)
    w.probability.setChecked(True)
    assert w.btn_pick.isEnabled()
    w.btn_pick.click()
    qtbot.waitUntil(lambda: "predicted: blob" in viewer.layers, timeout=10000)
    qtbot.waitUntil(lambda: not runs_for(picked)["predict"].running, timeout=10000)
    layer = viewer.layers["predicted: blob"]
    assert list(layer.features["score"]) == pytest.approx([0.95, 0.8, 0.6, 0.1])
    assert picked.last_skipped == 1
    assert set(layer.features["source"]) == {"predicted"}
    assert tuple(layer.scale) == pytest.approx((VOXEL,) * 3)
    # the probability map: lazy over the working grid (bin 2), no copy; where the class wins
    prob = viewer.layers["probability: blob"]
    assert type(prob.data).__module__.startswith("dask")
    assert tuple(prob.scale) == pytest.approx((2 * VOXEL,) * 3)
    assert tuple(prob.translate) == pytest.approx((0.5 * VOXEL,) * 3)
    assert int(prob.data[5, 8, 8].compute()) == 200 and int(prob.data[5, 8, 9].compute()) == 0
    # working voxel (5, 8, 8) covers tomogram voxels 10-11, 16-17: its centre is at 10.5, 16.5
    assert prob.world_to_data((10.5 * VOXEL, 16.5 * VOXEL, 16.5 * VOXEL)) == pytest.approx((5, 8, 8))
    # candidates down to a low floor come back; the slider starts at the model's threshold
    assert configs[-1].score_floor == pytest.approx(0.05)
    slider = w.sliders["blob"]
    assert slider.value() == pytest.approx(0.5)
    assert list(layer.shown) == [True, True, True, False]
    hist = w.histograms["blob"]
    assert hist.counts.sum() == 4 and hist.threshold == pytest.approx(0.5)
    assert hist.counts[-2:].sum() == 1 and hist.counts[:4].sum() == 1  # 0.95 at the top, 0.1 near the bottom
    # the squares are filled by score (a translucent ramp), the border keeps the class colour
    assert layer.face_color_mode == "colormap"
    fill = np.asarray(layer.face_color)
    assert np.allclose(fill[:, 3], 0.35) and not np.allclose(fill[0, :3], fill[3, :3])
    assert np.allclose(layer.border_color[0], layer.border_color[3])
    slider.setValue(0.05)  # lower than the model's threshold: the weak candidate shows too
    assert list(layer.shown) == [True, True, True, True]
    slider.setValue(0.5)
    assert list(layer.shown) == [True, True, True, False]
    slider.setValue(0.9)
    assert list(layer.shown) == [True, False, False, False]
    assert w.counts["blob"].text() == "1 / 4"
    # a second, cancelled run leaves the earlier picks untouched
    run = runs_for(picked)["predict"]
    run.start()
    run.stop()
    qtbot.waitUntil(lambda: not run.running, timeout=10000)
    assert run.task.last_outcome.status == "cancelled"
    assert len(viewer.layers["predicted: blob"].data) == 4


def test_correct_and_retrain(viewer, picked, qtbot, monkeypatch):
    # a real tiny model first
    run = runs_for(picked)["train"]
    picked.train_settings["epochs"] = 2
    run.start()
    qtbot.waitUntil(lambda: not run.running, timeout=60000)
    assert picked.checkpoint is not None
    first_epochs = len(picked.checkpoint.history)
    picked.set_predictions(Picks.from_zyx([(12, 30, 30), (25, 10, 50)], class_name="blob",
                                          score=[0.9, 0.7], source="predicted", voxel_size=VOXEL))
    w = dock(viewer, CorrectWidget)
    layer = viewer.layers["predicted: blob"]
    layer.selected_data = {0}
    w.btn_accept.click()
    layer.selected_data = {0}
    w.btn_reject.click()
    c = picked.counts()["blob"]
    assert (c["accepted"], c["rejected"], c["predicted_total"]) == (1, 1, 0)
    assert "1 accepted" in w.counts.text() and "1 rejected" in w.counts.text()
    w.show_rejected.setChecked(True)
    assert viewer.layers["rejected"].visible
    train = picked.training_picks()
    assert sorted(train.table["source"]) == ["accepted", "manual", "manual", "manual", "rejected"]
    assert w.btn_retrain.isEnabled()
    w.btn_retrain.click()
    assert run.running and run.fine_tune
    qtbot.waitUntil(lambda: not run.running, timeout=60000)
    assert run.task.last_outcome.ok
    assert len(picked.checkpoint.history) == first_epochs + 2  # continued from the old model


def test_real_training_then_picking(viewer, picked, qtbot, tmp_path):
    """Tiny but real: train_model and predict_picks in workers, results as layers."""
    picked.train_settings["epochs"] = 2
    train = runs_for(picked)["train"]
    train.start()
    qtbot.waitUntil(lambda: not train.running, timeout=60000)
    assert train.task.last_outcome.ok, train.task.last_outcome.message
    pick = runs_for(picked)["predict"]
    pick.start(probability=True)
    qtbot.waitUntil(lambda: not pick.running, timeout=60000)
    assert pick.task.last_outcome.ok, pick.task.last_outcome.message
    # the probability map: lazy, on the model's working grid, placed on the tomogram
    prob = viewer.layers["probability: blob"]
    f = picked.checkpoint.binning
    assert type(prob.data).__module__.startswith("dask") and prob.data.dtype == np.uint8
    assert prob.data.shape == tuple(n // f for n in SHAPE)
    assert tuple(prob.scale) == pytest.approx((f * VOXEL,) * 3)
    assert tuple(prob.translate) == pytest.approx(((f - 1) / 2 * VOXEL,) * 3)
    pred = picked.predictions(shown_only=False)
    assert set(pred.table["source"]) <= {"predicted"}
    assert ((pred.table["score"] >= 0) & (pred.table["score"] <= 1)).all()
    # save the model, forget it, load it back through the Training panel (in a worker)
    from napari_cryopicker._napari.controllers import save_model

    path = save_model(picked, tmp_path / "model")
    assert path.name == "model.pt" and path.exists()
    picked.set_checkpoint(None)
    w = dock(viewer, TrainingWidget)
    assert not w.btn_save.isEnabled()
    w.load(str(path))
    qtbot.waitUntil(lambda: picked.checkpoint is not None, timeout=30000)
    assert picked.checkpoint.classes.names == ["blob"] and w.btn_save.isEnabled()
    w.load(str(tmp_path / "missing.pt"))
    qtbot.waitUntil(lambda: not runs_for(picked)["model"].running, timeout=30000)
    assert runs_for(picked)["model"].task.last_outcome.status == "error"
    assert "no such model file" in runs_for(picked)["model"].task.last_outcome.message


def test_export_every_format_and_read_back(viewer, picked, tmp_path, qtbot):
    import starfile

    from napari_cryopicker.core.formats import read_picks

    picked.set_predictions(Picks.from_zyx([(3, 3, 3), (4, 4, 4)], class_name="blob", score=[0.9, 0.1],
                                          source="predicted", voxel_size=VOXEL))
    picked.set_threshold("blob", 0.5)
    w = dock(viewer, ExportWidget)
    assert w.tomo_name.text() == "TS_01"
    assert w.voxel.value() == pytest.approx(VOXEL)
    for cb in w.formats.values():
        cb.setChecked(True)
    w.folder.setText(str(tmp_path / "out"))
    w.what.setCurrentIndex(2)  # both: 3 picks + 1 shown prediction
    paths = w.export()
    assert paths and all(p.exists() for p in paths)
    names = {p.name for p in paths}
    assert "TS_01_picks.star" in names and "TS_01_picks.tbl" in names and "TS_01_picks.csv" in names
    star = starfile.read(tmp_path / "out" / "TS_01_picks.star")
    df = star["particles"] if isinstance(star, dict) else star
    assert len(df) == 4 and set(df["rlnTomoName"]) == {"TS_01"}
    back = read_picks(tmp_path / "out" / "TS_01_picks.tbl", voxel_size=VOXEL)
    assert len(back) == 4
    np.testing.assert_allclose(np.sort(back.zyx, axis=0), np.sort(np.array(BLOBS + [(3, 3, 3)], float), axis=0),
                               atol=1e-3)
    w.per_class.setChecked(True)
    for f, cb in w.formats.items():
        cb.setChecked(f == "relion5")
    paths = w.export()
    assert [p.name for p in paths if p.suffix == ".star" and "blob" in p.name]


def test_export_errors_are_notifications(viewer, session, tmp_path):
    from napari.utils.notifications import notification_manager

    w = dock(viewer, ExportWidget)
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n.message))
    w.folder.setText(str(tmp_path))
    assert w.export() is None
    assert any("no picks to export" in m for m in seen)


def test_predicted_layer_key_is_tracked(viewer, picked):
    picked.set_predictions(Picks.from_zyx([(1, 1, 1)], class_name="blob", score=0.5, voxel_size=VOXEL))
    assert picked.layer_for(Key("predicted", "blob"), create=False) is viewer.layers["predicted: blob"]


def test_opened_picks_layers_can_join_the_training_set(viewer, session, tmp_path, qtbot):
    """Picks files opened with File > Open are shown, not trained on, until the user says so."""
    from napari_cryopicker.core.formats import write_picks

    picks = Picks.from_zyx([[3, 10, 20], [5, 30, 40], [8, 50, 12]], class_name=["ribosome", "ribosome", "fas"],
                           tomogram="TS_01", voxel_size=VOXEL)
    other = Picks.from_zyx([[9, 9, 9]], class_name="ribosome", tomogram="TS_02", voxel_size=VOXEL)
    path = write_picks(Picks.concat([picks, other]), tmp_path / "colleague.star", "relion4")[0]
    w = dock(viewer, ClassesWidget)
    assert not w.btn_opened.isEnabled()
    opened = viewer.open(str(path), plugin="napari-cryopicker")
    assert len(opened) == 3 and session.annotations().counts() == {}  # per tomogram and class
    assert w.btn_opened.isEnabled() and "(3 picks)" in w.btn_opened.text()  # this tomogram's only
    w.btn_opened.click()
    c = session.counts()
    assert c["ribosome"]["imported"] == 2 and c["fas"]["imported"] == 1
    np.testing.assert_allclose(np.sort(session.annotations().zyx, axis=0), np.sort(picks.zyx, axis=0))
    mine = [lyr for lyr in opened if "TS_02" not in lyr.name]
    assert not any(lyr.visible for lyr in mine) and not w.btn_opened.isEnabled()
    session.undo()
    assert session.counts()["fas"]["imported"] == 0


def test_a_copick_project_in_the_tomogram_panel(viewer, tmp_path, qtbot, copick_project):
    """Open a project the copick library made, open a run with a user's picks, pick more,
    store them back: copick reads them from ExperimentRuns/<run>/Picks/."""
    copick = pytest.importorskip("copick")

    from napari_cryopicker._napari.session import get_session

    objects = [{"name": "ribosome", "is_particle": True, "label": 1, "radius": 120.0, "color": [230, 159, 0, 255]},
               {"name": "proteasome", "is_particle": True, "label": 2, "radius": 75.0}]
    vol = np.random.default_rng(2).normal(0, 1, (24, 48, 48)).astype(np.float32)
    cfg, _, root = copick_project(objects, runs={"TS_1": vol, "TS_2": vol})
    root.get_run("TS_1").new_picks("ribosome", "0", "alice").from_numpy(np.array([[100.0, 200.0, 50.0]]))
    w = dock(viewer, TomogramWidget)
    w.open_project(str(cfg))
    assert [w.runs.itemText(i) for i in range(w.runs.count())] == ["TS_1", "TS_2"]
    from napari_cryopicker._napari.project import project_for

    assert project_for(get_session(viewer)).project.names == ["TS_1", "TS_2"]  # rows of the Project panel
    w.runs.setCurrentText("TS_1")
    w.user.setText("alice")
    w.btn_run.click()
    s = get_session(viewer)
    assert s.tomogram is not None and s.tomogram.name == "TS_1" and s.voxel_size == pytest.approx(10.0)
    assert s.classes.names == ["ribosome", "proteasome"] and s.classes["ribosome"].diameter == pytest.approx(24.0)
    np.testing.assert_allclose(s.annotations().zyx, [[5.0, 20.0, 10.0]])
    s.add_pick((10, 30, 30), "proteasome")
    w.user.setText("cryopicker")
    w.session_id.setText("1")
    w.btn_store.click()
    fresh = copick.from_file(str(cfg)).get_run("TS_1")
    stored = {p.pickable_object_name: p.numpy()[0] for p in fresh.get_picks(user_id="cryopicker", session_id="1")}
    np.testing.assert_allclose(stored["proteasome"], [[300.0, 300.0, 100.0]])
    np.testing.assert_allclose(stored["ribosome"], [[100.0, 200.0, 50.0]])


def test_a_copick_tomogram_type_is_chosen_in_the_panel(viewer, qtbot, copick_project):
    """Runs with two tomogram types (wbp, denoised) and a second voxel spacing: the panel
    offers both, starts on wbp at the finest spacing, and opens the type chosen."""
    pytest.importorskip("copick")
    from napari_cryopicker._napari.session import get_session

    rng = np.random.default_rng(3)
    wbp, den = (rng.normal(0, 1, (16, 32, 32)).astype(np.float32) for _ in range(2))
    cfg, _, root = copick_project([], runs={"TS_1": wbp})
    run = root.get_run("TS_1")
    run.get_voxel_spacing(10.0).new_tomogram("denoised").from_numpy(den)
    run.new_voxel_spacing(20.0).new_tomogram("wbp").from_numpy(wbp[::2, ::2, ::2].copy())
    w = dock(viewer, TomogramWidget)
    w.open_project(str(cfg))
    assert not w.kind_row.isHidden()
    assert [w.types.itemText(i) for i in range(w.types.count())] == ["any type", "denoised", "wbp"]
    assert (w.types.currentText(), w.spacings.currentText()) == ("wbp", "10 A")
    w.types.setCurrentText("denoised")
    w.types.activated.emit(1)
    w.runs.setCurrentText("TS_1")
    w.btn_run.click()
    s = get_session(viewer)
    np.testing.assert_allclose(np.asarray(s.tomogram.data[3]), den[3], rtol=1e-6)
    w.types.setCurrentText("any type")
    w.spacings.setCurrentText("any spacing")
    w.types.activated.emit(0)
    assert "several tomograms" in w.copick._inputs["TS_1"].problem


def test_every_panel_fits_the_dock_without_a_horizontal_scrollbar(viewer):
    """The tabbed dock is 430 px wide: no panel may need more (the class table's count
    columns and the Labels tab used to)."""
    from napari_cryopicker._napari.widgets.all_panels import PANELS, CryoPickerWidget

    dock_w = CryoPickerWidget(viewer)
    width = dock_w.minimumWidth()
    too_wide = {cls.title: cls(viewer).minimumSizeHint().width() for cls in PANELS}
    assert {k: v for k, v in too_wide.items() if v > width - 12} == {}


def test_keys_are_bound_viewer_wide_only_while_a_panel_is_open(viewer, session, qtbot):
    from napari_cryopicker._napari.keys import bound_to

    def ours(key):
        return bound_to(viewer, key) is session._key_handlers[key]

    def users_own(v=None):
        return None

    viewer.bind_key("Control-Y", users_own, overwrite=True)  # a key the user had bound
    assert not ours("1") and bound_to(viewer, "Control-Y") is users_own
    a, b = TomogramWidget(viewer), ClassesWidget(viewer)
    assert ours("1") and ours("9") and ours("Control-Z") and ours("Control-Y")
    for w, still in ((a, True), (b, False)):
        with qtbot.waitSignal(w.destroyed, timeout=3000):
            w.deleteLater()
        assert ours("1") is still
    assert bound_to(viewer, "Control-Y") is users_own  # given back
    # the session's own layers keep the number keys without any panel
    session.add_class("ribosome", 8)
    session.add_pick((5, 6, 7), "ribosome")
    layer = viewer.layers["picks: ribosome"]
    from napari.utils.key_bindings import coerce_keybinding

    assert coerce_keybinding("1") in layer.keymap


def test_training_until_stop_learns_from_clicks_made_meanwhile_and_the_gui_stays_responsive(
        viewer, picked, qtbot):
    """Live mode: training runs with no planned end; a click made while it runs reaches the
    next epoch; a Qt event round-trip stays quick meanwhile; Stop ends it with a model."""
    import time

    from qtpy.QtCore import QTimer

    w = dock(viewer, TrainingWidget)
    w.continuous.setChecked(True)
    assert not w.epochs.isEnabled()
    w.btn_train.click()
    qtbot.waitUntil(lambda: len(w.run.history) >= 1, timeout=60000)
    n = len(picked.training_picks())
    picked.add_pick((8, 50, 50), "blob")  # as a click would, mid-run
    lags = []
    while not any("picks_renewed" in r for r in w.run.history):
        t = time.monotonic()
        done = []
        QTimer.singleShot(0, lambda: done.append(time.monotonic()))
        qtbot.waitUntil(lambda: bool(done), timeout=5000)
        lags.append(done[0] - t)
        assert len(lags) < 2000, "no epoch took the new click"
    renewed = next(r for r in w.run.history if "picks_renewed" in r)
    assert renewed["picks_renewed"] == f"{n} -> {n + 1} picks and rejections"
    assert w.run.running  # it goes on: no planned end
    assert np.percentile(lags, 90) < 0.1, f"GUI round-trips while training: {np.percentile(lags, [50, 90, 100])}"
    w.btn_stop.click()
    qtbot.waitUntil(lambda: not w.run.running, timeout=60000)
    assert w.run.task.last_outcome.ok and picked.checkpoint is not None
    assert picked.checkpoint.history[-1]["planned_epochs"] == 100_000


def test_live_suggestions_appear_and_update_while_training(viewer, picked, qtbot, monkeypatch):
    import napari_cryopicker.core.predict as predict_mod
    from napari_cryopicker._napari.convert import META

    slabs = []
    real = predict_mod.predict_picks

    def spy(tomo, ckpt, cfg=None, *a, **k):
        slabs.append(tomo.shape)
        return real(tomo, ckpt, cfg, *a, **k)

    monkeypatch.setattr(predict_mod, "predict_picks", spy)
    w = dock(viewer, TrainingWidget)
    w.live.setChecked(True)
    w.epochs.setValue(3)
    w.binning.setCurrentText("bin 2")  # the 8-voxel blob is 4 across there: it would get a template
    viewer.dims.set_point(0, 10 * VOXEL)
    picked.set_active_class("blob")
    before = len(picked.training_picks())
    w.btn_train.click()
    qtbot.waitUntil(lambda: not w.run.running, timeout=60000)
    assert w.run.task.last_outcome.ok
    qtbot.waitUntil(lambda: w.run.live_updates == 3, timeout=5000)  # one per epoch
    assert len(slabs) == 3 and all(s[1:] == SHAPE[1:] and s[0] <= SHAPE[0] for s in slabs)
    # three networks (one epoch each): the suggestions follow the first; during the later
    # ones, each epoch picks the region in view again with the first's best network
    assert picked.checkpoint.n_members == 3 and [h["member"] for h in w.run.history] == [1, 2, 3]
    from napari_cryopicker._napari.controllers import model_summary

    assert "3 epoch(s) over 3 networks" in model_summary(picked)
    # at bin 2 the blob would get a template, but three picks are too few: the user is told
    from napari_cryopicker._napari.messages import MESSAGES

    assert picked.checkpoint.templates == {} and "template" not in model_summary(picked)
    assert any(m.startswith("blob: 3 pick(s); a template needs at least 5") for m in MESSAGES.texts("warning"))
    import re

    best = int(re.search(r"from epoch (\d+)'s network", w.live_info.text()).group(1))
    assert best in [h["epoch"] for h in w.run.history if h["member"] == 1]
    for layer in viewer.layers:
        if layer.name.startswith("suggestions: "):
            assert layer.metadata[META]["kind"] == "suggestions" and layer.metadata[META]["epoch"] == best
    assert len(picked.training_picks()) == before  # suggestions are not picks
    assert viewer.layers.selection.active is viewer.layers["picks: blob"]
    # the panel says which classes the network proposes nothing of yet (they need more clicks)
    shown = {ly.name.split(": ", 1)[1]: len(ly.data) for ly in viewer.layers if ly.name.startswith("suggestions: ")}
    assert {k: v for k, v in shown.items() if v} == w.run.live_counts
    assert ("none yet of blob" in w.live_info.text()) == (not w.run.live_counts.get("blob"))
    w.run.live_counts = {}
    w.run.suggested.emit(0, best)
    assert w.live_info.text().endswith("0 suggestion(s) around this slice from epoch "
                                       f"{best}'s network; none yet of blob: click a few more of those")
    w.run.live_counts = {"blob": 2}
    w.run.suggested.emit(2, best)
    assert "none yet" not in w.live_info.text()


def test_the_whole_tomogram_can_be_picked_with_the_best_model_so_far_while_training_goes_on(
        viewer, picked, qtbot, monkeypatch):
    """Live mode's 'pick the whole tomogram now': while training runs with no planned end,
    Pick uses the run's latest model (live training keeps the mean of its last networks), without
    stopping it; after Stop, the model kept.
    At bin 2 the 8-voxel blob gets a template once it has 8 picks: both models hold it."""
    import napari_cryopicker.core.predict as predict_mod

    used = []
    real = predict_mod.predict_picks

    def spy(tomo, ckpt, cfg=None, *a, **k):
        used.append((tomo.shape, ckpt))
        return real(tomo, ckpt, cfg, *a, **k)

    monkeypatch.setattr(predict_mod, "predict_picks", spy)
    train = dock(viewer, TrainingWidget)
    pick = dock(viewer, PickingWidget)
    assert not pick.btn_pick.isEnabled()  # no model yet
    for c in [(8, 12, 50), (24, 50, 12), (12, 30, 30), (20, 12, 24), (26, 40, 52)]:
        picked.add_pick(c, "blob")  # eight blobs
    train.binning.setCurrentText("bin 2")
    train.continuous.setChecked(True)
    train.btn_train.click()
    run = train.run
    qtbot.waitUntil(lambda: run.interim is not None and pick.btn_pick.isEnabled(), timeout=60000)
    assert picked.checkpoint is None and "latest (averaged) model" in pick.status.text()
    pick.btn_pick.click()
    qtbot.waitUntil(lambda: not runs_for(picked)["predict"].running and bool(used), timeout=60000)
    assert runs_for(picked)["predict"].task.last_outcome.ok
    shape, ckpt = used[0]
    assert shape == SHAPE  # the whole tomogram
    assert ckpt.train_config["continuous"] and ckpt.best_epoch is not None and picked.checkpoint is None
    assert set(ckpt.templates) == {"blob"} and ckpt.templates["blob"]["n_particles"] == 8
    assert run.running  # training went on
    train.btn_stop.click()
    qtbot.waitUntil(lambda: not run.running, timeout=60000)
    assert run.interim is None and picked.checkpoint is not None
    assert set(picked.checkpoint.templates) == {"blob"}
    from napari_cryopicker._napari.controllers import model_summary

    assert "template of blob (8 picks)" in model_summary(picked)
    assert run.pick_model() is picked.checkpoint and pick.btn_pick.isEnabled()
    assert "latest (averaged) model" not in pick.status.text()
