import numpy as np
import pytest
from scipy import ndimage

from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.labels import make_labels
from napari_cryopicker.core.nms import NMSParams, mp_nms, suppress
from napari_cryopicker.core.picks import Picks


def synthetic_maps(shape, picks, classes, seed=0):
    """A label map from balls plus a smooth, noisy probability of the winning class."""
    rng = np.random.default_rng(seed)
    label = make_labels(shape, picks, classes, "ball")
    prob = np.where(label > 0, 0.9, 0.0).astype(np.float32)
    prob = ndimage.gaussian_filter(prob, 1.0) + rng.uniform(0, 0.05, shape).astype(np.float32)
    return label, np.clip(prob, 0, 1)


def jittered_grid(axes, names, rng):
    """Picks at a grid of centres (each jittered by up to 2 voxels), classes cycled by ``names(i)``."""
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    zyx = g + rng.integers(-2, 3, g.shape)
    return Picks.from_zyx(zyx, class_name=[names(i) for i in range(len(zyx))])


def test_finds_every_particle_once_at_its_centre():
    rng = np.random.default_rng(1)
    classes = ClassTable([ParticleClass("big", 15), ParticleClass("small", 7)])
    # well-separated centres on a jittered grid
    truth = jittered_grid(([12, 34, 56], [12, 34, 56], [12, 34, 56, 78]), lambda i: "big" if i % 2 else "small", rng)
    label, prob = synthetic_maps((70, 70, 90), truth, classes)
    got = mp_nms(label, prob, classes, slab=16)
    assert len(got) == len(truth)
    for name in ("big", "small"):
        a = got.select(class_name=name).zyx
        b = truth.select(class_name=name).zyx
        d = np.linalg.norm(a[:, None] - b[None], axis=-1).min(1)
        assert d.max() <= 1.0
    assert (got.table["score"] > 0.5).all() and (got.table["source"] == "predicted").all()


def test_slab_processing_equals_whole_volume():
    rng = np.random.default_rng(2)
    classes = ClassTable([ParticleClass("a", 11)])
    zyx = rng.uniform(5, 59, (25, 3))
    truth = Picks.from_zyx(zyx, class_name="a")
    label, prob = synthetic_maps((64, 64, 64), truth, classes, seed=3)
    whole = mp_nms(label, prob, classes, slab=64)
    slabbed = mp_nms(label, prob, classes, slab=9)
    assert whole.equals(slabbed)


def test_uint8_probabilities_and_thresholds():
    classes = ClassTable([ParticleClass("a", 9)])
    truth = Picks.from_zyx([[16, 16, 16], [16, 16, 40]], class_name="a")
    label, prob = synthetic_maps((32, 32, 56), truth, classes)
    prob[:, :, 28:] *= 0.3  # the second particle is weak
    q = (prob * 255 + 0.5).astype(np.uint8)
    assert len(mp_nms(label, q, classes, NMSParams(t_seg=0.1, t_lm=0.1))) == 2
    strict = mp_nms(label, q, classes, {"a": {"t_seg": 0.5}})
    assert len(strict) == 1 and abs(strict.zyx[0, 2] - 16) <= 1


def test_plateau_gives_one_deterministic_pick():
    classes = ClassTable([ParticleClass("a", 5)])
    label = np.zeros((20, 20, 20), np.uint8)
    prob = np.zeros((20, 20, 20), np.float32)
    label[5:15, 5:15, 5:15] = 1  # a big flat cube: a plateau after mean pooling
    prob[5:15, 5:15, 5:15] = 1.0
    got = mp_nms(label, prob, classes, NMSParams(t_dist=20))
    assert len(got) == 1
    assert np.allclose(got.zyx[0], [9.5, 9.5, 9.5])
    assert got.equals(mp_nms(label, prob, classes, NMSParams(t_dist=20)))


def test_suppress_keeps_stronger_and_is_order_independent():
    zyx = np.array([[0, 0, 0], [0, 0, 3], [0, 0, 10], [0, 0, 12.5]], float)
    s = np.array([0.5, 0.9, 0.7, 0.7])
    keep = suppress(zyx, s, 4.0)
    assert keep.tolist() == [1, 2]  # tie at 0.7 broken by position
    perm = np.array([3, 2, 1, 0])
    keep2 = suppress(zyx[perm], s[perm], 4.0)
    assert sorted(perm[keep2].tolist()) == [1, 2]


def test_cross_class_duplicates_removed():
    classes = ClassTable([ParticleClass("a", 12), ParticleClass("b", 12)])
    label = np.zeros((24, 24, 24), np.uint8)
    prob = np.zeros((24, 24, 24), np.float32)
    label[8:16, 8:16, 6:12] = 1
    prob[8:16, 8:16, 6:12] = 0.9
    label[8:16, 8:16, 12:18] = 2
    prob[8:16, 8:16, 12:18] = 0.6
    got = mp_nms(label, prob, classes)
    assert got.class_names == ["a"] and len(got) == 1


