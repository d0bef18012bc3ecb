import mrcfile
import numpy as np
import pytest

from napari_cryopicker.core.binning import (
    auto_binning,
    bin_volume,
    binned_tomogram,
    binning_held_back,
    classes_binned,
    picks_from_binned,
    picks_to_binned,
    unbin_map,
)
from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.picks import Picks
from napari_cryopicker.core.progress import Progress
from napari_cryopicker.core.tomogram import open_tomogram


def test_bin_volume_of_a_memory_map_read_slab_by_slab(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(21, 34, 40)).astype(np.float32)
    with mrcfile.new(tmp_path / "t.mrc") as m:
        m.set_data(vol)
        m.voxel_size = (7.0, 7.0, 7.0)
    tomo = open_tomogram(tmp_path / "t.mrc")
    expect = vol[:20, :34, :40].reshape(10, 2, 17, 2, 20, 2).mean((1, 3, 5))
    seen = []
    got = bin_volume(tomo.data, 2, Progress(callback=lambda d, t, m: seen.append(d)), slab_voxels=5000)
    assert got.shape == (10, 17, 20) and np.allclose(got, expect, atol=1e-6)
    assert len(seen) > 2  # many slabs, not one read of the whole map
    b = binned_tomogram(tomo, 2)
    assert b.voxel_size == 14.0 and b.scale == (14.0, 14.0, 14.0) and b.shape == (10, 17, 20)
    assert binned_tomogram(tomo, 1) is tomo


def test_a_blob_keeps_its_position_through_binning_and_back():
    z, y, x = np.mgrid[:40, :48, :56].astype(float)
    centre = np.array([17.0, 22.5, 31.25])
    vol = np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / (2 * 3.0 ** 2))
    for f in (2, 3):
        b = bin_volume(vol, f)
        w = b / b.sum()
        grid = np.mgrid[: b.shape[0], : b.shape[1], : b.shape[2]]
        com = np.array([(g * w).sum() for g in grid])  # centre of mass, binned voxels
        p = Picks.from_zyx(com[None], class_name="a", voxel_size=10.0 * f)
        back = picks_from_binned(p, f)
        assert np.allclose(back.zyx[0], centre, atol=0.05), (f, back.zyx[0])
        assert back.voxel_size == pytest.approx(10.0)
        again = picks_to_binned(back, f)
        assert np.allclose(again.zyx, p.zyx) and again.voxel_size == pytest.approx(10.0 * f)


def test_auto_binning_keeps_the_smallest_class_seven_voxels_across():
    def table(*d):
        return ClassTable([ParticleClass(f"c{i}", v) for i, v in enumerate(d)])

    assert auto_binning(table(28, 24, 14)) == 2
    assert auto_binning(table(28, 13.9)) == 1
    assert auto_binning(table(28)) == 4
    assert auto_binning(table(60)) == 4  # capped
    assert auto_binning(table(6)) == 1
    assert auto_binning(ClassTable()) == 1
    t = classes_binned(table(28, 14), 2)
    assert t.diameters == [14.0, 7.0] and t.names == ["c0", "c1"]
    assert binning_held_back(table(28, 24, 14, 12)) == (["c3"], 1, 2)  # a ferritin-sized look-alike
    assert binning_held_back(table(28, 24, 14)) == (["c2"], 2, 3)  # training warns only at full resolution
    assert binning_held_back(table(28, 12, 11)) == (["c2", "c1"], 1, 4)
    assert binning_held_back(table(12, 11)) == ([], 1, 1)  # neither alone: a small-particle project
    assert binning_held_back(table(6)) == ([], 1, 1)


def test_unbin_map_restores_the_full_grid_of_odd_shapes():
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    up = unbin_map(a, 2, (7, 9, 10))
    assert up.shape == (2, 7, 9, 10)
    assert up[1, 5, 3, 9] == a[1, 2, 1, 4]
    assert up[0, 6, 8, 0] == a[0, 2, 3, 0]  # the dropped remainder takes the nearest voxel
    assert unbin_map(a[0], 2, (5, 8, 10)).shape == (5, 8, 10)


def test_a_subvoxel_view_is_the_binned_grid_over_full_resolution_blocks(tmp_path):
    """Shape and slices on the binned grid, blocks at full resolution (from a memory map, not
    read whole); its percentiles are the binned tomogram's; mirror padding at the edges is
    the full-resolution block's."""
    from napari_cryopicker.core.binning import SubvoxelView, subvoxel_tomogram, working_tomogram
    from napari_cryopicker.core.predict import read_block
    from napari_cryopicker.core.tomogram import percentile_stats

    rng = np.random.default_rng(0)
    data = rng.normal(size=(21, 30, 34)).astype(np.float32)
    path = tmp_path / "t.mrc"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 7.0
    tomo = open_tomogram(path)
    view = SubvoxelView(tomo.data, 2)
    assert view.shape == (10, 15, 17) and view.ndim == 3
    np.testing.assert_array_equal(view[3:5, 0:15, 16:17], data[6:10, 0:30, 32:34])
    assert view[4:2, 0:1, 0:1].shape == (0, 2, 2)
    with pytest.raises(TypeError, match="step 1"):
        view[::2, :, :]
    with pytest.raises(TypeError, match="three slices"):
        view[1]
    # its statistics are the binned tomogram's: its block means are normalised as those are
    binned = bin_volume(data, 2)
    np.testing.assert_allclose(view.strided_sample(1), binned, atol=1e-6)
    np.testing.assert_allclose(view.strided_sample(3), binned[::3, ::3, ::3], atol=1e-6)
    np.testing.assert_allclose(percentile_stats(view), percentile_stats(binned), atol=1e-6)
    np.testing.assert_allclose(percentile_stats(view, max_samples=100), percentile_stats(binned, max_samples=100),
                               atol=1e-6)
    block = read_block(view, [-1, 13, 2], [3, 4, 2])
    np.testing.assert_array_equal(block, np.pad(data[0:4, 26:30, 4:8], ((2, 0), (0, 4), (0, 0)), mode="symmetric"))
    st = subvoxel_tomogram(tomo, 2)
    assert st.shape == (10, 15, 17) and st.voxel_size == 14.0 and st.path == tomo.path
    assert working_tomogram(tomo, 2).shape == (10, 15, 17)
    assert isinstance(working_tomogram(tomo, 2).data, np.ndarray)  # block means, in memory
    assert working_tomogram(tomo, 2, subvoxels=True).data.full is tomo.data
