import numpy as np
import pytest

from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.picks import Picks


def test_canonical_columns_defaults_and_views():
    p = Picks.from_zyx([[1, 2, 3], [4, 5, 6]], class_name=["a", "b"], voxel_size=10)
    assert list(p.table.columns) == ["z", "y", "x", "class_name", "score", "source", "tomogram"]
    assert p.xyz.tolist() == [[3, 2, 1], [6, 5, 4]]
    assert p.table["score"].tolist() == [1.0, 1.0] and p.table["source"].tolist() == ["manual"] * 2
    assert p.counts() == {"a": 1, "b": 1} and p.class_names == ["a", "b"]


def test_select_exclude_and_inside():
    p = Picks.from_zyx([[0, 0, 0], [9, 9, 9], [10, 0, 0], [-0.6, 1, 1]], class_name=["a", "b", "a", "a"],
                       score=[0.9, 0.2, 0.5, 0.7], source=["manual", "predicted", "rejected", "manual"])
    assert len(p.select(class_name="a")) == 3
    assert len(p.select(min_score=0.6)) == 2
    assert p.exclude_source("rejected").table["source"].tolist() == ["manual", "predicted", "manual"]
    assert p.inside((10, 10, 10)).tolist() == [True, True, False, False]


def test_subset_takes_a_mask_and_take_takes_row_numbers_in_order():
    p = Picks.from_zyx([[0, 0, 0], [1, 1, 1], [2, 2, 2]], class_name=["a", "b", "c"], voxel_size=5)
    assert p.subset(np.array([True, False, True])).class_names == ["a", "c"]
    assert p.take([2, 0, 1]).class_names == ["c", "a", "b"] and p.take([2, 0]).voxel_size == 5.0
    # an order cast to booleans would keep rows 1 and 2 in the old order, silently
    with pytest.raises(TypeError, match="take"):
        p.subset(np.argsort([3, 1, 2]))


def test_rescale_keeps_physical_positions_and_concat_guards_voxel_size():
    p = Picks.from_zyx([[10, 20, 30]], voxel_size=10.0)
    q = p.rescaled(5.0)
    assert q.zyx.tolist() == [[20, 40, 60]] and q.voxel_size == 5.0
    with pytest.raises(ValueError, match="different voxel sizes"):
        Picks.concat([p, q])
    both = Picks.concat([p, p.with_tomogram("TS_02")])
    assert both.tomograms == ["", "TS_02"] and both.voxel_size == 10.0


def test_angles_round_trip_and_equals():
    ang = np.array([[10.0, 20.0, 30.0]])
    p = Picks.from_zyx([[1, 1, 1]], angles=ang)
    assert p.has_angles and np.allclose(p.angles(), ang)
    assert p.equals(p.copy()) and not p.equals(Picks.from_zyx([[1, 1, 2]]))


def test_class_table_parse_and_labels():
    t = ClassTable.parse(["ribosome=25", "shell=13"])
    assert t.names == ["ribosome", "shell"] and t.label_of("shell") == 2 and t["ribosome"].radius == 12.5
    assert t.classes[0].colour != t.classes[1].colour
    assert ClassTable.from_dict(t.to_dict()).to_dict() == t.to_dict()
    with pytest.raises(ValueError, match="NAME=DIAMETER"):
        ClassTable.parse(["ribosome"])
    with pytest.raises(ValueError, match="not a number"):
        ClassTable.parse(["ribosome=big"])
    with pytest.raises(ValueError, match="diameter must be > 0"):
        ParticleClass("x", 0)
    with pytest.raises(KeyError, match="unknown class 'ghost'"):
        t["ghost"]
