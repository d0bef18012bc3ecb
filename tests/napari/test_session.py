"""The picking session: classes, picks layers, undo/redo, autosave, corrections."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gui_helpers import PLUGIN, VOXEL

from napari_cryopicker._napari.session import REJECTED, Key, get_session, overfitting_hint
from napari_cryopicker.core.errors import CryoPickerError
from napari_cryopicker.core.picks import Picks


@pytest.fixture
def two_classes(session):
    session.add_class("ribosome", 8)
    session.add_class("proteasome", 6)
    return session


def test_open_tomogram_starts_session(session, tomo_path):
    assert session.tomogram.name == "TS_01"
    assert session.voxel_size == pytest.approx(VOXEL)
    assert session.autosave_path == tomo_path.with_name("TS_01.cryopicker.json")


def test_add_pick_creates_styled_points_layer(viewer, two_classes):
    s = two_classes
    s.add_pick((10, 20, 30), "ribosome")
    layer = viewer.layers["picks: ribosome"]
    np.testing.assert_allclose(layer.data, [[10, 20, 30]])
    assert tuple(layer.scale) == pytest.approx((VOXEL,) * 3)
    assert list(layer.features["class"]) == ["ribosome"]
    assert list(layer.features["source"]) == ["manual"]
    assert layer.size[0] == pytest.approx(8)
    assert layer.projection_mode == "rescale_spherical"
    np.testing.assert_allclose(layer.border_color[0][:3], [0xE6 / 255, 0x9F / 255, 0.0], atol=0.01)
    assert s.diameter_angstrom("ribosome") == pytest.approx(8 * VOXEL)
    assert s.counts()["ribosome"]["annotated"] == 1
    assert s.counts()["proteasome"]["annotated"] == 0


def test_undo_redo_of_session_edits(viewer, two_classes):
    s = two_classes
    s.add_pick((1, 2, 3), "ribosome")
    s.add_pick((4, 5, 6), "ribosome")
    s.move_pick("ribosome", 0, (1, 2, 9))
    s.delete_picks("ribosome", [1])
    layer = viewer.layers["picks: ribosome"]
    np.testing.assert_allclose(layer.data, [[1, 2, 9]])
    assert s.undo()  # delete
    np.testing.assert_allclose(layer.data, [[1, 2, 9], [4, 5, 6]])
    assert s.undo()  # move
    np.testing.assert_allclose(layer.data, [[1, 2, 3], [4, 5, 6]])
    assert s.redo()
    np.testing.assert_allclose(layer.data, [[1, 2, 9], [4, 5, 6]])
    s.undo(), s.undo(), s.undo()
    assert len(layer.data) == 0 and not s.can_undo
    assert s.redo() and len(layer.data) == 1


def test_edits_made_in_napari_are_undoable(viewer, two_classes):
    """Clicks, deletes and drags act on the layer directly (events.data actions)."""
    s = two_classes
    s.set_active_class("ribosome")
    layer = viewer.layers["picks: ribosome"]
    assert viewer.layers.selection.active is layer and layer.mode == "add"
    layer.add([5, 6, 7])  # what a click in add mode does
    layer.add([8, 9, 10])
    assert list(layer.features["source"]) == ["manual", "manual"]
    assert s.counts()["ribosome"]["annotated"] == 2
    layer.selected_data = {0}
    layer.remove_selected()  # Delete key
    np.testing.assert_allclose(layer.data, [[8, 9, 10]])
    # a drag: napari mutates data in place, then emits "changed"
    layer.events.data(value=layer.data, action="changing", data_indices=(0,), vertex_indices=((),))
    layer.data[0] = [8, 12, 12]
    layer.events.data(value=layer.data, action="changed", data_indices=(0,), vertex_indices=((),))
    s.undo()
    np.testing.assert_allclose(layer.data, [[8, 9, 10]])
    s.undo()
    np.testing.assert_allclose(layer.data, [[5, 6, 7], [8, 9, 10]])
    s.undo()
    assert len(layer.data) == 1
    s.redo()
    s.redo()
    np.testing.assert_allclose(layer.data, [[8, 9, 10]])


def test_removing_a_picks_layer_is_undoable(viewer, two_classes):
    s = two_classes
    s.add_pick((1, 2, 3), "ribosome")
    viewer.layers.remove("picks: ribosome")
    assert s.counts()["ribosome"]["annotated"] == 0
    s.undo()
    np.testing.assert_allclose(viewer.layers["picks: ribosome"].data, [[1, 2, 3]])


def test_number_keys_choose_the_active_class(viewer, two_classes, qtbot):
    s = two_classes
    s.select_class_number(2)
    assert s.active_class == "proteasome"
    # real key presses on the canvas, with a picks layer and with the image active
    canvas = viewer.window._qt_viewer.canvas.native
    for active in (viewer.layers["picks: proteasome"], viewer.layers["TS_01"]):
        viewer.layers.selection.active = active
        qtbot.keyClick(canvas, "1")
        assert s.active_class == "ribosome"
        qtbot.keyClick(canvas, "2")
        assert s.active_class == "proteasome"
    qtbot.keyClick(canvas, "9")  # no class 9: nothing happens
    assert s.active_class == "proteasome"
    viewer.layers.selection.active = viewer.layers["picks: ribosome"]  # the layer list too
    assert s.active_class == "ribosome"


def test_autosave_written_atomically_and_restored(make_napari_viewer, tomo_path, qtbot):
    v1 = make_napari_viewer()
    s1 = get_session(v1)
    v1.open(str(tomo_path), plugin=PLUGIN)
    s1.add_class("ribosome", 8)
    s1.add_pick((3, 4, 5), "ribosome")
    s1.add_pick((6, 7, 8), "ribosome")
    path = tomo_path.with_name("TS_01.cryopicker.json")
    saved = json.loads(path.read_text())
    assert saved["classes"][0]["name"] == "ribosome"
    assert saved["picks"]["x"] == [5.0, 8.0]
    assert not list(path.parent.glob(".*.tmp"))  # temp files replaced, not left behind
    v1.layers.remove("TS_01")  # closing the tomogram keeps the file
    v2 = make_napari_viewer()
    s2 = get_session(v2)
    v2.open(str(tomo_path), plugin=PLUGIN)
    assert s2.classes.names == ["ribosome"]
    np.testing.assert_allclose(v2.layers["picks: ribosome"].data, [[3, 4, 5], [6, 7, 8]])
    # the restored picks layer, not the tomogram, is selected and in add mode: clicks add picks
    qtbot.waitUntil(lambda: v2.layers.selection.active is v2.layers["picks: ribosome"], timeout=2000)
    assert v2.layers["picks: ribosome"].mode == "add"


def test_predictions_threshold_accept_reject(viewer, two_classes):
    s = two_classes
    pred = Picks.from_zyx([[1, 1, 1], [2, 2, 2], [3, 3, 3], [4, 4, 4]],
                          class_name=["ribosome", "ribosome", "ribosome", "proteasome"],
                          score=[0.9, 0.5, 0.2, 0.7], source="predicted", voxel_size=VOXEL)
    s.set_predictions(pred)
    layer = viewer.layers["predicted: ribosome"]
    assert list(layer.features["score"]) == [0.9, 0.5, 0.2]
    assert set(layer.features["source"]) == {"predicted"}
    s.set_threshold("ribosome", 0.4)
    assert list(layer.shown) == [True, True, False]
    assert s.counts()["ribosome"]["predicted"] == 2
    layer.selected_data = {0}
    assert s.accept_selected() == 1
    picks = viewer.layers["picks: ribosome"]
    assert list(picks.features["source"]) == ["accepted"]
    assert list(layer.shown) == [True, False]  # threshold still applied after the edit
    layer.selected_data = {0}
    assert s.reject_selected() == 1
    assert s.counts()["ribosome"]["rejected"] == 1
    assert s.training_picks().select(source="rejected").zyx.tolist() == [[2, 2, 2]]
    # the Delete key on a predicted layer also remembers a negative
    viewer.layers["predicted: proteasome"].selected_data = {0}
    viewer.layers["predicted: proteasome"].remove_selected()
    assert s.counts()["proteasome"]["rejected"] == 1
    assert not viewer.layers["rejected"].visible
    s.undo()
    assert s.counts()["proteasome"]["rejected"] == 0
    assert len(viewer.layers["predicted: proteasome"].data) == 1
    assert s.accept_shown() == 1 + 0  # ribosome 0.2 is hidden; proteasome 0.7 shown
    assert s.counts()["proteasome"]["accepted"] == 1


def test_rejected_picks_survive_reopen(make_napari_viewer, tomo_path):
    v = make_napari_viewer()
    s = get_session(v)
    v.open(str(tomo_path), plugin=PLUGIN)
    s.add_class("ribosome", 8)
    s.set_predictions(Picks.from_zyx([[1, 1, 1]], class_name="ribosome", score=0.5, voxel_size=VOXEL))
    s.reject({"ribosome": [0]})
    v.layers.remove("TS_01")
    v2 = make_napari_viewer()
    s2 = get_session(v2)
    v2.open(str(tomo_path), plugin=PLUGIN)
    assert s2.rejected().zyx.tolist() == [[1, 1, 1]]
    assert s2.counts()["ribosome"]["rejected"] == 1


def test_sample_picks_are_adopted(viewer):
    s = get_session(viewer)
    viewer.open_sample(PLUGIN, "tomogram")
    assert s.tomogram is not None and s.tomogram.name == "sample"
    assert len(s.classes) >= 2
    active = viewer.layers.selection.active
    assert active.name == f"picks: {s.active_class}"  # the selected layer and the class agree
    for name in s.classes.names:
        assert s.counts()[name]["annotated"] >= 1
        assert s.layer_for(Key("picks", name), create=False) is viewer.layers[f"picks: {name}"]
    assert s.autosave_path is None  # nothing written for in-memory data


def test_remove_class_refuses_with_picks(two_classes):
    s = two_classes
    s.add_pick((1, 1, 1), "ribosome")
    with pytest.raises(CryoPickerError, match="still has 1 pick"):
        s.remove_class("ribosome")
    s.remove_class("proteasome")
    assert s.classes.names == ["ribosome"]


def test_import_picks_rescales_to_the_tomogram(two_classes):
    s = two_classes
    p = Picks.from_zyx([[2, 4, 6]], class_name="ribosome", voxel_size=VOXEL * 2, tomogram="TS_01")
    s.import_picks(p)
    got = s.annotations()
    np.testing.assert_allclose(got.zyx, [[4, 8, 12]])
    assert got.table["source"].tolist() == ["imported"]
    assert REJECTED not in s.session_layers()


def test_overfitting_hint():
    falling = [{"epoch": i, "train_loss": 1.0 - 0.1 * i, "val_loss": 0.5} for i in range(4)]
    assert overfitting_hint(falling) == ""
    rising = [{"epoch": i, "train_loss": 1.0 - 0.1 * i, "val_loss": 0.5 + 0.05 * max(0, i - 1)}
              for i in range(6)]
    assert "memorise" in overfitting_hint(rising)


def test_a_real_click_adds_a_manual_pick_on_the_current_slice(make_napari_viewer, tomo_path, qtbot):
    from qtpy.QtCore import QPoint, Qt

    v = make_napari_viewer(show=True)
    s = get_session(v)
    v.open(str(tomo_path), plugin=PLUGIN)
    s.add_class("ribosome", 8)
    s.set_active_class("ribosome")
    v.dims.set_point(0, 12 * VOXEL)
    native = v.window._qt_viewer.canvas.native
    qtbot.waitExposed(native)
    centre = QPoint(native.width() // 2, native.height() // 2)
    qtbot.mouseMove(native, centre)
    qtbot.mouseClick(native, Qt.MouseButton.LeftButton, pos=centre)
    layer = v.layers["picks: ribosome"]
    assert len(layer.data) == 1
    assert layer.data[0][0] == pytest.approx(12)
    assert list(layer.features["source"]) == ["manual"]
    assert s.counts()["ribosome"]["annotated"] == 1
    qtbot.keyClick(native, "z", Qt.KeyboardModifier.ControlModifier)  # Ctrl+Z
    assert len(layer.data) == 0


def test_closing_the_tomogram_takes_its_layers_and_reopening_restores_once(viewer, two_classes, tomo_path):
    s = two_classes
    s.add_pick((1, 2, 3), "ribosome")
    s.set_predictions(Picks.from_zyx([[9, 9, 9]], class_name="ribosome", score=0.5, voxel_size=VOXEL))
    viewer.layers.remove("TS_01")
    assert s.tomogram is None
    assert not [lyr.name for lyr in viewer.layers]
    viewer.open(str(tomo_path), plugin=PLUGIN)
    assert s.tomogram is not None
    names = sorted(lyr.name for lyr in viewer.layers)
    assert names == ["TS_01", "picks: ribosome", "predicted: ribosome"]  # the predictions are kept too
    np.testing.assert_allclose(viewer.layers["picks: ribosome"].data, [[1, 2, 3]])
    np.testing.assert_allclose(viewer.layers["predicted: ribosome"].data, [[9, 9, 9]])


def test_predictions_next_to_known_picks_are_left_out(two_classes):
    s = two_classes
    s.add_pick((10, 10, 10), "ribosome")
    n = s.set_predictions(Picks.from_zyx([[10, 10, 12], [10, 10, 30], [10, 10, 11]],
                                         class_name=["ribosome", "ribosome", "proteasome"], voxel_size=VOXEL))
    assert n == 2 and s.last_skipped == 1  # the proteasome next to a ribosome pick stays
    assert s.predictions().zyx.tolist() == [[10, 10, 30], [10, 10, 11]]


def test_viewer_close_keeps_the_autosave(make_napari_viewer, tomo_path, qtbot):
    """Viewer.close() (a script, Jupyter, the --screenshot launcher) removes every layer,
    picks first: the autosave must still hold the picks afterwards, and reopen them."""
    v1 = make_napari_viewer()
    s1 = get_session(v1)
    v1.open(str(tomo_path), plugin=PLUGIN)
    s1.add_class("ribosome", 8)
    s1.add_class("proteasome", 6)
    for zyx in [(3, 4, 5), (6, 7, 8), (9, 10, 11)]:
        s1.add_pick(zyx, "ribosome")
    s1.add_pick((12, 13, 14), "proteasome")
    path = tomo_path.with_name("TS_01.cryopicker.json")
    assert len(json.loads(path.read_text())["picks"]["z"]) == 4
    v1.close()
    qtbot.wait(50)  # let any deferred work of the session run
    assert len(json.loads(path.read_text())["picks"]["z"]) == 4
    v2 = make_napari_viewer()
    s2 = get_session(v2)
    v2.open(str(tomo_path), plugin=PLUGIN)
    np.testing.assert_allclose(v2.layers["picks: ribosome"].data, [[3, 4, 5], [6, 7, 8], [9, 10, 11]])
    np.testing.assert_allclose(v2.layers["picks: proteasome"].data, [[12, 13, 14]])
    assert s2.counts()["ribosome"]["annotated"] == 3


def test_removing_a_picks_layer_by_hand_is_saved_with_a_backup(viewer, two_classes, tomo_path, qtbot):
    s = two_classes
    s.add_pick((3, 4, 5), "ribosome")
    s.add_pick((6, 7, 8), "proteasome")
    path = tomo_path.with_name("TS_01.cryopicker.json")
    viewer.layers.remove("picks: ribosome")  # the user deletes a layer: a real deletion
    qtbot.waitUntil(lambda: len(json.loads(path.read_text())["picks"]["z"]) == 1, timeout=2000)
    assert json.loads(path.read_text())["picks"]["class_name"] == ["proteasome"]
    backup = path.with_name(path.name + ".bak")  # the file before the deletion is kept
    assert len(json.loads(backup.read_text())["picks"]["z"]) == 2
    assert s.undo()  # and the deletion is undoable
    assert s.counts()["ribosome"]["annotated"] == 1
    assert len(json.loads(path.read_text())["picks"]["z"]) == 2


def test_deleting_picks_keeps_a_backup_of_the_previous_autosave(viewer, two_classes, tomo_path):
    s = two_classes
    for zyx in [(3, 4, 5), (6, 7, 8), (9, 10, 11)]:
        s.add_pick(zyx, "ribosome")
    path = tomo_path.with_name("TS_01.cryopicker.json")
    backup = path.with_name(path.name + ".bak")
    assert not backup.exists()  # adding picks needs no backup
    s.delete_picks("ribosome", [0, 1])
    assert len(json.loads(path.read_text())["picks"]["z"]) == 1
    np.testing.assert_allclose(json.loads(backup.read_text())["picks"]["x"], [5, 8, 11])


def test_autosave_goes_beside_the_symlink_that_was_opened(make_napari_viewer, tomo_path, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    link = project / "TS_link.mrc"
    link.symlink_to(tomo_path)
    v = make_napari_viewer()
    s = get_session(v)
    v.open(str(link), plugin=PLUGIN)
    s.add_class("ribosome", 8)
    s.add_pick((3, 4, 5), "ribosome")
    assert s.autosave_path == project / "TS_link.cryopicker.json"
    assert (project / "TS_link.cryopicker.json").exists()
    assert not tomo_path.with_name("TS_01.cryopicker.json").exists()


def test_adding_a_class_keeps_the_tomogram_image_as_it_was(viewer, session):
    """The thick slice that shows particle rings must not average (wash out) the tomogram,
    and a slice thickness the user chose is kept."""
    image = viewer.layers["TS_01"]
    viewer.dims.set_current_step(0, 16)
    session.add_class("ribosome", 8)
    assert viewer.dims.margin_left[0] > 0  # rings on every slice a particle's sphere cuts
    assert image.projection_mode == "none"
    shown = np.asarray(image._slice.image.raw)
    np.testing.assert_allclose(shown, np.asarray(image.data[16]), atol=1e-5)  # slice 16 itself, not a mean
    viewer.dims.margin_left = (2.0, 0.0, 0.0)  # the user's own thickness
    viewer.dims.margin_right = (2.0, 0.0, 0.0)
    session.add_class("proteasome", 12)
    assert viewer.dims.margin_left[0] == 2.0


def test_a_restart_keeps_the_model_and_the_predictions(make_napari_viewer, tomo_path, qtbot):
    """Close napari after training and picking; reopen the tomogram: the picks, the
    predictions (with their thresholds) and the trained model all come back."""
    import torch

    from napari_cryopicker.core.classes import ClassTable, ParticleClass
    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet

    v1 = make_napari_viewer()
    s1 = get_session(v1)
    v1.open(str(tomo_path), plugin=PLUGIN)
    s1.add_class("ribosome", 8)
    s1.add_pick((3, 4, 5), "ribosome")
    torch.manual_seed(0)
    mc = ModelConfig(n_classes=1, f_maps=(4, 8))
    ckpt = Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(),
                      classes=ClassTable([ParticleClass("ribosome", 8)]), voxel_size=VOXEL, best_score=0.5)
    s1.set_checkpoint(ckpt)  # as a finished training run does
    model_file = tomo_path.with_name("TS_01.cryopicker.pt")
    assert model_file.exists()
    preds = Picks.from_zyx([[10, 20, 30], [12, 40, 44]], class_name="ribosome", score=[0.9, 0.4],
                           voxel_size=VOXEL)
    s1.set_predictions(preds)
    s1.set_threshold("ribosome", 0.5)
    v1.close()
    qtbot.wait(50)

    v2 = make_napari_viewer()
    s2 = get_session(v2)
    v2.open(str(tomo_path), plugin=PLUGIN)
    layer = v2.layers["predicted: ribosome"]
    np.testing.assert_allclose(layer.data, [[10, 20, 30], [12, 40, 44]])
    np.testing.assert_allclose(layer.features["score"], [0.9, 0.4])
    assert layer.shown.tolist() == [True, False]  # the threshold came back too
    qtbot.waitUntil(lambda: s2.checkpoint is not None, timeout=30000)  # loaded in the background
    assert s2.checkpoint.classes.names == ["ribosome"] and s2.model_path == model_file
    for k, t in ckpt.state_dict.items():
        assert torch.equal(s2.checkpoint.state_dict[k], t)


def test_gold_fiducials_show_as_a_layer_and_leave_the_picks_selected(viewer, two_classes):
    from napari_cryopicker._napari.overlays import FIDUCIALS_LAYER, show_fiducials
    from napari_cryopicker.core.fiducials import Fiducials

    s = two_classes
    s.set_active_class("ribosome")
    show_fiducials(s, Fiducials(np.array([[10.0, 20.0, 30.0]]), np.array([4.0])))
    layer = viewer.layers[FIDUCIALS_LAYER]
    np.testing.assert_allclose(layer.data, [[10, 20, 30]])
    assert layer.size[0] == pytest.approx(2 * (2 * 4.0 + 1))  # the masked extent
    assert tuple(layer.scale) == tuple(viewer.layers["TS_01"].scale)
    assert viewer.layers.selection.active is viewer.layers["picks: ribosome"]
    assert s._key_of(layer) is None  # not adopted as picks
    show_fiducials(s, Fiducials(np.zeros((0, 3)), np.zeros(0)))  # a new run without beads empties it
    assert len(viewer.layers[FIDUCIALS_LAYER].data) == 0
