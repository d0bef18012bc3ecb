"""Rotated training crops (TrainConfig.rotate): the labels follow the density."""
import math

import numpy as np
import pytest
from scipy import ndimage

from napari_cryopicker.core.binning import SubvoxelView
from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.picks import Picks
from napari_cryopicker.core.tomogram import Tomogram
from napari_cryopicker.core.train import TrainConfig, train_model
from napari_cryopicker.core.train_data import _Volume, label_diameters
from napari_cryopicker.core.train_rotate import margin, random_rotation, rotated_sample, rotation_for


def _about_z(deg):
    t = math.radians(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, math.cos(t), -math.sin(t)], [0.0, math.sin(t), math.cos(t)]])


def _blob_volume(shape, centres, sigma=1.5):
    vol = np.zeros(shape, np.float32)
    for c in centres:
        vol[tuple(np.asarray(c, int))] = 1000.0
    return ndimage.gaussian_filter(vol, sigma)


def test_random_rotations_are_rotations_within_the_angle():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = random_rotation(rng, 30.0)
        assert np.allclose(r @ r.T, np.eye(3), atol=1e-9) and np.isclose(np.linalg.det(r), 1.0)
        angle = math.degrees(math.acos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
        assert angle <= 30.0 + 1e-6


@pytest.mark.parametrize("factor", [1, 2])
def test_a_turned_crop_keeps_its_label_on_its_particle(factor):
    """A blob 8 voxels off the crop's centre, turned 40 degrees about z: the turned image's
    peak and the painted label sit together where the rotation puts the blob (also from a
    sub-voxel view, whose crop is read at twice the sampling)."""
    shape, crop = (48, 48, 48), (24, 24, 24)
    start = (12, 12, 12)
    centre = np.asarray(start) + (np.asarray(crop) - 1) / 2.0  # 23.5
    blob = np.array([24, 24, 32])  # working-grid voxel, ~8.5 voxels off the centre along x
    if factor == 1:
        data = _blob_volume(shape, [blob])
    else:  # the full-resolution volume; its binned voxel j is full voxels 2j, 2j + 1
        data = SubvoxelView(_blob_volume(tuple(2 * s for s in shape), [2 * blob + 0.5], sigma=3.0), 2)
    tomo = Tomogram(data, 10.0)
    classes = ClassTable([ParticleClass("blob", 7.0)])
    cfg = TrainConfig(label_scale=1.0)
    picks = Picks.from_zyx(blob[None].astype(float), class_name="blob")
    v = _Volume(tomo, 0.0, 100.0, blob[None], picks, np.arange(1), [48, 48, 48], n_pos=1)
    rot = _about_z(40.0)
    x, y = rotated_sample(v, start, crop, rot, classes, cfg, label_diameters(classes, cfg))
    assert x.shape == tuple(factor * c for c in crop) and y.shape == crop
    expected = centre + rot @ (blob - centre) - np.asarray(start)  # crop coordinates
    peak = np.array(np.unravel_index(np.argmax(x), x.shape)) / factor + (factor - 1) / (2 * factor)
    label_centre = np.array(np.nonzero(y == 1)).mean(1)
    assert np.linalg.norm(peak - expected) < 1.0
    assert np.linalg.norm(label_centre - expected) < 1.0
    # and it moved: the unturned blob is ~6 voxels from there
    assert np.linalg.norm((blob - np.asarray(start)) - expected) > 5.0


def test_a_crop_whose_margin_reaches_the_validation_slab_is_not_turned():
    tomo = Tomogram(np.zeros((32, 64, 96), np.float32), 10.0)
    v = _Volume(tomo, 0.0, 1.0, np.zeros((0, 3)), Picks(), np.zeros(0, int), [32, 64, 80],
                val_region=(slice(None), slice(None), slice(80, 96)))
    cfg = TrainConfig(rotate=30.0, rotate_share=1.0)
    crop = (16, 16, 16)
    rng = np.random.default_rng(0)
    far = [rotation_for(v, (8, 24, 20), crop, cfg, rng) for _ in range(20)]
    near = [rotation_for(v, (8, 24, 64), crop, cfg, rng) for _ in range(20)]  # ends right at the slab
    assert all(r is not None for r in far)
    assert all(margin(crop, r)[2] >= 1 for r in far)  # every turn reads beyond the crop...
    assert all(r is None for r in near)  # ...so none ending at the slab is turned
    assert rotation_for(v, (8, 24, 20), crop, TrainConfig(rotate=0.0), rng) is None  # off


def test_training_with_rotations_runs_and_repeats():
    from napari_cryopicker.core.simulate import simulate_tomogram

    sim = simulate_tomogram(shape=(48, 112, 112), seed=3, classes=["ribosome", "blob"], snr=2.0, n_per_class=8)
    tomo = Tomogram(sim.data, sim.voxel_size)
    base = dict(epochs=2, steps_per_epoch=3, batch_size=2, patch=32, f_maps=(4, 8, 16), members=1, device="cpu",
                val_fraction=0.0, binning=1)
    cfg = TrainConfig(**base, rotate=30.0, rotate_share=1.0)
    a = train_model([tomo], [sim.picks], sim.classes, cfg)
    b = train_model([tomo], [sim.picks], sim.classes, cfg)
    c = train_model([tomo], [sim.picks], sim.classes, TrainConfig(**base, rotate=0.0))
    loss = lambda ck: [h["train_loss"] for h in ck.history]  # noqa: E731
    assert np.allclose(loss(a), loss(b), rtol=1e-4)
    assert not np.allclose(loss(a), loss(c), rtol=1e-4)


def test_rotate_wedge_cuts_the_missing_wedge_again_where_the_data_have_it():
    """Noise with a +-60 degree wedge about y, turned 30 degrees about y: the turned crop
    has power inside the data's wedge; with rotate_wedge=60 about as little as an unturned crop
    (a crop's edges leak some everywhere: the spectra are taken through a Hann window)."""
    from napari_cryopicker.core.simulate_optics import apply_missing_wedge, missing_wedge_mask

    rng = np.random.default_rng(0)
    data = apply_missing_wedge(rng.normal(size=(64, 64, 64)).astype(np.float32), 60.0)
    tomo = Tomogram(data, 10.0)
    classes = ClassTable([ParticleClass("blob", 7.0)])
    v = _Volume(tomo, 0.0, 1.0, np.zeros((0, 3), int), Picks(), np.zeros(0, int), [64, 64, 64])
    about_y = np.array([[math.cos(0.52), 0.0, math.sin(0.52)], [0.0, 1.0, 0.0], [-math.sin(0.52), 0.0, math.cos(0.52)]])
    crop, start = (32, 32, 32), (16, 16, 16)
    inside = ~missing_wedge_mask(crop, 70.0)  # well inside the +-60 degree wedge (within 20 degrees of kz)
    inside[0, 0, 0] = False

    h = np.hanning(32)
    window = h[:, None, None] * h[None, :, None] * h[None, None, :]

    def wedge_share(cfg, rot=about_y):
        x, _ = rotated_sample(v, start, crop, rot, classes, cfg, label_diameters(classes, cfg))
        p = np.abs(np.fft.rfftn((x - x.mean()) * window)) ** 2
        return p[inside].sum() / p.sum()

    floor = wedge_share(TrainConfig(), np.eye(3))
    turned = wedge_share(TrainConfig())
    cut = wedge_share(TrainConfig(rotate_wedge=60.0))
    assert turned > 20 * floor
    assert cut < 3 * floor  # the pad of a few voxels leaves a little
