"""The Particles panel: a sortable table of every particle, jump-to on a click, and review keys
that accept / reject / re-class candidates and move on (real viewer, real Qt events)."""

from __future__ import annotations

import numpy as np
import pytest
from gui_helpers import VOXEL, dock
from qtpy.QtCore import Qt

from napari_cryopicker.core.picks import Picks


@pytest.fixture
def reviewed(viewer, session):
    # scores 0.9 > 0.7 > 0.5 > 0.3: the review queue is this order
    w = _panel(viewer, session, [[20, 40, 44], [10, 16, 16], [16, 48, 20], [25, 10, 50]],
               ["ribosome", "proteasome", "ribosome", "proteasome"], [0.7, 0.9, 0.3, 0.5])
    return w, session


def _panel(viewer, session, zyx, classes, scores, thresholds=None):
    """The Particles panel over these predictions, one ribosome picked (classes ribosome, proteasome)."""
    from napari_cryopicker._napari.widgets.particles import ParticlesWidget

    session.add_class("ribosome", 8)
    session.add_class("proteasome", 6)
    session.add_pick((5, 6, 7), "ribosome")
    session.set_predictions(Picks.from_zyx(zyx, class_name=classes, score=scores, voxel_size=VOXEL), skip_known=False)
    session.thresholds.update(thresholds or {})
    return dock(viewer, ParticlesWidget)


def _cell(w, row, col):
    from napari_cryopicker._napari.review import COLUMNS

    return w.model.data(w.model.index(row, COLUMNS.index(col)))


