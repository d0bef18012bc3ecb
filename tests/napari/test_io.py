"""npe2 reader / writer / sample data round trips through a real viewer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from napari.layers import Image, Points

from napari_cryopicker._napari.reader import get_reader
from napari_cryopicker.core.picks import Picks

from gui_helpers import PLUGIN, SHAPE, VOXEL


def test_manifest_is_valid():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    mf = pm.get_manifest(PLUGIN)
    assert {w.display_name for w in mf.contributions.widgets} >= {"CryoPicker (all panels)", "4 Training"}
    assert len(mf.contributions.writers) == 7


def test_open_mrc_sets_scale_units_and_contrast(viewer, tomo_path):
    layers = viewer.open(str(tomo_path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert isinstance(layer, Image)
    assert layer.name == "TS_01"
    assert tuple(layer.scale) == pytest.approx((VOXEL,) * 3)
    assert tuple(str(u) for u in layer.units) == ("angstrom",) * 3
    assert layer.data.shape == SHAPE
    assert isinstance(layer.data, np.memmap)  # not loaded into memory
    lo, hi = layer.contrast_limits
    assert -4 < lo < -1 and 1 < hi < 4  # robust percentiles, not min/max


def test_open_mrc_without_naming_the_plugin(viewer, tomo_path):
    """File > Open (napari's own open path) and ``viewer.open(path, plugin=None)`` pick our
    reader for .mrc by themselves: it is the only one registered for it. (napari 0.9's
    plain ``viewer.open(path)`` means its builtins reader, which reads no MRC: scripts
    pass ``plugin=None`` or ``plugin="napari-cryopicker"``; see docs/gui.md.)"""
    viewer.window._qt_viewer._qt_open([str(tomo_path)], stack=False)  # what File > Open calls
    assert [lyr.name for lyr in viewer.layers] == ["TS_01"]
    assert isinstance(viewer.layers["TS_01"], Image)
    assert tuple(viewer.layers["TS_01"].scale) == pytest.approx((VOXEL,) * 3)
    viewer.layers.clear()
    layers = viewer.open(str(tomo_path), plugin=None)
    assert len(layers) == 1 and isinstance(layers[0], Image)


def test_reader_declines_what_it_cannot_read(tmp_path):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"not an mrc file at all")
    assert get_reader(str(bad)) is None
    other = tmp_path / "notes.json"
    other.write_text('{"hello": 1}')
    assert get_reader(str(other)) is None
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader(str(tmp_path)) is None
    assert get_reader([str(bad), str(other)]) is None


def test_open_picks_file_gives_points_per_class(viewer, tmp_path):
    from napari_cryopicker.core.formats import write_picks

    picks = Picks.from_zyx([[1, 2, 3], [4, 5, 6], [7, 8, 9]], class_name=["a", "b", "a"],
                           tomogram="TS_01", voxel_size=10.0)
    path = write_picks(picks, tmp_path / "picks.star", "relion4")[0]
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert [type(lyr) for lyr in layers] == [Points, Points]
    by_name = {lyr.name: lyr for lyr in layers}
    a = by_name["picks: a"]
    np.testing.assert_allclose(a.data, [[1, 2, 3], [7, 8, 9]])
    assert tuple(a.scale) == pytest.approx((10.0,) * 3)
    assert list(a.features["class"]) == ["a", "a"]
    assert by_name["picks: b"].border_color[0] is not None
    assert a.projection_mode == "rescale_spherical"


@pytest.mark.parametrize("fmt,ext", [("relion4", ".star"), ("relion5", ".star"), ("relion3", ".star"),
                                     ("dynamo", ".tbl"), ("copick", ".json"), ("csv", ".csv"),
                                     ("napari", ".csv")])
def test_writer_round_trip_every_format(viewer, tmp_path, fmt, ext):
    from napari_cryopicker._napari.convert import points_layer_kwargs
    from napari_cryopicker.core.formats import read_picks

    picks = Picks.from_zyx([[3, 10, 20], [5, 30, 40], [8, 50, 12]], class_name="ribosome",
                           tomogram="TS_01", voxel_size=VOXEL, score=[1.0, 0.9, 0.2],
                           source=["manual", "predicted", "predicted"])
    kw = points_layer_kwargs(picks, kind="predicted", class_name="ribosome", colour="#ff0000",
                             diameter=8, scale=(VOXEL,) * 3, tomogram="TS_01", shape=SHAPE)
    layer = viewer.add_points(picks.zyx, **kw)
    layer.shown = [True, True, False]  # hidden points are not written

    out = tmp_path / f"out_{fmt}{ext}"
    writer_name = {"relion5": "RELION 5 particles", "relion4": "RELION 4 particles",
                   "relion3": "RELION 3 / Warp", "dynamo": "Dynamo table", "copick": "copick picks",
                   "csv": "CryoPicker CSV", "napari": "napari Points CSV"}[fmt]
    from npe2 import PluginManager

    w = next(w for w in PluginManager.instance().get_manifest(PLUGIN).contributions.writers
             if w.display_name == writer_name)
    written = w.exec(args=(str(out), [layer.as_layer_data_tuple()]))
    assert written and all(isinstance(p, str) for p in written)
    back = read_picks(out if fmt != "copick" else written[0], fmt, voxel_size=VOXEL)
    assert len(back) == 2
    np.testing.assert_allclose(np.sort(back.zyx, axis=0), np.sort(picks.zyx[:2], axis=0), atol=1e-3)


def test_save_layers_through_napari_picks_relion_by_extension(viewer, tmp_path):
    import starfile

    from napari_cryopicker._napari.convert import points_layer_kwargs

    layers = []
    for name, zyx in [("ribosome", [[3, 10, 20], [5, 30, 40]]), ("proteasome", [[8, 50, 12]])]:
        p = Picks.from_zyx(zyx, class_name=name, tomogram="TS_01", voxel_size=VOXEL)
        kw = points_layer_kwargs(p, kind="picks", class_name=name, colour="#00ff00", diameter=6,
                                 scale=(VOXEL,) * 3, tomogram="TS_01", shape=SHAPE)
        layers.append(viewer.add_points(p.zyx, **kw))
    out = tmp_path / "both.star"
    written = viewer.layers.save(str(out), selected=False, plugin=PLUGIN)
    assert written
    star = starfile.read(written[0])
    df = star["particles"] if isinstance(star, dict) else star
    assert len(df) == 3
    assert set(df["rlnTomoName"]) == {"TS_01"}
    assert isinstance(df, pd.DataFrame)


def test_sample_data_opens_tomogram_and_picks(viewer):
    layers = viewer.open_sample(PLUGIN, "tomogram")
    images = [lyr for lyr in layers if isinstance(lyr, Image)]
    points = [lyr for lyr in layers if isinstance(lyr, Points)]
    assert len(images) == 1 and images[0].ndim == 3
    assert len(points) >= 2
    for p in points:
        assert p.name.startswith("picks: ")
        assert 1 <= len(p.data) <= 6
        assert tuple(p.scale) == tuple(images[0].scale)
        assert set(p.features["source"]) == {"manual"}


def test_open_ome_zarr_tomogram_as_multiscale(viewer, copick_project):
    """A copick-written OME-Zarr tomogram opens as one lazy multiscale layer with its voxel
    size, named by its run, and becomes the session tomogram (picks read level 0)."""
    from napari_cryopicker._napari.session import get_session

    vol = np.random.default_rng(1).normal(0, 1, (16, 48, 40)).astype(np.float32)
    _, folder, _ = copick_project(runs={"TS_09": vol}, voxel_size=12.0)
    path = folder / "ExperimentRuns" / "TS_09" / "VoxelSpacing12.000" / "wbp.zarr"
    s = get_session(viewer)
    layers = viewer.open(str(path), plugin=PLUGIN)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "TS_09" and layer.multiscale and len(layer.data) == 3
    assert tuple(layer.scale) == pytest.approx((12.0,) * 3)
    assert not isinstance(layer.data[0], np.ndarray)
    assert s.tomogram is not None and s.tomogram.name == "TS_09" and s.voxel_size == pytest.approx(12.0)
    np.testing.assert_allclose(np.asarray(s.tomogram.data[4]), vol[4])


def test_scale_level_of_an_ome_zarr_tomogram(viewer, copick_project, qtbot):
    """The Tomogram panel's scale level: picks, the layers' scale and the tomogram follow
    the chosen level; the picks come back rescaled, and reopening restores the level."""
    from napari_cryopicker._napari.session import get_session
    from napari_cryopicker._napari.widgets.tomogram import TomogramWidget
    from napari_cryopicker.core.annotations import read_annotation_file

    vol = np.random.default_rng(2).normal(0, 1, (16, 48, 40)).astype(np.float32)
    _, folder, _ = copick_project(runs={"TS_10": vol}, voxel_size=10.0)
    path = folder / "ExperimentRuns" / "TS_10" / "VoxelSpacing10.000" / "wbp.zarr"
    s = get_session(viewer)
    w = TomogramWidget(viewer)
    qtbot.addWidget(w)
    viewer.open(str(path), plugin=PLUGIN)
    assert not w.level_row.isHidden() and w.level.count() == 3
    assert w.level.itemText(1).startswith("1: 20 A, 20 x 24 x 8")
    s.add_class("ribosome", 6)
    s.add_pick((8, 20, 16), "ribosome")
    world = np.asarray(viewer.layers["picks: ribosome"].data[0]) * viewer.layers["picks: ribosome"].scale

    w.level.setCurrentIndex(1)
    w.level.activated.emit(1)  # what a user's choice sends
    assert s.level == 1 and s.voxel_size == pytest.approx(20.0) and s.tomogram.shape == (8, 24, 20)
    assert s.classes["ribosome"].diameter == pytest.approx(3.0)  # a size in A: 60 A either way
    layer = viewer.layers["picks: ribosome"]
    np.testing.assert_allclose(layer.data, [[4, 10, 8]])
    np.testing.assert_allclose(np.asarray(layer.data[0]) * layer.scale, world)  # the same place
    np.testing.assert_allclose(np.asarray(s.tomogram.data[2]), np.asarray(viewer.layers["TS_10"].data[1][2]))
    saved = read_annotation_file(s.autosave_path)
    assert saved["level"] == 1 and saved["voxel_size"] == pytest.approx(20.0)

    viewer.layers.clear()  # napari closing the tomogram: the picks stay saved
    assert s.tomogram is None
    s.level = 0  # a fresh napari
    viewer.open(str(path), plugin=PLUGIN)
    assert s.level == 1 and w.level.currentIndex() == 1
    np.testing.assert_allclose(viewer.layers["picks: ribosome"].data, [[4, 10, 8]])
