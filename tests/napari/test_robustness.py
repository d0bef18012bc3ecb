"""Nothing lost, nothing crashes, in the GUI: damaged autosaves, picks at another voxel size,
and stopped or failed picking runs that leave the earlier picks as they were."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gui_helpers import PLUGIN, VOXEL

from napari_cryopicker._napari.session import Key, get_session
from napari_cryopicker._napari.workers import runs_for
from napari_cryopicker.core.picks import Picks


@pytest.fixture
def notes():
    """What the user was told, in full (the panels' message line; napari's toasts show the
    first sentence of warnings and errors: tests/napari/test_messages.py)."""
    from napari_cryopicker._napari.messages import MESSAGES

    seen: list[str] = []

    def grab(m):
        seen.append(m.text)

    MESSAGES.added.connect(grab)
    yield seen
    MESSAGES.added.disconnect(grab)


DAMAGED = {
    "truncated JSON": lambda good: good[: len(good) // 2],
    "columns of different lengths": lambda good: good.replace('"x": [', '"x": [1.0, ', 1),
    "coordinate not a number": lambda good: good.replace('"z": [', '"z": ["a", ', 1).replace('"y": [', '"y": [0, ', 1)
    .replace('"x": [', '"x": [0, ', 1),
    "bad class table": lambda good: good.replace('"diameter": 8.0', '"diameter": -1', 1),
}


def test_a_damaged_autosave_is_kept_aside_and_the_session_opens(make_napari_viewer, tomo_path, notes):
    path = tomo_path.with_name("TS_01.cryopicker.json")
    kept = path.with_name("TS_01.cryopicker.json.damaged")
    v1 = make_napari_viewer()
    s1 = get_session(v1)
    v1.open(str(tomo_path), plugin=PLUGIN)
    s1.add_class("ribosome", 8)
    s1.add_pick((3, 4, 5), "ribosome")
    v1.layers.remove("TS_01")
    good = path.read_text()
    v2 = make_napari_viewer()
    s2 = get_session(v2)
    for case, damage in DAMAGED.items():
        kept.unlink(missing_ok=True)
        damaged = damage(good)
        path.write_text(damaged)
        notes.clear()
        v2.open(str(tomo_path), plugin=PLUGIN)  # no exception
        assert s2.tomogram is not None and len(s2.annotations()) == 0, case
        assert kept.read_text() == damaged and not path.exists(), case
        msg = next(m for m in notes if m.startswith("Ignoring autosaved annotations"))
        assert str(path) in msg and msg.endswith("; it was kept as TS_01.cryopicker.json.damaged"), case
        # new work is autosaved again, beside the kept file
        if "ribosome" not in s2.classes:
            s2.add_class("ribosome", 8)
        s2.add_pick((1, 2, 3), "ribosome")
        assert json.loads(path.read_text())["picks"]["x"] == [3.0], case
        assert kept.read_text() == damaged
        v2.layers.remove("TS_01")


def test_saved_picks_at_another_voxel_size_are_rescaled_and_said(make_napari_viewer, tomo_path, notes):
    path = tomo_path.with_name("TS_01.cryopicker.json")
    payload = {"format": "napari-cryopicker-annotations", "version": 1, "voxel_size": VOXEL / 2,
               "classes": [{"name": "ribosome", "diameter": 8.0}],
               "picks": {"z": [8.0], "y": [10.0], "x": [12.0], "class_name": ["ribosome"], "score": [1.0],
                         "source": ["manual"]}}
    path.write_text(json.dumps(payload))
    v = make_napari_viewer()
    s = get_session(v)
    v.open(str(tomo_path), plugin=PLUGIN)
    np.testing.assert_allclose(v.layers["picks: ribosome"].data, [[4, 5, 6]])
    assert any(m == f"The saved picks were made at {VOXEL / 2:.4g} A per voxel; they were rescaled to TS_01's "
                    f"{VOXEL:.4g} A voxels" for m in notes), notes
    # the same for picks imported from a file made on a 2x finer tomogram
    s.import_picks(Picks.from_zyx([[2, 4, 6]], class_name="ribosome", voxel_size=VOXEL / 2))
    np.testing.assert_allclose(v.layers["picks: ribosome"].data[-1], [1, 2, 3])
    assert sum("they were rescaled to TS_01's" in m for m in notes) == 2


# -- stopped and failed picking runs -----------------------------------------------------


@pytest.fixture
def with_predictions(session):
    """Earlier picks and predictions, and a real (tiny, untrained) model."""
    import torch

    from napari_cryopicker.core.classes import ClassTable, ParticleClass
    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet

    session.add_class("blob", 8)
    session.add_pick((10, 16, 16), "blob")
    session.set_predictions(Picks.from_zyx([(20, 40, 44), (16, 48, 20)], class_name="blob", score=[0.9, 0.4],
                                           source="predicted", voxel_size=VOXEL))
    mc = ModelConfig(n_classes=1, f_maps=(4, 8), coord_conv=False)
    torch.manual_seed(0)
    ck = Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(),
                    classes=ClassTable([ParticleClass("blob", 8)]), voxel_size=VOXEL)
    session.set_checkpoint(ck)
    session.predict_overrides.update({"device": "cpu", "tile": 16, "margin": 2})  # many small tiles
    return session


def _snapshot(session):
    out = {}
    for key in (Key("picks", "blob"), Key("predicted", "blob")):
        layer = session.layer_for(key, create=False)
        out[key] = (np.array(layer.data), layer.features.copy())
    return out, session.store.n_undo, session.autosave_path.read_bytes()


def _assert_unchanged(session, before):
    layers, n_undo, saved = before
    for key, (data, feats) in layers.items():
        layer = session.layer_for(key, create=False)
        np.testing.assert_array_equal(layer.data, data)
        assert layer.features.equals(feats)
    assert session.store.n_undo == n_undo
    assert session.autosave_path.read_bytes() == saved


def test_stopping_a_picking_run_midway_leaves_earlier_picks(viewer, with_predictions, qtbot, monkeypatch, notes):
    from napari_cryopicker._napari import workers

    s = with_predictions
    before = _snapshot(s)
    run = runs_for(s)["predict"]
    seen_tiles = []
    report = workers.BackgroundTask._report

    def report_then_stop(self, done, total, message):  # worker thread: stop after the second tile
        seen_tiles.append((done, total, message))
        if message == "inference" and done >= 2:
            self.progress.cancel()
        report(self, done, total, message)

    monkeypatch.setattr(workers.BackgroundTask, "_report", report_then_stop)
    run.start()
    qtbot.waitUntil(lambda: not run.running, timeout=30000)
    assert run.task.last_outcome.status == "cancelled"
    done, total, _ = seen_tiles[-1]
    assert 2 <= done < total  # it really stopped in the middle of the tomogram
    _assert_unchanged(s, before)
    assert "Picking stopped; the earlier picks are unchanged" in notes


def test_a_failing_picking_run_leaves_earlier_picks(viewer, with_predictions, qtbot, monkeypatch, notes):
    import napari_cryopicker.core.predict as predict_mod

    s = with_predictions
    before = _snapshot(s)
    calls = {"n": 0}
    segment = predict_mod.segment

    def failing_segment(*a, **k):
        calls["n"] += 1
        raise MemoryError

    monkeypatch.setattr(predict_mod, "segment", failing_segment)
    run = runs_for(s)["predict"]
    run.start()
    qtbot.waitUntil(lambda: not run.running, timeout=30000)
    assert calls["n"] == 1 and run.task.last_outcome.status == "error"
    _assert_unchanged(s, before)
    assert any(m.startswith("Picking failed: out of memory") for m in notes), notes
    monkeypatch.setattr(predict_mod, "segment", segment)