def _click_header(w, qtbot, col):
    from qtpy.QtCore import QPoint

    h = w.table.horizontalHeader()
    x = h.sectionViewportPosition(col) + h.sectionSize(col) // 2
    qtbot.mouseClick(h.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(x, h.height() // 2))


def test_the_table_lists_every_particle_and_sorts_by_any_column(reviewed, qtbot):
    w, s = reviewed
    assert w.model.rowCount() == 5
    assert sorted(w.model.frame["kind"]) == ["pick", "prediction", "prediction", "prediction", "prediction"]
    # default order: best score first
    assert [_cell(w, i, "score") for i in range(4)] == ["1.000", "0.900", "0.700", "0.500"]
    # a click on the z header sorts by z
    from napari_cryopicker._napari.review import COLUMNS

    w.show()
    _click_header(w, qtbot, COLUMNS.index("z"))
    z = [float(_cell(w, i, "z")) for i in range(5)]
    assert z == sorted(z) or z == sorted(z, reverse=True)
    _click_header(w, qtbot, COLUMNS.index("z"))  # again: the other way
    assert [float(_cell(w, i, "z")) for i in range(5)] == z[::-1]
    # positions in A beside the voxels
    row = int(np.flatnonzero(w.model.frame["kind"] == "pick")[0])
    assert float(_cell(w, row, "x_A")) == pytest.approx(7 * VOXEL, abs=0.5)
    # the threshold hides a prediction from the table as from the canvas
    s.set_threshold("ribosome", 0.5)  # (the table rebuilds once a burst of edits is over)
    qtbot.waitUntil(lambda: w.model.rowCount() == 4, timeout=2000)
    w.show_kind.setCurrentIndex(3)  # rejected only
    assert w.model.rowCount() == 0


def test_clicking_a_row_centres_the_viewer_and_moves_the_slice(reviewed, viewer, qtbot):
    w, s = reviewed
    f = w.model.frame
    row = int(np.flatnonzero((f["kind"] == "prediction") & (f["z"] == 25))[0])
    rect = w.table.visualRect(w.model.index(row, 1))
    qtbot.mouseClick(w.table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert viewer.dims.point[0] == pytest.approx(25 * VOXEL)
    assert viewer.camera.center[-2:] == pytest.approx((10 * VOXEL, 50 * VOXEL))
    layer = viewer.layers["predicted: proteasome"]
    assert layer.selected_data == {int(f.loc[row, "index"])}
    assert "z 25" in w.where.text()


def test_review_keys_answer_and_move_on(reviewed, viewer, qtbot):
    w, s = reviewed
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.layers.selection.active = viewer.layers["picks: ribosome"]
    qtbot.keyClick(canvas, "n")  # the best candidate: proteasome 0.9 at z 10
    assert w.review.current.zyx == (10, 16, 16)
    assert viewer.dims.point[0] == pytest.approx(10 * VOXEL)
    qtbot.waitUntil(lambda: len(w.ortho.images) == 3, timeout=3000)  # read off the GUI thread
    assert w.ortho.images[1].width() == 2 * w.ortho.half + 1
    qtbot.keyClick(canvas, "n")
    qtbot.keyClick(canvas, "b")
    assert w.review.current.zyx == (10, 16, 16)
    qtbot.keyClick(canvas, "g")  # accept -> a proteasome pick; on to ribosome 0.7
    assert s.counts()["proteasome"]["accepted"] == 1
    assert w.review.current.zyx == (20, 40, 44)
    qtbot.keyClick(canvas, "r")  # reject -> a negative; on to proteasome 0.5
    assert s.counts()["ribosome"]["rejected"] == 1
    assert w.review.current.zyx == (25, 10, 50)
    s.set_active_class("ribosome")
    qtbot.keyClick(canvas, "t")  # a proteasome candidate that is a ribosome
    picks = s.annotations()
    assert len(picks.select(class_name="ribosome")) == 2
    assert np.allclose(picks.select(class_name="ribosome").zyx[-1], (25, 10, 50))
    assert w.review.current.zyx == (16, 48, 20)  # the last one left
    qtbot.waitUntil(lambda: w.model.frame["kind"].value_counts().to_dict() == {"pick": 3, "rejected": 1,
                                                                               "prediction": 1}, timeout=2000)
    # every answer is one undo step
    s.undo()
    assert len(s.annotations().select(class_name="ribosome")) == 1
    assert "N next candidate" in w.keys_help.text()


def test_answers_need_a_candidate(reviewed, viewer):
    from napari_cryopicker.core.errors import CryoPickerError

    w, s = reviewed
    with pytest.raises(CryoPickerError, match="press N"):
        w.review.accept()
    f = w.model.frame
    w.review.go_to(w.review.row_of(f, int(np.flatnonzero(f["kind"] == "pick")[0])))
    with pytest.raises(CryoPickerError, match="not a prediction"):
        w.review.reject()
    # the button reports it instead of raising
    w.btn_reject.click()
    assert s.counts()["ribosome"]["rejected"] == 0


def test_ortho_planes_read_from_the_memory_map(tomo_path):
    """XY / XZ / YZ through a particle, from the MRC on disk, NaN beyond its edges."""
    import mrcfile

    from napari_cryopicker._napari.review import ortho_slices
    from napari_cryopicker.core.tomogram import open_tomogram

    tomo = open_tomogram(tomo_path)
    with mrcfile.open(tomo_path) as m:
        vol = np.asarray(m.data, dtype=np.float32)
    xy, xz, yz = ortho_slices(tomo.data, (10.2, 16, 15.6), 4)
    np.testing.assert_array_equal(xy, vol[10, 12:21, 12:21])
    np.testing.assert_array_equal(xz, vol[6:15, 16, 12:21])
    np.testing.assert_array_equal(yz, vol[6:15, 12:21, 16])
    xy, xz, _ = ortho_slices(tomo.data, (0, 1, 62), 3)
    assert np.isnan(xz[:3]).all() and np.isfinite(xz[3:, :5]).all() and np.isnan(xz[:, 5:]).all()


class SlowVolume:
    """A tomogram on a slow disk: every read takes 0.4 s (an OME-Zarr chunk on a network share)."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, data.ndim
        self.reads = 0

    def __getitem__(self, idx):
        import time

        time.sleep(0.4)
        self.reads += 1
        return self.data[idx]


def test_ortho_planes_are_read_off_the_gui_thread_and_only_the_newest_is_shown(reviewed, qtbot):
    import time

    from napari_cryopicker._napari.widgets.particles import PlaneReader

    w, s = reviewed
    vol = SlowVolume(np.asarray(s.tomogram.data, dtype=np.float32))
    shown = []
    reader = PlaneReader(lambda planes, tag: shown.append((tag, planes)))
    t = time.monotonic()
    for i, zyx in enumerate([(10, 16, 16), (20, 40, 44), (16, 48, 20)]):
        reader.request(vol, zyx, 4, i)
    assert time.monotonic() - t < 0.3  # three requests, no wait on the GUI thread
    qtbot.waitUntil(lambda: len(shown) > 0, timeout=5000)
    qtbot.wait(900)
    # the second request is overtaken before it starts (the first may be too); only the newest is shown
    assert [tag for tag, _ in shown] == [2] and vol.reads in (3, 6)  # 3 planes per read; never 9
    np.testing.assert_array_equal(shown[0][1][0], vol.data[16, 44:53, 16:25])
    reader.close()


def test_the_3d_view_leaves_add_mode_and_says_picking_is_2d(viewer, session, qtbot):
    from napari_cryopicker._napari.session import PickingSession

    session.add_class("ribosome", 8)
    session.set_active_class("ribosome")
    layer = viewer.layers["picks: ribosome"]
    assert layer.mode == "add"
    from napari_cryopicker._napari.messages import MESSAGES

    viewer.dims.ndisplay = 3
    assert layer.mode == "pan_zoom"
    assert MESSAGES.last.text == PickingSession.THREE_D_HINT
    session.select_class_number(1)  # a number key in 3D does not arm add mode
    assert layer.mode == "pan_zoom"
    viewer.dims.ndisplay = 2
    session.select_class_number(1)
    assert layer.mode == "add"


def test_doubtful_first_orders_by_distance_to_the_threshold(reviewed, viewer):
    w, s = reviewed
    s.thresholds.update({"ribosome": 0.62, "proteasome": 0.45})
    w.order.setCurrentText("doubtful first")
    q = w.review.candidates()
    # |score - threshold|: proteasome 0.5 -> 0.05, ribosome 0.7 -> 0.08, proteasome 0.9 -> 0.45
    # (ribosome 0.3 is below its threshold: not shown, not queued)
    assert [tuple(r) for r in q[["class", "score"]].to_numpy()][:3] == [
        ("proteasome", 0.5), ("ribosome", 0.7), ("proteasome", 0.9)]
    w.next()
    assert w.review.current.zyx == (25, 10, 50)


def test_doubtful_first_takes_the_classes_in_turn(viewer, session):
    """Three ribosome candidates right at their threshold are more doubtful than a
    proteasome far above its own; the queue still asks about the proteasome, the class with
    fewer picks, first, then the ribosomes, most doubtful first."""
    w = _panel(viewer, session, [[20, 40, 44], [20, 16, 16], [20, 48, 20], [20, 10, 50]],
               ["ribosome", "ribosome", "ribosome", "proteasome"], [0.63, 0.64, 0.67, 0.9],
               {"ribosome": 0.62, "proteasome": 0.45})
    w.order.setCurrentText("doubtful first")
    q = w.review.candidates()
    assert [tuple(r) for r in q[["class", "score"]].to_numpy()] == [
        ("proteasome", 0.9), ("ribosome", 0.63), ("ribosome", 0.64), ("ribosome", 0.67)]
    w.next()
    assert w.review.current.zyx == (20, 10, 50)


def test_two_tables_share_the_keys_and_give_them_back(reviewed, viewer, qtbot):
    """The table exists as a tab and as a panel of its own: the newest one answers the keys;
    when it goes, the other one gets them back; when both go, N does nothing again."""
    from napari.utils.key_bindings import coerce_keybinding

    from napari_cryopicker._napari.widgets.particles import ParticlesWidget

    first, s = reviewed
    second = ParticlesWidget(viewer)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, "n")
    assert second.review.current is not None and first.review.current is None
    with qtbot.waitSignal(second.destroyed, timeout=3000):
        second.deleteLater()
    qtbot.keyClick(canvas, "n")
    assert first.review.current is not None
    viewer.window.remove_dock_widget(first.parentWidget() if first.parentWidget() is not None else first)
    with qtbot.waitSignal(first.destroyed, timeout=3000):
        first.deleteLater()
    assert viewer.keymap.get(coerce_keybinding("N")) is None


def test_an_answer_goes_to_the_particle_on_screen_after_other_edits(reviewed, viewer, qtbot):
    """Indices move when another panel (or an undo) edits the layer: the answer follows the
    candidate's position, not its old index."""
    w, s = reviewed
    q = w.review.candidates()
    w.review.go_to(w.review.row_of(q, int(np.flatnonzero(q["z"] == 25)[0])))  # proteasome #2 of 2
    s.accept({"proteasome": [0]})  # the Correct panel accepts proteasome #1: #2 becomes #1
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, "g")
    got = sorted(map(tuple, s.annotations().select(class_name="proteasome").zyx.tolist()))
    assert got == [(10, 16, 16), (25, 10, 50)]


def test_unlike_the_clicks_first_puts_the_odd_candidates_first(viewer, tmp_path):
    """Seven clicked solid balls; six predictions of the class at one score, three on solid
    balls and three on hollow shells of the same size (what a few-click network calls the
    same class). The shells come first in the "unlike the clicks first" queue: the
    tomogram's density around each candidate is compared with the clicks'
    (core.doubt.unlike_clicks). Neither of the other orders looks at the density."""
    from napari_cryopicker._napari.session import get_session
    from napari_cryopicker._napari.widgets.particles import ParticlesWidget
    from napari_cryopicker.core.tomogram import write_tomogram

    rng = np.random.default_rng(2)
    shape = (24, 96, 96)
    g = np.indices(shape).reshape(3, -1).T
    vol = rng.normal(0, 0.3, shape).astype(np.float32)
    centres = [(12, y, x) for y in range(12, 96, 24) for x in range(12, 96, 24)]  # 16 sites
    clicks, solid, hollow = centres[:7], centres[7:10], centres[10:13]
    for c in clicks + solid + hollow:
        d = np.linalg.norm(g - np.asarray(c), axis=1).reshape(shape)
        vol[(d <= 5) & ((d >= 3.5) if c in hollow else True)] -= 1.0
    s = get_session(viewer)
    viewer.open(str(write_tomogram(tmp_path / "balls.mrc", vol, VOXEL)), plugin="napari-cryopicker")
    s.add_class("ribosome", 10)
    for c in clicks:
        s.add_pick(c, "ribosome")
    s.set_predictions(Picks.from_zyx(solid + hollow, class_name="ribosome", score=0.8, voxel_size=VOXEL),
                      skip_known=False)
    s.thresholds.update({"ribosome": 0.5})
    w = dock(viewer, ParticlesWidget)
    w.order.setCurrentText("unlike the clicks first")
    q = w.review.candidates()
    first = {tuple(int(v) for v in r) for r in q[["z", "y", "x"]].to_numpy()[:3]}
    assert first == set(hollow), q
    for order in ("best first", "doubtful first"):  # equal scores and novelty: by class, then z, y, x
        w.order.setCurrentText(order)
        assert {tuple(int(v) for v in r) for r in w.review.candidates()[["z", "y", "x"]].to_numpy()[:3]} == set(solid)
