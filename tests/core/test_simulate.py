import json
import math
import time

import mrcfile
import numpy as np
import pandas as pd
import pytest
import scipy.fft as sfft
from scipy.spatial.distance import pdist, squareform

from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.errors import Cancelled
from napari_cryopicker.core.progress import Progress
from napari_cryopicker.core.simulate import (
    DEFAULT_CLASSES,
    SHAPES,
    apply_missing_wedge,
    missing_wedge_mask,
    render_particle,
    simulate_tomogram,
    write_simulation,
)

SMALL = (40, 96, 96)


@pytest.fixture(scope="module")
def default_sim():
    t = time.perf_counter()
    sim = simulate_tomogram(seed=0)
    sim.elapsed = time.perf_counter() - t
    return sim


def _radii(sim):
    return np.array([sim.classes[n].radius for n in sim.picks.table["class_name"]])


def test_default_volume_shape_counts_and_speed(default_sim):
    sim = default_sim
    assert sim.data.shape == (96, 256, 256)
    assert sim.data.dtype == np.float32
    assert np.isfinite(sim.data).all()
    assert abs(float(sim.data.mean())) < 1e-3 and abs(float(sim.data.std()) - 1) < 1e-3
    counts = sim.picks.counts()
    assert set(counts) == set(DEFAULT_CLASSES.names)
    for n in counts.values():
        assert 30 <= n <= 45
    # about a second on 2 cores; only a loose bound so slow CI machines pass
    print(f"simulate 96x256x256: {sim.elapsed:.2f} s")
    assert sim.elapsed < 60


def test_truth_picks_metadata(default_sim):
    p = default_sim.picks
    t = p.table
    assert (t["source"] == "imported").all()
    assert (t["score"] == 1.0).all()
    assert (t["tomogram"] == "tomogram").all()
    assert p.voxel_size == 10.0
    assert p.has_angles and np.isfinite(p.angles()).all()
    assert default_sim.angles.shape == (len(p), 3)


def test_deterministic_by_seed():
    a = simulate_tomogram(SMALL, seed=7)
    b = simulate_tomogram(SMALL, seed=7)
    c = simulate_tomogram(SMALL, seed=8)
    assert np.array_equal(a.data, b.data)
    assert a.picks.equals(b.picks)
    assert np.array_equal(a.angles, b.angles)
    assert not np.array_equal(a.data, c.data)
    assert not np.allclose(a.picks.zyx[: len(c.picks)], c.picks.zyx[: len(a.picks)])


def test_picks_inside_slab_and_not_overlapping(default_sim):
    sim = default_sim
    zyx = sim.picks.zyx
    r = _radii(sim)
    assert sim.picks.inside(sim.shape).all()
    z0, z1 = sim.slab
    assert z1 - z0 == round(0.7 * 96)
    # fully inside the slab in z, centre at least r/2 from the y/x borders
    assert (zyx[:, 0] - r >= z0 - 0.5).all() and (zyx[:, 0] + r <= z1 - 0.5).all()
    for ax in (1, 2):
        assert (zyx[:, ax] >= r / 2 - 1e-9).all()
        assert (zyx[:, ax] <= sim.shape[ax] - 1 - r / 2 + 1e-9).all()
    d = squareform(pdist(zyx))
    need = r[:, None] + r[None, :]
    np.fill_diagonal(d, np.inf)
    assert (d >= need).all()
    # distractors keep clear of particles too
    for obj in sim.distractors:
        c = np.asarray(obj["centre_zyx"])
        dist = np.linalg.norm(zyx - c, axis=1)
        if obj["kind"] == "gold":
            assert (dist >= r + obj["radius"]).all()
        else:
            assert (np.abs(dist - obj["radius"]) >= r).all()


def test_counts_classes_and_custom_diameters():
    sim = simulate_tomogram(SMALL, seed=1, n_per_class={"ribosome": 3, "blob": 6}, classes=["ribosome", "blob"])
    assert sim.picks.counts() == {"ribosome": 3, "blob": 6}
    assert sim.classes.names == ["ribosome", "blob"]
    custom = ClassTable([ParticleClass("thing", 11.0), ParticleClass("proteasome", 15.0)])
    sim = simulate_tomogram(SMALL, seed=1, classes=custom, n_per_class=4, distractors=False)
    assert sim.picks.counts() == {"thing": 4, "proteasome": 4}
    assert sim.shapes["proteasome"] == "barrel" and sim.shapes["thing"] in SHAPES
    assert sim.classes["thing"].diameter == 11.0
    # the caller's table is not modified (colours, order)
    assert custom.names == ["thing", "proteasome"]
    assert sim.distractors == []
    # density scales the count with the volume
    dense = simulate_tomogram(SMALL, seed=1, density=20.0, classes=["blob"])
    expect = round(20.0 * np.prod(SMALL) / 1e6)
    assert dense.picks.counts() == {"blob": expect}
    with pytest.raises(ValueError, match="nonsense"):
        simulate_tomogram(SMALL, classes=["nonsense"])


