"""Fixtures for the napari GUI tests (real viewer; run under xvfb-run)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_cryopicker.core.tomogram import write_tomogram  # noqa: E402

from gui_helpers import SHAPE, VOXEL  # noqa: E402


@pytest.fixture(autouse=True)
def cryopicker_plugin(npe2pm):
    """napari's test fixtures block plugin discovery: register this plugin explicitly."""
    from npe2 import PluginManifest

    if "napari-cryopicker" not in npe2pm:
        npe2pm.register(PluginManifest.from_distribution("napari-cryopicker"))
    return npe2pm


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """The per-user files (last project, fallback autosaves) go to a temporary folder,
    never to the home folder of whoever runs the tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def tomo_path(tmp_path):
    """A tiny noisy MRC with a few dark blobs and a voxel size in the header."""
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 1, SHAPE).astype(np.float32)
    zz, yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    for c in [(10, 16, 16), (20, 40, 44), (16, 48, 20)]:
        r2 = (zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2
        vol[r2 <= 16] -= 3.0
    return write_tomogram(tmp_path / "TS_01.mrc", vol, VOXEL)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def session(viewer, tomo_path):
    from napari_cryopicker._napari.session import get_session

    s = get_session(viewer)
    viewer.open(str(tomo_path), plugin="napari-cryopicker")
    assert s.tomogram is not None
    return s

