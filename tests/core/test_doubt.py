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
