"""Clicks moved onto their particle's centre of density before the networks learn from
them (core.snap): on a tomogram written to disk by mrcfile, off-centre clicks of dark (and
of bright) particles come back near the centres, a click pulled onto a neighbour stays,
rejections and small classes are left alone, and each pick is moved once (training: test_train)."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_cryopicker.core.classes import ClassTable
from napari_cryopicker.core.picks import Picks
from napari_cryopicker.core.snap import SNAP_MAX_SHIFT, ClickSnapping, polarity, snap_to_density
from napari_cryopicker.core.tomogram import open_tomogram

R = 11.0  # particle radius (voxels)


def _crowd(rng):
    """Centres of 18 particles (touching neighbours: 2.1 radii apart at the closest) in a 64 x 160 x 160 box."""
    out = []
    while len(out) < 18:
        p = rng.uniform([R + 2, R + 2, R + 2], [64 - R - 2, 160 - R - 2, 160 - R - 2])
        if all(np.linalg.norm(p - q) > 2.1 * R for q in out):
            out.append(p)
    return np.array(out)


@pytest.fixture(scope="module")
def crowd(tmp_path_factory):
    """An MRC (written by mrcfile) of dark, lumpy particles of radius R, touching neighbours, in noise."""
    rng = np.random.default_rng(5)
    centres = _crowd(rng)
    vol = np.zeros((64, 160, 160), np.float32)
    g = np.indices(vol.shape).astype(np.float32)
    for c in centres:
        d2 = sum((g[i] - c[i]) ** 2 for i in range(3))
        vol -= (d2 <= R * R) * (1.0 + 0.3 * rng.standard_normal(vol.shape).astype(np.float32))
    vol = ndimage.gaussian_filter(vol, 1.5) + 0.5 * rng.standard_normal(vol.shape).astype(np.float32)
    path = tmp_path_factory.mktemp("snap") / "crowd.mrc"
    with mrcfile.new(str(path)) as m:
        m.set_data(vol.astype(np.float32))
        m.voxel_size = 10.0
    return path, centres


def _off(centres, rng, by):
    d = rng.normal(size=centres.shape)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return centres + d * by


def test_off_centre_clicks_come_back_to_the_centres(crowd):
    path, centres = crowd
    data = open_tomogram(path).data
    clicks = _off(centres, np.random.default_rng(1), 0.5 * R)  # half a radius off, as a hand clicks
    assert polarity(data, clicks, R) == -1.0  # dark particles
    moved = snap_to_density(data, clicks, R)
    before = np.linalg.norm(clicks - centres, axis=1)
    after = np.linalg.norm(moved - centres, axis=1)
    assert np.allclose(before, 0.5 * R)
    assert after.mean() < 0.15 * R and after.max() < 0.3 * R, after / R
    # bright particles (the other contrast convention) the same way, their polarity found
    flipped = -np.asarray(data)
    assert polarity(flipped, clicks, R) == 1.0
    assert np.allclose(snap_to_density(flipped, clicks, R), moved, atol=1e-3)
    # a click on the centre stays near it
    assert np.linalg.norm(snap_to_density(data, centres, R) - centres, axis=1).max() < 0.2 * R


def test_a_click_pulled_further_than_the_limit_stays_where_it_was(crowd):
    path, centres = crowd
    data = open_tomogram(path).data
    # 1.2 radii out from a particle, away from its neighbours: its density pulls the click in
    tree = cKDTree(centres)
    far = []
    for c in centres:
        for d in ((0, 1.0, 0), (0, -1.0, 0), (0, 0, 1.0), (0, 0, -1.0)):  # in y or x
            p = c + 1.2 * R * np.array(d)
            if np.all(p > R) and np.all(p < np.array(data.shape) - R) and tree.query(p, k=2)[0][1] > 2.0 * R:
                far.append(p)
    far = np.array(far[:4])
    assert len(far) >= 2
    free = snap_to_density(data, far, R, sign=-1.0, max_shift=5.0)
    assert np.linalg.norm(free - far, axis=1).min() > SNAP_MAX_SHIFT * R  # it would go onto the particle
    assert np.array_equal(snap_to_density(data, far, R, sign=-1.0), far)  # with the limit it stays


def test_click_snapping_moves_big_classes_positive_picks_once(crowd, monkeypatch):
    import napari_cryopicker.core.snap as snap

    path, centres = crowd
    data = open_tomogram(path).data
    classes = ClassTable.parse([f"big={2 * R}", "small=12"])
    clicks = _off(centres, np.random.default_rng(2), 0.4 * R)
    picks = Picks.concat([
        Picks.from_zyx(clicks[:10], class_name="big", source="manual", voxel_size=10.0),
        Picks.from_zyx(clicks[10:14], class_name="big", source="rejected", voxel_size=10.0),
        Picks.from_zyx(clicks[14:], class_name="small", source="manual", voxel_size=10.0),
    ])
    asked = []
    real = snap.snap_to_density
    monkeypatch.setattr(snap, "snap_to_density", lambda d, zyx, r, **k: asked.append(len(zyx)) or real(d, zyx, r, **k))
    s = ClickSnapping([data], classes)
    assert s.names == ["big"]
    out = s.apply([picks])[0]
    assert np.array_equal(picks.zyx, clicks[np.r_[0:10, 10:14, 14:18]])  # the user's picks are not touched
    assert np.array_equal(out.zyx[10:], picks.zyx[10:])  # rejections and the small class stay
    err = np.linalg.norm(out.zyx[:10] - centres[:10], axis=1)
    assert err.mean() < 0.5 * np.linalg.norm(clicks[:10] - centres[:10], axis=1).mean()
    assert asked == [10]
    more = Picks.concat([picks, Picks.from_zyx(clicks[17:18] + 0.0, class_name="big", source="accepted",
                                               voxel_size=10.0)])
    again = s.apply([more])[0]
    assert asked == [10, 1]  # only the new pick is matched (live training hands the whole table each epoch)
    assert np.array_equal(again.zyx[:10], out.zyx[:10])


def test_a_stop_while_clicks_are_moved_stops_there(crowd):
    from napari_cryopicker.core.errors import Cancelled
    from napari_cryopicker.core.progress import Progress

    path, centres = crowd
    classes = ClassTable.parse([f"big={2 * R}"])
    picks = Picks.from_zyx(centres, class_name="big", source="manual", voxel_size=10.0)
    prog = Progress()
    prog.cancel()
    with pytest.raises(Cancelled, match="before the first epoch"):
        ClickSnapping([open_tomogram(path).data], classes, progress=prog).apply([picks])
