import numpy as np
import pytest

from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.labels import IGNORE, label_counts, make_labels, shape_offsets
from napari_cryopicker.core.picks import Picks


def brute_count(d, mode):
    """Count lattice voxels of each shape independently of shape_offsets."""
    r = (d - 1) / 2
    c = 0 if d % 2 else -0.5
    lo, hi = -(d // 2), -(-d // 2) - 1
    n = 0
    for z in range(lo - 2, hi + 3):
        for y in range(lo - 2, hi + 3):
            for x in range(lo - 2, hi + 3):
                o = np.array([z, y, x]) - c
                in_cube = np.all(np.abs(o) <= r + 1e-9)
                d2 = float(o @ o)
                if mode == "cubic":
                    n += in_cube
                elif mode == "ball":
                    n += in_cube and d2 <= r * r + 1e-9
                else:
                    n += in_cube and d2 <= 2 * r * r + 1e-9
    return n


def test_known_voxel_counts_odd_diameters():
    # cube side d; ball of radius 3 has the classic 123 lattice points
    assert len(shape_offsets(7, "cubic")[0]) == 343
    assert len(shape_offsets(7, "ball")[0]) == 123
    assert len(shape_offsets(9, "ball")[0]) == 257
    # the truncated ball lies between the ball and the cube
    for d in (7, 9, 11):
        nb, nt, nc = (len(shape_offsets(d, m)[0]) for m in ("ball", "tball", "cubic"))
        assert nb < nt < nc == d**3


@pytest.mark.parametrize("d", [4, 6, 7, 8, 9, 10, 11, 12])
@pytest.mark.parametrize("mode", ["cubic", "ball", "tball"])
def test_counts_match_brute_force_including_even(d, mode):
    offs, _ = shape_offsets(d, mode)
    assert len(offs) == brute_count(d, mode)
    span = (offs.max(0) - offs.min(0) + 1).tolist()
    if mode == "ball" and d % 2 == 0:
        # a ball centred between voxels loses the extreme voxels whose neighbours are off-axis
        assert all(d - 2 <= s <= d for s in span)
    else:  # the cube and truncated ball span exactly d voxels along each axis
        assert span == [d, d, d]


def test_make_labels_single_and_edges():
    classes = ClassTable([ParticleClass("a", 7), ParticleClass("b", 9)])
    picks = Picks.from_zyx([[10, 10, 10], [0, 0, 0]], class_name=["a", "b"])
    lab = make_labels((20, 20, 20), picks, classes, "tball")
    assert lab[10, 10, 10] == 1 and lab[0, 0, 0] == 2
    n_t = len(shape_offsets(7, "tball")[0])
    assert (lab == 1).sum() == n_t
    # the corner particle is clipped to the octant inside the volume
    offs = shape_offsets(9, "tball")[0]
    assert (lab == 2).sum() == int(np.all(offs >= 0, axis=1).sum())


def test_nearest_centre_wins_on_overlap():
    classes = ClassTable([ParticleClass("a", 11), ParticleClass("b", 11)])
    picks = Picks.from_zyx([[10, 10, 6], [10, 10, 14]], class_name=["a", "b"])
    lab = make_labels((20, 20, 21), picks, classes, "cubic")
    row = lab[10, 10]
    assert (row[:10] == 1)[1:].all() and (row[11:20] == 2).all()
    assert row[10] == 1  # the tie at equal distance goes to the earlier pick
    # reversed order: DeepETPicker would let the last cube overwrite; here geometry rules
    lab2 = make_labels((20, 20, 21), Picks.concat([picks._subset([False, True]), picks._subset([True, False])]), classes, "cubic")
    assert (lab2[10, 10, :10] == 1)[1:].all() and (lab2[10, 10, 11:20] == 2).all()


def test_rejected_picks_paint_background_and_constant_diameter():
    classes = ClassTable([ParticleClass("a", 9)])
    picks = Picks.from_zyx([[8, 8, 8], [8, 8, 14]], class_name=["a", "a"], source=["manual", "rejected"])
    lab = make_labels((16, 16, 24), picks, classes, "ball", background=IGNORE)
    assert lab[8, 8, 8] == 1 and lab[8, 8, 14] == 0  # explicit background inside the ignore sea
    assert lab[8, 8, 12] == 0  # nearer the rejection: carved out of the pick's ball
    assert lab[0, 0, 0] == IGNORE
    lab7 = make_labels((16, 16, 24), picks.select(source="manual"), classes, "ball", diameter=7)
    assert label_counts(lab7, 1)[1] == 123


def test_a_rejection_on_a_picked_particle_paints_nothing():
    """A candidate of the wrong class rejected on a particle picked as another class says
    nothing about that particle's label: the pick's ball stays whole."""
    classes = ClassTable([ParticleClass("a", 9), ParticleClass("b", 9)])
    picks = Picks.from_zyx([[8, 8, 8], [8, 8, 10]], class_name=["a", "b"], source=["manual", "rejected"])
    before = picks.table.copy()
    lab = make_labels((16, 16, 24), picks, classes, "ball", background=IGNORE)
    alone = make_labels((16, 16, 24), picks.select(source="manual"), classes, "ball", background=IGNORE)
    assert np.array_equal(lab, alone)
    assert picks.table.equals(before)  # the caller's table is not touched


def test_unknown_class_is_a_clear_error():
    classes = ClassTable([ParticleClass("a", 9)])
    with pytest.raises(KeyError, match="ghost"):
        make_labels((8, 8, 8), Picks.from_zyx([[4, 4, 4]], class_name="ghost"), classes)


def test_crop_origin_equals_full_volume_slice():
    rng = np.random.default_rng(0)
    classes = ClassTable([ParticleClass("a", 7), ParticleClass("b", 10)])
    zyx = rng.uniform(0, 40, (30, 3))
    picks = Picks.from_zyx(zyx, class_name=list(rng.choice(["a", "b"], 30)))
    full = make_labels((40, 40, 40), picks, classes)
    crop = make_labels((16, 20, 12), picks, classes, origin=(5, 10, 20))
    assert np.array_equal(crop, full[5:21, 10:30, 20:32])
