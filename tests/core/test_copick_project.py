"""copick projects through the copick library: classes from pickable objects, picks written
back where copick reads them (ExperimentRuns/<run>/Picks/), and read again."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryopicker.core.copick_project import (open_project, project_classes, read_project_picks,
                                                    write_project_picks)
from napari_cryopicker.core.errors import CryoPickerError
from napari_cryopicker.core.picks import Picks

copick = pytest.importorskip("copick")
VS = 10.0


@pytest.fixture
def project(copick_project):
    objects = [
        {"name": "ribosome", "is_particle": True, "label": 1, "color": [255, 0, 0, 255], "radius": 140.0},
        {"name": "proteasome", "is_particle": True, "label": 2, "color": [0, 128, 255, 255], "radius": 80.0},
        {"name": "membrane", "is_particle": False, "label": 3, "color": [0, 255, 0, 255]},
    ]
    cfg, folder, _ = copick_project(objects, runs={"TS_1": None, "TS_2": None})
    return cfg, folder


def test_classes_come_from_the_pickable_particles(project):
    root = open_project(project[0])
    classes = project_classes(root, VS)
    assert classes.names == ["ribosome", "proteasome"]  # the membrane is no particle
    assert classes["ribosome"].diameter == pytest.approx(28.0)
    assert classes["ribosome"].colour.lower() == "#ff0000"


def test_picks_written_back_are_read_by_copick_and_by_us(project):
    cfg, folder = project
    picks = Picks.from_zyx([[10, 20, 30], [5, 6, 7], [40, 41, 42]], class_name=["ribosome", "ribosome", "proteasome"],
                           score=[0.9, 0.8, 0.7], tomogram=["TS_1", "TS_1", "TS_2"], voxel_size=VS)
    picks.table[["rot", "tilt", "psi"]] = [[0.0, 0.0, 0.0], [30.0, 40.0, 50.0], [0.0, 90.0, 0.0]]
    done = write_project_picks(open_project(cfg), picks, user_id="cryopicker", session_id="1")
    assert sorted(done) == ["TS_1/ribosome", "TS_2/proteasome"]
    assert (folder / "ExperimentRuns" / "TS_1" / "Picks" / "cryopicker_1_ribosome.json").exists()
    # copick itself, from a fresh root, sees them
    run = copick.from_file(str(cfg)).get_run("TS_1")
    (pk,) = run.get_picks(object_name="ribosome", user_id="cryopicker", session_id="1")
    xyz, mats = pk.numpy()
    np.testing.assert_allclose(xyz, [[300, 200, 100], [70, 60, 50]])
    assert [p.score for p in pk.points] == pytest.approx([0.9, 0.8])
    back = read_project_picks(open_project(cfg), VS, user_id="cryopicker")
    assert len(back) == 3 and set(back.tomograms) == {"TS_1", "TS_2"}
    b = back.select(class_name="ribosome")
    np.testing.assert_allclose(b.zyx, [[10, 20, 30], [5, 6, 7]])
    np.testing.assert_allclose(b.table[["rot", "tilt", "psi"]].to_numpy()[1], [30, 40, 50], atol=1e-6)
    # writing again replaces that user's and session's picks, not adds to them; a class
    # without picks now is emptied in the runs written
    two = picks.select(class_name="ribosome").copy()
    two.table["tomogram"] = ["TS_1", "TS_2"]
    write_project_picks(open_project(cfg), two, user_id="cryopicker", session_id="1")
    again = read_project_picks(open_project(cfg), VS, user_id="cryopicker")
    assert len(again) == 2 and again.class_names == ["ribosome"]
    assert len(read_project_picks(open_project(cfg), VS, user_id="someone-else")) == 0


def test_reading_adds_the_transforms_shift_and_keeps_zero_scores(project):
    """copick's particle centre is the location plus the transform's translation (refined
    shifts, copick's full_positions); a score of 0 stays 0."""
    cfg, _ = project
    run = copick.from_file(str(cfg)).get_run("TS_1")
    mats = np.tile(np.eye(4), (2, 1, 1))
    mats[0, :3, 3] = [5.0, -10.0, 20.0]
    run.new_picks("ribosome", "0", "sta").from_numpy(np.array([[100.0, 200.0, 300.0], [10.0, 20.0, 30.0]]), mats,
                                                     scores=np.array([0.0, 0.5]))
    p = read_project_picks(open_project(cfg), VS, user_id="sta")
    np.testing.assert_allclose(p.zyx, [[32.0, 19.0, 10.5], [3.0, 2.0, 1.0]])
    assert list(p.table["score"]) == [0.0, 0.5]


def test_bad_names_are_refused_with_the_projects_names(project):
    root = open_project(project[0])
    with pytest.raises(CryoPickerError, match="ferritin.*not pickable objects.*proteasome, ribosome"):
        write_project_picks(root, Picks.from_zyx([[1, 2, 3]], class_name="ferritin", tomogram="TS_1",
                                                 voxel_size=VS), user_id="u", session_id="1")
    with pytest.raises(CryoPickerError, match="TS_9 are not runs"):
        write_project_picks(root, Picks.from_zyx([[1, 2, 3]], class_name="ribosome", tomogram="TS_9",
                                                 voxel_size=VS), user_id="u", session_id="1")
    with pytest.raises(CryoPickerError, match="no such copick config"):
        open_project(project[1] / "nope.json")


def test_exporting_to_the_config_or_the_root_folder_lands_in_the_project(project):
    """Export as copick to the project's config goes through copick (never overwriting the
    config); to the project's root folder, under ExperimentRuns/ where copick looks."""
    from napari_cryopicker.core.formats import write_picks

    cfg, folder = project
    before = cfg.read_text()
    picks = Picks.from_zyx([[5, 6, 7], [8, 9, 10]], class_name=["ribosome", "proteasome"], voxel_size=VS,
                           tomogram="TS_1")
    written = write_picks(picks, cfg, "copick", user_id="bob", session_id="3")
    assert cfg.read_text() == before
    assert sorted(p.name for p in written) == ["bob_3_proteasome.json", "bob_3_ribosome.json"]
    assert all(p.parent == folder / "ExperimentRuns" / "TS_1" / "Picks" for p in written)
    root = copick.from_file(str(cfg))
    (pk,) = root.get_run("TS_1").get_picks(object_name="ribosome", user_id="bob", session_id="3")
    np.testing.assert_allclose(pk.numpy()[0], [[70, 60, 50]])  # x, y, z in A
    with pytest.raises(CryoPickerError, match=r"copick\.json: class\(es\) nope are not pickable objects"):
        write_picks(Picks.from_zyx([[1, 1, 1]], class_name="nope", voxel_size=VS, tomogram="TS_1"), cfg, "copick")

    write_picks(picks.with_tomogram("TS_2"), folder, "copick", user_id="eve", session_id="1")
    root = copick.from_file(str(cfg))
    got = root.get_run("TS_2").get_picks(user_id="eve", session_id="1")
    assert sorted(p.pickable_object_name for p in got) == ["proteasome", "ribosome"]