def test_a_small_class_pick_inside_a_larger_particle_goes_touching_neighbours_stay():
    from napari_cryopicker.core.nms import _cross_class

    classes = ClassTable([ParticleClass("big", 28), ParticleClass("small", 10)])
    per = {c.name: NMSParams() for c in classes}
    zyx = np.array([[30, 30, 30], [30, 30, 41], [30, 30, 49.5], [60, 60, 60]], float)
    names = np.array(["big", "small", "small", "small"], dtype=object)
    scores = np.array([0.9, 0.5, 0.5, 0.5])
    # 11 voxels from the big centre: inside its body (radius 14) but not within the small
    # radius (5), so only the larger-radius rule removes it; 19.5 voxels = touching: kept
    assert _cross_class(zyx, scores, names, classes, per).tolist() == [0, 2, 3]
    scores[1] = 0.95  # the stronger one wins, whichever class it is
    assert _cross_class(zyx, scores, names, classes, per).tolist() == [1, 2, 3]


def test_min_fill_drops_small_blobs_that_do_not_fill_the_particle():
    classes = ClassTable([ParticleClass("big", 15)])
    real = Picks.from_zyx([[20, 20, 20]], class_name="big")
    label, prob = synthetic_maps((40, 40, 64), real, classes)
    label[18:23, 18:23, 45:50] = 1  # a gold-bead-sized blob called "big" with high confidence
    prob[18:23, 18:23, 45:50] = 0.95
    loose = mp_nms(label, prob, classes, NMSParams(t_lm=0.3))
    assert len(loose) == 2 and "fill" in loose.table
    assert loose.table["fill"].max() > 0.4 > 0.1 > loose.table["fill"].min()  # ball in tball: ~0.46
    strict = mp_nms(label, prob, classes, NMSParams(t_lm=0.3, min_fill=0.3))
    assert len(strict) == 1 and abs(strict.zyx[0, 2] - 20) <= 1


def test_refinement_equals_smoothing_the_whole_volume():
    """The batched refinement (per-axis operators on small boxes) finds the same peak as
    mean-pooling the whole volume at full resolution and taking the maximum within one
    block, also for peaks on the volume's edges and corners."""
    from napari_cryopicker.core.nms_peaks import _refine, _smooth

    rng = np.random.default_rng(5)
    shape = (40, 50, 60)
    score = ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 2.5)
    score[score < np.median(score)] = 0
    p = NMSParams(kernel=7, n_pool=2, t_nms=2, bin=3)
    centres = np.concatenate([rng.uniform(0, shape, (60, 3)),
                              [[0, 0, 0], [39, 49, 59], [1, 25, 58], [20, 0.4, 30]]])
    got = _refine(score, centres, p)
    whole = _smooth(score, p.kernel, p.n_pool)
    b = p.bin
    for c, g in zip(np.floor(centres + 0.5).astype(int), got):
        lo = np.maximum(c - b, 0)
        win = whole[lo[0]:c[0] + b + 1, lo[1]:c[1] + b + 1, lo[2]:c[2] + b + 1]
        if win.max() <= 0:
            continue
        expect = np.argwhere(win >= win.max() * (1 - 1e-6)).mean(axis=0) + lo
        np.testing.assert_allclose(g, expect, atol=1e-6)


def test_coarse_grid_finds_the_same_picks_as_full_resolution():
    rng = np.random.default_rng(6)
    classes = ClassTable([ParticleClass("big", 17), ParticleClass("mid", 11)])
    truth = jittered_grid(([9, 30, 51], [9, 32, 55], [9, 32, 55, 78]), lambda i: "big" if i % 3 else "mid", rng)
    label, prob = synthetic_maps((60, 64, 88), truth, classes, seed=6)
    fine = mp_nms(label, prob, classes, params=NMSParams(bin=1))
    coarse = mp_nms(label, prob, classes)  # auto: bin 4 for "big", 2 for "mid"
    assert len(fine) == len(coarse) == len(truth)
    for name in ("big", "mid"):
        a, b = fine.select(class_name=name), coarse.select(class_name=name)
        d = np.linalg.norm(a.zyx[:, None] - b.zyx[None], axis=-1)
        assert d.min(axis=1).max() <= 1.0
        np.testing.assert_allclose(np.sort(a.table["fill"]), np.sort(b.table["fill"]), atol=0.05)


def test_threads_give_the_same_picks_and_can_be_cancelled():
    from napari_cryopicker.core.errors import Cancelled
    from napari_cryopicker.core.progress import Progress

    rng = np.random.default_rng(5)
    classes = ClassTable([ParticleClass("big", 15), ParticleClass("mid", 11), ParticleClass("small", 7)])
    names = ("big", "mid", "small")
    truth = jittered_grid(([12, 34, 56, 78], [12, 34, 56], [12, 34, 56]), lambda i: names[i % 3], rng)
    label, prob = synthetic_maps((90, 70, 70), truth, classes)
    prob = (prob * 255).astype(np.uint8)
    one = mp_nms(label, prob, classes, slab=16, workers=1)
    assert len(one) == len(truth)
    for w in (2, 5):
        assert mp_nms(label, prob, classes, slab=16, workers=w).equals(one)
    seen = []

    def cb(done, total, msg):
        seen.append((done, total))
        if done == 3:
            prog.cancel()

    prog = Progress(callback=cb)
    with pytest.raises(Cancelled):
        mp_nms(label, prob, classes, slab=16, workers=3, progress=prog)
    assert [d for d, _ in seen[:3]] == [1, 2, 3]
    assert max(d for d, _ in seen) < seen[0][1]  # stopped before its last (class, slab) task
