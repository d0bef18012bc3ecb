"""Our readers on files that the field's own libraries write through their public APIs, in
a tmp dir (starfile, dynamotable, imodmodel, copick's models). Unlike a round trip through
our writer, a convention that our reader and writer share cannot hide a mistake here. The
expected voxel positions follow ../shared/FORMATS.md and docs/formats.md."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import starfile

from napari_cryopicker.core.formats import detect_format, read_picks

# voxel positions (z, y, x) of three particles in a binned-by-2 tomogram of 8 A voxels
ZYX = np.array([[10.0, 20.0, 30.0], [5.5, 40.25, 12.0], [0.0, 0.0, 63.0]])
BIN, PX = 2, 4.0  # tilt-series pixel size (A); tomogram voxel = 8 A


def _xyz(a):
    return a[:, ::-1]


def test_relion4_particles_written_by_starfile(tmp_path):
    """RELION 4: coordinates in unbinned tilt-series pixels; our voxel = coordinate / binning."""
    unbinned = _xyz(ZYX) * BIN
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
                           "rlnTomoTiltSeriesPixelSize": [PX], "rlnImagePixelSize": [PX]})
    parts = pd.DataFrame({
        "rlnTomoName": ["TS_01"] * 3, "rlnTomoParticleId": [1, 2, 3],
        "rlnCoordinateX": unbinned[:, 0], "rlnCoordinateY": unbinned[:, 1], "rlnCoordinateZ": unbinned[:, 2],
        "rlnOriginXAngst": [0.0] * 3, "rlnOriginYAngst": [0.0] * 3, "rlnOriginZAngst": [0.0] * 3,
        "rlnAngleRot": [0.0, 10.0, 20.0], "rlnAngleTilt": [0.0, 30.0, 60.0], "rlnAnglePsi": [0.0, 5.0, 90.0],
        "rlnClassNumber": [1, 1, 1], "rlnOpticsGroup": [1, 1, 1],
    })
    path = tmp_path / "particles.star"
    starfile.write({"optics": optics, "particles": parts}, path)
    assert detect_format(path) == "relion4"
    p = read_picks(path, binning=BIN)
    np.testing.assert_allclose(p.zyx, ZYX, atol=1e-9)
    assert p.tomograms == ["TS_01"]
    np.testing.assert_allclose(p.angles(), parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())


def test_relion3_warp_star_written_by_starfile(tmp_path):
    """RELION 3.0 / Warp: true position = coordinate - origin (pixels of the tomogram)."""
    origin = np.array([[0.5, -1.0, 0.0], [0.0, 0.0, 2.0], [1.0, 1.0, 1.0]])
    coord = _xyz(ZYX) + origin
    df = pd.DataFrame({
        "rlnMicrographName": ["TS_01.tomostar"] * 3,
        "rlnCoordinateX": coord[:, 0], "rlnCoordinateY": coord[:, 1], "rlnCoordinateZ": coord[:, 2],
        "rlnOriginX": origin[:, 0], "rlnOriginY": origin[:, 1], "rlnOriginZ": origin[:, 2],
        "rlnAngleRot": [0.0] * 3, "rlnAngleTilt": [0.0] * 3, "rlnAnglePsi": [0.0] * 3,
    })
    path = tmp_path / "warp.star"
    starfile.write(df, path)
    assert detect_format(path) == "relion3"
    p = read_picks(path)
    np.testing.assert_allclose(p.zyx, ZYX, atol=1e-9)


def test_dynamo_table_written_by_dynamotable(tmp_path):
    """Dynamo: position = (x + dx, y + dy, z + dz), 1-based: our voxel i = x + dx - 1."""
    import dynamotable

    shift = np.array([[0.25, 0.0, -1.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]])
    pos = _xyz(ZYX) + 1.0 - shift
    df = pd.DataFrame({
        "tag": [1, 2, 3], "aligned_value": [1] * 3, "averaged_value": [1] * 3,
        "dx": shift[:, 0], "dy": shift[:, 1], "dz": shift[:, 2],
        "tdrot": [0.0] * 3, "tilt": [0.0] * 3, "narot": [0.0] * 3, "cc": [0.9, 0.8, 0.7],
        "tomo": [1] * 3, "class": [1] * 3, "x": pos[:, 0], "y": pos[:, 1], "z": pos[:, 2],
    })
    path = tmp_path / "crop.tbl"
    dynamotable.write(df, path)
    assert detect_format(path) == "dynamo"
    p = read_picks(path, voxel_size=8.0)
    np.testing.assert_allclose(p.zyx, ZYX, atol=1e-4)  # dynamotable writes a few decimals
    np.testing.assert_allclose(p.table["score"], [0.9, 0.8, 0.7], atol=1e-4)


def test_imod_model_written_by_imodmodel(tmp_path):
    """IMOD: voxel centre (ix, iy, iz) is model (ix + 0.5, iy + 0.5, iz)."""
    import imodmodel

    xyz = _xyz(ZYX)
    df = pd.DataFrame({"object_id": [0, 0, 0], "contour_id": [0, 0, 0],
                       "x": xyz[:, 0] + 0.5, "y": xyz[:, 1] + 0.5, "z": xyz[:, 2]})
    path = tmp_path / "picks.mod"
    imodmodel.write(df, path)
    assert detect_format(path) == "imod"
    p = read_picks(path, voxel_size=8.0)
    np.testing.assert_allclose(np.sort(p.zyx, axis=0), np.sort(ZYX, axis=0), atol=1e-4)


def test_copick_picks_made_with_copicks_models(tmp_path):
    """copick: location in Angstrom from voxel 0 (x_A = i_x * voxel_spacing)."""
    models = pytest.importorskip("copick.models")
    vs = 8.0
    points = [models.CopickPoint(location=models.CopickLocation(x=x * vs, y=y * vs, z=z * vs), score=0.5)
              for z, y, x in ZYX]
    f = models.CopickPicksFile(pickable_object_name="ribosome", user_id="bob", session_id="1",
                               run_name="TS_01", voxel_spacing=vs, unit="angstrom", points=points)
    path = tmp_path / "TS_01" / "Picks" / "bob_1_ribosome.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(f.model_dump(mode="json") if hasattr(f, "model_dump") else f.dict()))
    assert detect_format(path) == "copick"
    p = read_picks(path, voxel_size=vs)
    np.testing.assert_allclose(p.zyx, ZYX, atol=1e-9)
    assert p.class_names == ["ribosome"] and p.tomograms == ["TS_01"]
