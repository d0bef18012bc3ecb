"""The Qt-free project: many tomograms, each with its annotation file beside it."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest

from napari_cryopicker.core.annotations import (
    find_autosave,
    new_payload,
    payload_picks,
    payload_predictions,
    read_annotation_file,
    store_predictions,
    write_json_atomic,
)
from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.errors import CryoPickerError
from napari_cryopicker.core.picks import Picks
from napari_cryopicker.core.project import Project
from napari_cryopicker.core.tomogram import open_tomogram

CLASSES = ClassTable([ParticleClass("ribosome", 8.0), ParticleClass("proteasome", 6.0)])


def _mrc(path, voxel=10.0, shape=(16, 32, 32)):
    with mrcfile.new(path) as m:
        m.set_data(np.random.default_rng(0).normal(size=shape).astype(np.float32))
        m.voxel_size = voxel
    return path


def _annotate(path, picks: Picks):
    tomo = open_tomogram(path)
    payload = new_payload(tomo, CLASSES)
    t = picks.table
    payload["picks"] = {"z": t["z"].tolist(), "y": t["y"].tolist(), "x": t["x"].tolist(),
                        "class_name": t["class_name"].tolist(), "score": t["score"].tolist(),
                        "source": t["source"].tolist()}
    write_json_atomic(path.with_name(path.stem + ".cryopicker.json"), payload)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "tomos"
    d.mkdir()
    for name in ("TS_01", "TS_02", "TS_03"):
        _mrc(d / f"{name}.mrc")
    _annotate(d / "TS_01.mrc", Picks.from_zyx([[4, 5, 6], [8, 9, 10], [3, 3, 3]],
                                              class_name=["ribosome", "proteasome", "ribosome"],
                                              source=["manual", "accepted", "rejected"], voxel_size=10.0))
    _annotate(d / "TS_02.mrc", Picks.from_zyx([[5, 5, 5]], class_name="ribosome", source="imported",
                                              voxel_size=10.0))
    return d


def test_a_folder_becomes_a_project_with_counts_per_tomogram_and_class(folder):
    p = Project()
    added = p.add(folder)
    assert [t.name for t in added] == ["TS_01", "TS_02", "TS_03"]
    assert p.add(folder / "TS_02.mrc") == []  # already listed
    c = p.counts().set_index(["tomogram", "class_name"])
    assert c.loc[("TS_01", "ribosome"), ["picks", "predicted", "rejected"]].tolist() == [1, 0, 1]
    assert c.loc[("TS_01", "proteasome"), "picks"] == 1 and c.loc[("TS_02", "ribosome"), "picks"] == 1
    tot = p.totals()
    assert tot["tomogram"].tolist() == ["TS_01", "TS_02", "TS_03"]
    assert tot["picks"].tolist() == [2, 1, 0] and tot["rejected"].tolist() == [1, 0, 0]
    assert p.classes().names == ["ribosome", "proteasome"]
    with pytest.raises(CryoPickerError, match="no such tomogram"):
        p.add(folder / "TS_99.mrc")


def test_training_set_of_the_ticked_tomograms_with_picks(folder):
    p = Project()
    p.add(folder)
    tomos, picks = p.training_set()
    assert [t.name for t in tomos] == ["TS_01", "TS_02"]  # TS_03 has no picks
    assert picks[0].table["source"].tolist() == ["manual", "accepted", "rejected"]
    assert set(picks[0].tomograms) == {"TS_01"}
    assert p.training_set(imported=False)[0][0].name == "TS_01" and len(p.training_set(imported=False)[0]) == 1
    p.get("TS_01").use = False
    assert [t.name for t in p.training_set()[0]] == ["TS_02"]
    with pytest.raises(CryoPickerError, match="has picks yet"):
        p.training_set(["TS_03"])


def test_picks_of_a_batch_run_are_stored_beside_each_tomogram(folder):
    p = Project()
    p.add(folder)
    for name in ("TS_01", "TS_03"):
        tomo = open_tomogram(p.get(name).path)
        preds = Picks.from_zyx([[7, 8, 9], [9, 9, 9]], class_name=["proteasome", "ribosome"], score=[0.9, 0.4],
                               source="predicted", voxel_size=10.0)
        store_predictions(tomo, preds, CLASSES, {"ribosome": 0.35})
    tot = p.totals().set_index("tomogram")
    assert tot.loc["TS_01", "predicted"] == 2 and tot.loc["TS_01", "picks"] == 2  # the picks stay
    payload = read_annotation_file(find_autosave(folder / "TS_03.mrc"))  # made for TS_03
    assert payload["thresholds"] == {"ribosome": 0.35}
    assert payload_predictions(payload).table["score"].tolist() == [0.9, 0.4]
    assert len(payload_picks(payload)) == 0
    # a file saved at another scale level (20 A voxels) gets the predictions in its voxels
    payload["voxel_size"] = 20.0
    write_json_atomic(find_autosave(folder / "TS_03.mrc"), payload)
    store_predictions(open_tomogram(p.get("TS_03").path), preds, CLASSES)
    payload = read_annotation_file(find_autosave(folder / "TS_03.mrc"))
    assert payload_predictions(payload).zyx.tolist() == [[3.5, 4, 4.5], [4.5, 4.5, 4.5]]


def test_the_project_file_round_trips_and_a_damaged_annotation_file_is_named(folder, tmp_path):
    p = Project()
    p.add(folder)
    p.get("TS_02").use = False
    f = p.save(tmp_path / "job.cryopicker-project.json")
    q = Project.load(f)
    assert q.names == p.names and [t.use for t in q] == [True, False, True] and q.path == f
    (folder / "TS_02.cryopicker.json").write_text("{broken")
    tot = q.totals().set_index("tomogram")
    assert "TS_02.cryopicker.json" in tot.loc["TS_02", "problem"] and tot.loc["TS_01", "picks"] == 2
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CryoPickerError, match="bad.json: not a napari-cryopicker project"):
        Project.load(tmp_path / "bad.json")


def test_two_folders_with_the_same_tomogram_name_are_told_apart(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        _mrc(tmp_path / d / "TS_01.mrc")
    p = Project()
    p.add([tmp_path / "a" / "TS_01.mrc", tmp_path / "b" / "TS_01.mrc"])
    assert sorted(p.names) == ["TS_01", "b/TS_01"] or sorted(p.names) == ["TS_01", "a/TS_01"]


def test_counts_read_only_the_annotation_files_that_changed(folder, monkeypatch):
    """The table refreshes after every edit: unchanged files are not read again."""
    import napari_cryopicker.core.project as project_mod

    p = Project()
    p.add(folder)
    reads = []
    real = project_mod.read_annotation_file
    monkeypatch.setattr(project_mod, "read_annotation_file", lambda f: reads.append(f.name) or real(f))
    first = p.totals()
    assert sorted(reads) == ["TS_01.cryopicker.json", "TS_02.cryopicker.json"]
    reads.clear()
    assert p.totals().equals(first) and reads == []
    _annotate(folder / "TS_02.mrc", Picks.from_zyx([[5, 5, 5], [9, 9, 9]], class_name="ribosome", voxel_size=10.0))
    assert p.totals().set_index("tomogram").loc["TS_02", "picks"] == 2 and reads == ["TS_02.cryopicker.json"]
