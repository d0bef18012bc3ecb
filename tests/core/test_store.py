"""The annotation store, without a viewer: edits, undo, predictions, counts, the file."""

import subprocess
import sys

import numpy as np
import pytest

from napari_cryopicker.core.annotations import payload_picks, read_annotation_file, write_json_atomic
from napari_cryopicker.core.errors import CryoPickerError
from napari_cryopicker.core.picks import Picks
from napari_cryopicker.core.store import REJECTED, AnnotationStore, Edit, Key, State


MAX_UNDO = 6


def _store() -> AnnotationStore:
    s = AnnotationStore()
    s.reset("tomo", 10.0)
    s.add_class("ribosome", 12)
    s.add_class("proteasome", 8)
    return s


class Recorder:
    def __init__(self, store):
        self.shown, self.changed, self.messages = [], [], []
        store.events.shown.connect(lambda states, make: self.shown.append(set(states)))
        store.events.changed.connect(self.changed.append)
        store.events.message.connect(lambda text, level: self.messages.append((level, text)))


def test_add_undo_redo_and_events():
    s = _store()
    rec = Recorder(s)
    assert s.active_class == "ribosome"  # the first class added
    s.add_pick((5, 6, 7))
    s.add_pick((8, 9, 10), "proteasome")
    assert s.counts()["ribosome"]["manual"] == 1 and s.counts()["proteasome"]["annotated"] == 1
    assert rec.shown == [{Key("picks", "ribosome")}, {Key("picks", "proteasome")}]
    assert rec.changed == [True, True]
    assert s.undo_label == "add proteasome"
    assert s.undo() and s.counts()["proteasome"]["annotated"] == 0
    assert s.redo() and s.counts()["proteasome"]["annotated"] == 1
    np.testing.assert_allclose(s.annotations().select(class_name="proteasome").zyx, [[8, 9, 10]])
    s.move_pick("ribosome", 0, (1, 2, 3))
    np.testing.assert_allclose(s.annotations().select(class_name="ribosome").zyx, [[1, 2, 3]])
    assert s.undo()
    np.testing.assert_allclose(s.annotations().select(class_name="ribosome").zyx, [[5, 6, 7]])
    # a new edit drops the redo branch
    s.add_pick((1, 1, 1))
    assert not s.can_redo


def test_history_is_bounded_and_forget_leaves_no_trace(monkeypatch):
    import napari_cryopicker.core.store as store_mod

    monkeypatch.setattr(store_mod, "MAX_UNDO", 6)
    s = _store()
    for i in range(MAX_UNDO + 5):
        s.add_pick((i, 0, 0))
    assert s.n_undo == MAX_UNDO
    key = Key("picks", "ribosome")
    before = s.state(key)
    edit = Edit("remove layer", [(key, before, State.empty())])
    s.record(edit, save=False)
    assert s.counts()["ribosome"]["annotated"] == 0
    s.forget(edit)
    # the picks come back; the step is gone (and the oldest went when it came: the bound)
    assert s.counts()["ribosome"]["annotated"] == MAX_UNDO + 5 and s.n_undo == MAX_UNDO - 1


def test_predictions_threshold_accept_reject():
    s = _store()
    s.add_pick((50, 50, 50))
    preds = Picks.from_zyx([(50, 51, 50), (10, 10, 10), (20, 20, 20), (30, 30, 30)],
                           class_name=["ribosome", "ribosome", "ribosome", "proteasome"],
                           score=[0.9, 0.8, 0.2, 0.6], voxel_size=10.0)
    assert s.set_predictions(preds) == 3 and s.last_skipped == 1  # one sits on a pick
    s.set_threshold("ribosome", 0.5)
    c = s.counts()["ribosome"]
    assert (c["predicted"], c["predicted_total"]) == (1, 2)
    np.testing.assert_allclose(s.predictions().zyx, [[10, 10, 10], [30, 30, 30]])
    assert len(s.predictions(shown_only=False)) == 3
    assert s.accept_shown("ribosome") == 1
    assert s.counts()["ribosome"]["accepted"] == 1
    assert s.reject({"proteasome": [0]}) == 1
    assert s.counts()["proteasome"]["rejected"] == 1
    train = s.training_picks()
    assert sorted(train.table["source"]) == ["accepted", "manual", "rejected"]
    # deleting a prediction remembers it as a rejection, in one undo step
    assert s.delete_picks("ribosome", [0], kind="predicted") == 1
    assert s.counts()["ribosome"]["rejected"] == 1 and s.undo_label.startswith("reject 1")
    s.undo()
    assert s.counts()["ribosome"]["rejected"] == 0
    # accept as another class
    assert s.accept({"ribosome": [0]}, as_class="proteasome") == 1
    assert s.counts()["proteasome"]["accepted"] == 1
    with pytest.raises(CryoPickerError, match="unknown class"):
        s.accept({"ribosome": [0]}, as_class="nope")
    s.clear_predictions()
    assert s.counts()["ribosome"]["predicted_total"] == 0


