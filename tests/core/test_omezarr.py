"""OME-Zarr tomograms written by copick and by ome-zarr, read lazily with the voxel size of
their metadata and a chosen scale level."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryopicker.core.errors import TomogramError
from napari_cryopicker.core.omezarr import levels
from napari_cryopicker.core.tomogram import open_tomogram, open_tomogram_near, percentile_stats

zarr = pytest.importorskip("zarr")


@pytest.fixture
def volume():
    return np.random.default_rng(0).normal(0, 1, (24, 40, 36)).astype(np.float32)


def test_a_copick_tomogram_opens_lazily_at_each_level(copick_project, volume):
    _, folder, _ = copick_project(runs={"TS_07": volume})
    path = folder / "ExperimentRuns" / "TS_07" / "VoxelSpacing10.000" / "wbp.zarr"
    lv = levels(path)
    assert [x.voxel_size for x in lv] == [10.0, 20.0, 40.0]
    t = open_tomogram(path)
    assert t.name == "TS_07" and t.voxel_size == 10.0 and t.shape == volume.shape
    assert not isinstance(t.data, np.ndarray)  # lazy: slices read chunks
    np.testing.assert_allclose(np.asarray(t.data[3:5, 10:20, ::3]), volume[3:5, 10:20, ::3])
    assert percentile_stats(t.data) == pytest.approx(percentile_stats(volume), rel=1e-5)
    t1 = open_tomogram(path, level=1)
    assert t1.voxel_size == 20.0 and t1.shape == lv[1].shape == (12, 20, 18)
    with pytest.raises(TomogramError, match=r"wbp\.zarr: has scale levels 0-2 .*not 3"):
        open_tomogram(path, level=3)
    # a project's tomograms are read at the chosen level, or at their coarsest
    assert open_tomogram_near(path, 5).voxel_size == 40.0
    assert open_tomogram_near(path, 1).shape == (12, 20, 18)


def test_an_mrc_tomogram_has_one_level(tmp_path, volume):
    import mrcfile

    path = tmp_path / "t.mrc"
    with mrcfile.new(path) as m:
        m.set_data(volume)
        m.voxel_size = 10.0
    assert open_tomogram_near(path, 2).shape == volume.shape
    with pytest.raises(TomogramError, match="one scale level"):
        open_tomogram(path, level=1)


def test_ome_zarr_written_by_ome_zarr_in_nanometres_with_a_channel_axis(tmp_path, volume):
    writer = pytest.importorskip("ome_zarr.writer")
    from ome_zarr.io import parse_url

    path = tmp_path / "tomo.zarr"
    root = zarr.group(store=parse_url(str(path), mode="w").store)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    transforms = [[{"type": "scale", "scale": [1.0, 0.8, 0.8, 0.8]}]]
    writer.write_multiscale([volume[None]], root, axes=axes, coordinate_transformations=transforms)
    t = open_tomogram(path)
    assert t.voxel_size == pytest.approx(8.0) and t.shape == volume.shape  # nm -> A; channel dropped
    np.testing.assert_allclose(np.asarray(t.data[5]), volume[5])
    np.testing.assert_allclose(np.asarray(t.data[2:4, 1, :]), volume[2:4, 1, :])


def test_bad_zarr_folders_are_named(tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w").create_dataset("0", shape=(4, 4, 4), dtype="f4")
    with pytest.raises(TomogramError, match=r"plain\.zarr: a zarr folder without OME multiscales"):
        open_tomogram(plain)
    with pytest.raises(TomogramError, match=r"missing\.zarr: no such file"):
        open_tomogram(tmp_path / "missing.zarr")
    mrc = tmp_path / "t.mrc"
    from napari_cryopicker.core.tomogram import write_tomogram

    write_tomogram(mrc, np.zeros((4, 4, 4), np.float32), 5.0)
    with pytest.raises(TomogramError, match="one scale level"):
        open_tomogram(mrc, level=1)