def test_overcrowded_warns_and_places_fewer():
    with pytest.warns(UserWarning, match="crowded"):
        sim = simulate_tomogram((24, 48, 48), seed=0, classes=["ribosome"], n_per_class=200, distractors=False)
    assert 0 < len(sim.picks) < 200
    d = pdist(sim.picks.zyx)
    assert (d >= 25).all()


@pytest.mark.parametrize("shape_name", sorted(SHAPES))
def test_shapes_fit_their_bounding_sphere(shape_name):
    rng = np.random.default_rng(0)
    diameter = 20.0
    for _ in range(3):
        q = rng.standard_normal(4)
        from scipy.spatial.transform import Rotation

        rot = Rotation.from_quat(q / np.linalg.norm(q)).as_matrix()
        vol = np.zeros((41, 41, 41), np.float32)
        c = np.array([20.3, 19.8, 20.1])
        render_particle(vol, c, shape_name, diameter, rot)
        idx = np.argwhere(vol > 0)
        dist = np.linalg.norm(idx - c, axis=1)
        # inside the sphere of diameter d (plus the half-voxel surface ramp) and touching it
        assert dist.max() <= diameter / 2 + 1.0
        assert dist.max() >= diameter / 2 - 1.5
        assert vol.max() <= 1.0 + 1e-6


def test_angles_and_shapes_reproduce_the_particles():
    """The truth (centre, ZYZ angles, class shape) is enough to re-render every particle."""
    from scipy.spatial.transform import Rotation

    sim = simulate_tomogram((48, 96, 96), seed=11, n_per_class=4, keep_clean=True, distractors=False)
    vol = np.zeros(sim.shape, np.float32)
    for (z, y, x), name, ang in zip(sim.picks.zyx, sim.picks.table["class_name"], sim.picks.angles()):
        rot = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix()
        render_particle(vol, (z, y, x), sim.shapes[name], sim.classes[name].diameter, rot)
    np.testing.assert_allclose(vol, sim.clean, atol=1e-4)
    # not trivially: the orientations matter for the non-spherical shapes
    vol2 = np.zeros(sim.shape, np.float32)
    for (z, y, x), name in zip(sim.picks.zyx, sim.picks.table["class_name"]):
        render_particle(vol2, (z, y, x), sim.shapes[name], sim.classes[name].diameter)
    assert np.abs(vol2 - sim.clean).max() > 0.5


def test_no_particles():
    sim = simulate_tomogram((24, 48, 48), seed=0, n_per_class=0)
    assert len(sim.picks) == 0 and sim.data.shape == (24, 48, 48)
    assert np.isfinite(sim.data).all()


def test_missing_wedge_on_white_noise():
    rng = np.random.default_rng(0)
    shape = (32, 24, 40)
    noise = rng.standard_normal(shape).astype(np.float32)
    out = apply_missing_wedge(noise, 60.0)
    keep = missing_wedge_mask(shape, 60.0)
    fo = sfft.rfftn(out)
    fi = sfft.rfftn(noise)
    miss_power = np.abs(fo[~keep]) ** 2
    assert miss_power.sum() < 1e-8 * (np.abs(fo) ** 2).sum()
    np.testing.assert_allclose(fo[keep], fi[keep], rtol=1e-3, atol=1e-3)
    # about (tilt range / 90) of the spectrum is kept: 2/3 for +/-60 degrees
    frac = out.var() / noise.var()
    assert 0.58 < frac < 0.75
    # geometry: the wedge is around kz in the kz-kx plane, for any ky
    kz = sfft.fftfreq(shape[0])[:, None, None]
    kx = sfft.rfftfreq(shape[2])[None, None, :]
    expect = np.abs(kz) <= math.tan(math.radians(60)) * np.abs(kx) + 1e-7
    assert np.array_equal(keep, np.broadcast_to(expect, keep.shape))
    assert missing_wedge_mask(shape, 90.0).all()


def test_missing_wedge_orientation_in_real_space():
    z, y, x = np.meshgrid(np.arange(32), np.arange(32), np.arange(32), indexing="ij")
    # layers stacked along z (xy sheets) live on the kz axis: lost entirely
    layers_z = np.cos(2 * np.pi * 3 * z / 32).astype(np.float32)
    assert np.abs(apply_missing_wedge(layers_z)).max() < 1e-4
    # layers along x and along y (sheets seen edge-on in an xy slice) survive
    for arr in (np.cos(2 * np.pi * 3 * x / 32), np.cos(2 * np.pi * 3 * y / 32)):
        arr = arr.astype(np.float32)
        np.testing.assert_allclose(apply_missing_wedge(arr), arr, atol=1e-4)


def test_simulated_volume_has_empty_wedge():
    sim = simulate_tomogram(SMALL, seed=2, snr=0.5)
    f = sfft.rfftn(sim.data.astype(np.float64))
    keep = missing_wedge_mask(SMALL, 60.0)
    p = np.abs(f) ** 2
    assert p[~keep].sum() < 1e-8 * p.sum()