def test_training_classes_and_remove_class():
    s = _store()
    s.add_pick((5, 5, 5))
    assert s.training_classes().names == ["ribosome"]
    with pytest.raises(CryoPickerError, match="still has 1 pick"):
        s.remove_class("ribosome")
    s.remove_class("proteasome")
    assert s.classes.names == ["ribosome"] and "proteasome" not in s.thresholds
    assert not s.can_undo  # the history named the removed class


def test_import_rescales_and_selects_its_tomogram():
    s = _store()
    rec = Recorder(s)
    p = Picks.from_zyx([(10, 10, 10), (4, 4, 4)], class_name="ribosome", voxel_size=5.0,
                       tomogram=["tomo", "other"])
    assert s.import_picks(p) == 1
    np.testing.assert_allclose(s.annotations().zyx, [[5, 5, 5]])  # 5 A voxels -> 10 A
    assert s.counts()["ribosome"]["imported"] == 1
    assert rec.messages and rec.messages[0][0] == "warning" and "rescaled" in rec.messages[0][1]
    with pytest.raises(CryoPickerError, match="none named"):
        s.import_picks(Picks.from_zyx([(1, 1, 1), (2, 2, 2)], class_name="x", tomogram=["a", "b"]))


def test_payload_round_trip_through_a_file(tmp_path):
    s = _store()
    s.add_pick((5, 6, 7))
    s.set_predictions(Picks.from_zyx([(20, 20, 20), (40, 40, 40)], class_name="proteasome",
                                     score=[0.7, 0.3], voxel_size=10.0))
    s.reject({"proteasome": [1]})
    s.set_threshold("proteasome", 0.5)
    s.set_active_class("proteasome")
    path = write_json_atomic(tmp_path / "t.cryopicker.json", s.payload())
    payload = read_annotation_file(path)  # the schema check of the file reader
    assert sorted(payload_picks(payload).table["source"]) == ["manual", "rejected"]

    t = AnnotationStore()
    t.reset("tomo", 10.0)
    rec = Recorder(t)
    assert t.load(payload, undoable=False) == 2
    assert t.classes.names == ["ribosome", "proteasome"] and t.active_class == "proteasome"
    assert t.thresholds["proteasome"] == 0.5
    assert t.counts() == s.counts()
    assert not t.can_undo  # a restore is no edit
    assert rec.shown == [{Key("picks", "ribosome"), REJECTED, Key("predicted", "proteasome")}]
    # an undoable load adds the picks (not the predictions) as one step
    u = AnnotationStore()
    u.reset("tomo", 20.0)
    assert u.load(payload, undoable=True) == 2
    np.testing.assert_allclose(u.annotations().zyx, [[2.5, 3, 3.5]])  # rescaled to 20 A voxels
    assert u.counts()["proteasome"]["predicted_total"] == 0 and u.n_undo == 1


def test_core_never_imports_qt_or_napari():
    code = ("import sys, importlib, pkgutil, napari_cryopicker.core as c\n"
            "for m in pkgutil.iter_modules(c.__path__):\n"
            "    importlib.import_module('napari_cryopicker.core.' + m.name)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PySide6'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
