"""The order of the review queue: what an answer would teach the model most comes first."""

import numpy as np

from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.doubt import NOVELTY, RIVAL, doubt

TABLE = ClassTable([ParticleClass("ribosome", 10), ParticleClass("proteasome", 8)])
T = {"ribosome": 0.5, "proteasome": 0.5}


def test_near_the_threshold_first():
    d = doubt([[0, 0, 0], [50, 50, 50], [90, 90, 90]], ["ribosome"] * 3, [0.9, 0.55, 0.7], T, TABLE,
              known=np.array([[1, 1, 1], [51, 51, 51], [91, 91, 91]]))
    assert list(np.argsort(d)) == [1, 2, 0]
    np.testing.assert_allclose(d, [0.4, 0.05, 0.2])  # all next to a click: no novelty


def test_a_rival_class_on_the_candidate_and_distance_from_clicks_add_doubt():
    zyx = [[0, 0, 0], [0, 0, 3], [40, 40, 40], [80, 80, 80]]
    cls = ["ribosome", "proteasome", "ribosome", "ribosome"]
    d = doubt(zyx, cls, [0.8, 0.8, 0.8, 0.8], T, TABLE, known=np.array([[0, 0, 1], [40, 40, 41], [80, 80, 95]]))
    # the first two sit on each other (3 voxels apart, within a radius): both rivals
    np.testing.assert_allclose(d[:3], [0.3 - RIVAL, 0.3 - RIVAL, 0.3])
    # 15 voxels from the nearest click, 1.5 diameters: half the novelty
    np.testing.assert_allclose(d[3], 0.3 - NOVELTY * 0.5)
    # with no click at all, everything is new
    np.testing.assert_allclose(doubt(zyx[2:], cls[2:], [0.8, 0.8], T, TABLE), [0.3 - NOVELTY] * 2)
    assert doubt(np.zeros((0, 3)), [], [], T, TABLE).shape == (0,)


def _balls(shape, centres, radius, hollow=False, rng=None):
    g = np.indices(shape).reshape(3, -1).T
    vol = np.zeros(shape, np.float32)
    for c in centres:
        d = np.linalg.norm(g - np.asarray(c), axis=1).reshape(shape)
        vol[(d <= radius) & ((d >= radius - 1.5) if hollow else True)] += 1.0
    if rng is not None:
        vol += rng.normal(0, 0.3, shape).astype(np.float32)
    return vol


def test_shell_profiles_do_not_change_when_the_particle_turns():
    from napari_cryopicker.core.doubt import shell_profiles

    rng = np.random.default_rng(0)
    vol = rng.normal(0, 1, (21, 21, 21)).astype(np.float32)
    vol[8:13, 10, 4:17] += 5.0  # an elongated body along x
    turned = np.ascontiguousarray(np.rot90(vol, 1, axes=(0, 2)))  # now along z
    a, b = shell_profiles(vol, [[10, 10, 10]], 6), shell_profiles(turned, [[10, 10, 10]], 6)
    assert a.shape == (1, 14)
    np.testing.assert_allclose(a, b, atol=1e-9)
    # a solid ball: density 1 out to its radius and 0 beyond, no spread inside
    ball = _balls((31, 31, 31), [(15, 15, 15)], 5)
    p = shell_profiles(ball, [[15, 15, 15]], 8)[0]
    np.testing.assert_allclose(p[:5], 1.0)
    np.testing.assert_allclose(p[7:9], 0.0)
    np.testing.assert_allclose(p[9:14], 0.0)
    # at the edge of the volume the cube is mirrored, not cut
    assert np.isfinite(shell_profiles(ball, [[0, 0, 30]], 8)).all()


def test_unlike_clicks_finds_the_candidates_that_do_not_look_like_the_clicks():
    """Clicked solid balls; candidates that are solid balls too, and hollow shells of the
    same size that a network might call the same class. The shells are unlike, the balls not,
    and doubt() with the term (the panel's "unlike the clicks first") puts the shells before
    the balls at equal scores."""
    from napari_cryopicker.core.doubt import UNLIKE, unlike_clicks

    rng = np.random.default_rng(1)
    table = ClassTable([ParticleClass("ribosome", 10)])
    grid = [(z, y, x) for z in (10, 30) for y in range(10, 100, 20) for x in range(10, 100, 20)]
    clicks, solid, hollow = grid[:12], grid[12:18], grid[18:24]
    vol = _balls((40, 100, 100), clicks + solid, 5, rng=rng) + _balls((40, 100, 100), hollow, 5, hollow=True)
    cand = np.array(solid + hollow, float)
    u = unlike_clicks(vol, cand, ["ribosome"] * 12, np.array(clicks, float), ["ribosome"] * 12, table)
    assert u[:6].max() < 0.5 and u[6:].min() > 0.9, u
    d = doubt(cand, ["ribosome"] * 12, [0.9] * 12, {"ribosome": 0.5}, table, known=np.array(clicks, float), unlike=u)
    assert set(np.argsort(d)[:6]) == set(range(6, 12))
    np.testing.assert_allclose(d[6:] - d[0], -UNLIKE * u[6:] + UNLIKE * u[0])  # the scores, clicks and novelty are equal
    # too few clicks of a class to compare with: no opinion
    assert not unlike_clicks(vol, cand, ["ribosome"] * 12, np.array(clicks[:5], float), ["ribosome"] * 5,
                             table).any()


def test_the_queue_takes_the_classes_in_turn_the_least_picked_first():
    from napari_cryopicker.core.doubt import class_turns

    # ribosome candidates are all more doubtful than the proteasome's, but the queue
    # alternates: each class's most doubtful first, the class with fewer picks leading
    keys = np.array([0.01, 0.02, 0.03, 0.30, 0.20, 0.04])
    cls = np.array(["ribosome", "ribosome", "ribosome", "proteasome", "proteasome", "ribosome"])
    order = np.argsort(class_turns(keys, cls, {"ribosome": 30, "proteasome": 5}), kind="stable")
    assert list(order) == [4, 0, 3, 1, 2, 5]
    # more ribosome picks than proteasome picks no more: the ribosome leads each round
    order = np.argsort(class_turns(keys, cls, {"ribosome": 2, "proteasome": 5}), kind="stable")
    assert list(order) == [0, 4, 1, 3, 2, 5]
    assert class_turns(np.zeros(0), np.zeros(0, str)).shape == (0,)
