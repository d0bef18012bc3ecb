"""Display filters run slab by slab: the same result as the whole volume at once, read from
a memory map, stoppable between slabs, spilling to disk above a memory bound."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_cryopicker._napari import filters
from napari_cryopicker.core.errors import Cancelled
from napari_cryopicker.core.progress import Progress
from napari_cryopicker.core.tomogram import open_tomogram, write_tomogram


@pytest.fixture
def mrc(tmp_path):
    vol = np.random.default_rng(3).normal(0, 1, (45, 24, 28)).astype(np.float32)
    return open_tomogram(write_tomogram(tmp_path / "t.mrc", vol, 10.0)), vol


@pytest.mark.parametrize("kind, params, whole", [
    ("gaussian", {"sigma": 1.5}, lambda v: ndimage.gaussian_filter(v, 1.5, mode="reflect")),
    ("bandpass", {"fine": 1.0, "coarse": 3.0},
     lambda v: ndimage.gaussian_filter(v, 1.0, mode="reflect") - ndimage.gaussian_filter(v, 3.0, mode="reflect")),
    ("slab", {"n": 5}, lambda v: ndimage.uniform_filter1d(v, 5, axis=0, mode="nearest")),
])
def test_slab_by_slab_equals_the_whole_volume(mrc, kind, params, whole):
    tomo, vol = mrc
    got = filters.apply(kind, tomo.data, slab=7, **params)
    np.testing.assert_allclose(got, whole(vol), atol=1e-5)


def test_equalise_maps_to_0_1_in_order(mrc):
    tomo, vol = mrc
    eq = filters.apply("equalise", tomo.data, slab=7)
    assert eq.min() >= 0 and eq.max() <= 1
    i, j = np.unravel_index(np.argmin(vol), vol.shape), np.unravel_index(np.argmax(vol), vol.shape)
    assert eq[i] < 0.01 and eq[j] > 0.99


def test_a_filter_stops_between_slabs_and_spills_to_disk(mrc):
    tomo, vol = mrc
    seen = []
    prog = Progress(callback=lambda d, t, m: (seen.append(d), prog.cancel() if d == 2 else None))
    with pytest.raises(Cancelled):
        filters.apply("gaussian", tomo.data, prog, slab=5, sigma=1.0)
    assert seen == [1, 2]  # stopped after the second of nine slabs
    out = filters.apply("gaussian", tomo.data, slab=5, max_ram=1000, sigma=1.0)
    assert isinstance(out, np.memmap)
    np.testing.assert_allclose(out, ndimage.gaussian_filter(vol, 1.0, mode="reflect"), atol=1e-5)
