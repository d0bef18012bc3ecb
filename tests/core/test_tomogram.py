import mrcfile
import numpy as np
import pytest

from napari_cryopicker.core.errors import TomogramError
from napari_cryopicker.core.tomogram import (
    is_tomogram_path, normalise, open_tomogram, percentile_stats, read_voxel_size, robust_normalisation,
    write_tomogram,
)


def test_write_then_open_memory_mapped_with_voxel_size(tmp_path):
    vol = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    p = write_tomogram(tmp_path / "TS_01.rec", vol, voxel_size=13.48)
    t = open_tomogram(p)
    assert t.shape == (6, 7, 8) and t.name == "TS_01"
    assert t.voxel_size == pytest.approx(13.48, abs=1e-3) and t.scale == pytest.approx((13.48,) * 3, abs=1e-3)
    assert isinstance(t.data, np.memmap) and np.array_equal(np.asarray(t.data), vol)
    assert read_voxel_size(p) == pytest.approx(13.48, abs=1e-3)
    assert is_tomogram_path("a.MRC") and is_tomogram_path("b.st") and not is_tomogram_path("c.star")


def test_anisotropic_voxel_size_maps_to_napari_scale(tmp_path):
    p = tmp_path / "aniso.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((2, 3, 4), np.float32))
        m.voxel_size = (10.0, 11.0, 12.0)  # x, y, z
    assert open_tomogram(p).scale == pytest.approx((12.0, 11.0, 10.0))


def test_zero_voxel_size_warns_and_assumes_one(tmp_path):
    p = tmp_path / "novs.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((2, 3, 4), np.float32))
    with pytest.warns(UserWarning, match="novs.mrc.*no voxel size"):
        t = open_tomogram(p)
    assert t.voxel_size == 1.0


@pytest.mark.parametrize(
    "make, needle",
    [
        (lambda p: p.write_bytes(b"not an mrc file at all" * 10), "not a readable MRC|not a valid MRC"),
        (lambda p: mrcfile.new(p, data=np.zeros((5, 6), np.float32)).close(), "2D image"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, make, needle):
    p = tmp_path / "bad.mrc"
    make(p)
    with pytest.raises(TomogramError, match=needle) as e:
        open_tomogram(p)
    assert "bad.mrc" in str(e.value)


def test_truncated_mrc_is_rejected(tmp_path):
    p = write_tomogram(tmp_path / "trunc.mrc", np.ones((8, 8, 8), np.float32))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) - 500])
    with pytest.raises(TomogramError, match="trunc.mrc"):
        open_tomogram(p)


def test_missing_file(tmp_path):
    with pytest.raises(TomogramError, match="no such file"):
        open_tomogram(tmp_path / "nope.mrc")


def test_writing_non_3d_is_refused(tmp_path):
    with pytest.raises(TomogramError, match="3D"):
        write_tomogram(tmp_path / "x.mrc", np.zeros((3, 3)))


def test_robust_normalisation_ignores_outliers_and_nan():
    rng = np.random.default_rng(1)
    vol = rng.normal(5.0, 2.0, size=(40, 40, 40)).astype(np.float32)
    vol[0, 0, :20] = 1e6  # a few gold-bead-like outliers
    vol[1, 1, 1] = np.nan
    lo, hi = percentile_stats(vol)
    assert -2 < lo < 1 and 9 < hi < 12
    c, s = robust_normalisation(vol)
    out = normalise(vol, c, s)
    assert np.isfinite(out).all() and abs(float(np.median(out))) < 0.1 and out.max() <= 5.0


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int8, np.int16, np.uint8])
def test_normalise_tensor_equals_normalise(dtype):
    import torch

    from napari_cryopicker.core.tomogram import normalise_tensor

    rng = np.random.default_rng(2)
    vol = (rng.normal(0, 1, size=(2, 9, 10, 11)) * 40).clip(-120, 120).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        vol[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
        vol[1, 2, 3, 4] = np.finfo(dtype).max
    c, s = 3.5, 17.0
    got = normalise_tensor(torch.from_numpy(vol), c, s).numpy()
    want = normalise(vol, c, s)
    assert got.dtype == np.float32 and np.isfinite(got).all()
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6)