def _ball_rms(data, centres, radius):
    r = int(math.ceil(radius))
    off = np.argwhere(np.ones((2 * r + 1,) * 3, bool)) - r
    off = off[np.linalg.norm(off, axis=1) <= radius]
    out = []
    for c in np.rint(centres).astype(int):
        idx = c + off
        ok = np.all((idx >= 0) & (idx < data.shape), axis=1)
        v = data[tuple(idx[ok].T)]
        out.append(np.sqrt(np.mean(v**2)))
    return np.array(out)


def test_particles_visible_and_dark():
    sim = simulate_tomogram((64, 160, 160), seed=3, snr=5.0, distractors=False, keep_clean=True)
    d = sim.data
    zyx = sim.picks.zyx
    z0, z1 = sim.slab
    # background points in the slab far from every particle
    rng = np.random.default_rng(0)
    cand = np.column_stack(
        [rng.uniform(z0 + 6, z1 - 6, 3000), rng.uniform(8, 152, 3000), rng.uniform(8, 152, 3000)]
    )
    r = _radii(sim)
    far = np.all(np.linalg.norm(cand[:, None] - zyx[None], axis=2) > r[None] + 8, axis=1)
    bg = cand[far][:100]
    assert len(bg) >= 30
    for cls in sim.classes:
        sel = (sim.picks.table["class_name"] == cls.name).to_numpy()
        fg = _ball_rms(d, zyx[sel], cls.radius)
        bgr = _ball_rms(d, bg, cls.radius)
        assert np.median(fg) > 1.5 * np.median(bgr), cls.name
    # contrast sign: dense protein is dark (negative correlation with the true density)
    c = np.corrcoef(d.ravel(), sim.clean.ravel())[0, 1]
    assert c < -0.2
    # the solid blobs have dark centres
    blob = zyx[(sim.picks.table["class_name"] == "blob").to_numpy()]
    assert d[tuple(np.rint(blob).astype(int).T)].mean() < -1.0


def test_snr_is_signal_over_noise_variance_in_the_slab():
    kw = dict(shape=(48, 96, 96), seed=4, distractors=False)
    clean = simulate_tomogram(snr=None, **kw).data.astype(np.float64)
    noisy = simulate_tomogram(snr=0.8, **kw).data.astype(np.float64)
    sim = simulate_tomogram(snr=0.8, **kw)
    z0, z1 = sim.slab
    a, b = clean[z0:z1].ravel(), noisy[z0:z1].ravel()
    a0, b0 = a - a.mean(), b - b.mean()
    gain = (a0 @ b0) / (a0 @ a0)
    resid = b0 - gain * a0
    snr = np.var(gain * a0) / np.var(resid)
    assert snr == pytest.approx(0.8, rel=0.1)


def test_gold_beads_are_the_darkest_objects():
    sim = simulate_tomogram(SMALL, seed=5, snr=None, n_gold=2, n_membranes=1)
    kinds = [o["kind"] for o in sim.distractors]
    assert kinds.count("gold") == 2 and kinds.count("vesicle") == 1
    gold = np.array([o["centre_zyx"] for o in sim.distractors if o["kind"] == "gold"])
    gold_min = min(float(sim.data[tuple(np.rint(g).astype(int))]) for g in gold)
    part_min = float(sim.data[tuple(np.rint(sim.picks.zyx).astype(int).T)].min())
    assert gold_min < 2 * part_min < 0


def test_progress_and_cancel():
    seen = []
    simulate_tomogram((24, 48, 48), seed=0, progress=Progress(lambda d, t, m: seen.append((d, t, m))))
    assert seen[-1][0] == seen[-1][1] and len(seen) >= 3
    p = Progress()
    p.cancel()
    with pytest.raises(Cancelled):
        simulate_tomogram((24, 48, 48), progress=p)


def test_write_simulation(tmp_path):
    sim = simulate_tomogram((24, 48, 64), seed=0, voxel_size=13.5, classes=["shell", "blob"], n_per_class=3)
    tomo, picks = write_simulation(tmp_path / "out", sim)
    assert tomo == tmp_path / "out" / "tomogram.mrc"
    with mrcfile.open(tomo) as m:
        assert m.data.shape == (24, 48, 64)
        assert float(m.voxel_size.x) == pytest.approx(13.5)
        np.testing.assert_allclose(m.data, sim.data)
    assert picks.read_text().splitlines()[0] == "x,y,z,class,score"
    df = pd.read_csv(picks)
    np.testing.assert_allclose(df[["x", "y", "z"]].to_numpy(), sim.picks.xyz, atol=1e-3)
    assert df["class"].tolist() == sim.picks.table["class_name"].tolist()
    assert (df["score"] == 1.0).all()
    table = ClassTable.from_dict(json.loads((tmp_path / "out" / "classes.json").read_text()))
    assert table.names == ["shell", "blob"] and table.diameters == [13.0, 9.0]
    assert all(c.colour for c in table)
