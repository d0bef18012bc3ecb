"""Picks readers against files written by other projects (../shared/reference; skipped if absent).

The CZ cryoET data portal corpus holds the same particles in several formats; the expected
numbers below are the portal's own test expectations (ingestion_tools tests), adjusted only
where this package documents a different convention (STOPGAP and IMOD, see docs/formats.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import starfile

from napari_cryopicker.core.formats import detect_format, read_picks
from napari_cryopicker.core.formats._angles import relion_to_matrices

REF = Path(__file__).parents[2].parent / "shared" / "reference"
PORTAL = REF / "format_fixtures" / "cryoet_portal_backend"
FIX = REF / "format_fixtures"
ANN = REF / "annotations_only"

needs = pytest.mark.skipif(not REF.exists(), reason="../shared/reference not available")
pytestmark = needs

# Portal expectations: voxel positions after coordinate - origin, per tomogram and binning.
TOMO1_BIN4 = [[1.3, 2.6, 3.8], [0.2, 0.4, 0.7]]
TOMO2_BIN2 = [[3.5, 3.0, 2.5], [-1.5, 2.0, -0.5], [4.0, 0.5, 1.0]]
TOMO3_BIN1 = [[1.0, 0.0, -1.0]]
MATRIX_ROW0 = [[-0.0, -0.7071067811865475, 0.7071067811865475], [1.0, -0.0, 0.0],
               [0.0, 0.7071067811865475, 0.7071067811865475]]
MATRIX_TOMO2_ROW1 = [[0.6424020199109172, 0.5950348471655409, 0.48296291314453405],
                     [-0.7244443697168013, 0.6770771969714244, 0.12940952255126045],
                     [-0.24999999999999983, -0.4330127018922193, 0.8660254037844386]]
RAW_XYZ = [[4, 8, 12], [4, 4, 4], [6, 4, 2], [0, 6, 0], [8, 4, 2], [3, 2, 1]]  # rlnCoordinate columns


@pytest.mark.parametrize("name,fmt,tomos", [
    ("relion_3_star.star", "relion3", ["tomo_1.tomostar", "tomo_2.tomostar", "tomo_3.tomostar"]),
    ("tomoman_relion_star.star", "relion3", ["grid_1_lamella1_pos1", "grid_1_lamella1_pos2", "grid_1_lamella1_pos3"]),
    ("relion_4_star.star", "relion4", ["TS_001", "TS_002", "TS_003"]),
])
def test_portal_relion_stars_agree_with_portal(name, fmt, tomos):
    path = PORTAL / name
    assert detect_format(path) == fmt
    for tomo, binning, expected in zip(tomos, (4, 2, 1), (TOMO1_BIN4, TOMO2_BIN2, TOMO3_BIN1)):
        p = read_picks(path, tomogram=tomo, binning=binning)
        np.testing.assert_allclose(p.xyz, expected, atol=1e-9)
        assert p.tomograms == [tomo]
    everything = read_picks(path, binning=4)
    assert len(everything) == 6
    mats = relion_to_matrices(everything.angles())
    np.testing.assert_allclose(mats[0], MATRIX_ROW0, atol=1e-12)
    np.testing.assert_allclose(mats[3], MATRIX_TOMO2_ROW1, atol=1e-12)
    np.testing.assert_allclose(mats[5], np.eye(3), atol=1e-12)


def test_portal_relion_files_hold_the_same_particles():
    r3 = read_picks(PORTAL / "relion_3_star.star", binning=2)
    tm = read_picks(PORTAL / "tomoman_relion_star.star", binning=2)
    r4 = read_picks(PORTAL / "relion_4_star.star", binning=2)
    for other in (tm, r4):
        np.testing.assert_allclose(other.zyx, r3.zyx, atol=1e-9)
        np.testing.assert_allclose(other.angles(), r3.angles(), atol=1e-9)
    assert r3.tomograms == ["tomo_1", "tomo_2", "tomo_3"]
    # pixel sizes of the files: Warp's detector / magnification, TomoMan's rlnPixelSize
    assert r3.voxel_size == pytest.approx(1.7005 * 2)
    assert tm.voxel_size == pytest.approx(1.96 * 2)
    # the copick instance file and TARDIS csv hold the raw coordinates (before origins)
    inst = read_picks(PORTAL / "copick_instance.json", voxel_size=2.5)
    np.testing.assert_allclose(inst.xyz, RAW_XYZ, atol=1e-9)
    assert inst.tomograms == ["Position_94_Vol"] and inst.class_names == ["testobject"]
    np.testing.assert_allclose(read_picks(PORTAL / "tardis.csv", voxel_size=1.0).xyz, RAW_XYZ)
    raw = starfile.read(PORTAL / "relion_3_star.star")[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]]
    np.testing.assert_allclose(raw.to_numpy(), RAW_XYZ)


def test_portal_copick_json_locations_and_rotations():
    p = read_picks(PORTAL / "copick.json", voxel_size=10.0)
    assert detect_format(PORTAL / "copick.json") == "copick"
    np.testing.assert_allclose(p.xyz, [[4.0, 2.0, 3.0], [0.0, 5.0, 1.0], [3, 1.5, 9.2], [3.0, 1.0, 5.0]], atol=1e-12)
    assert p.class_names == ["ribosome"]
    # its transformations are the RELION 3 file's rows 0, 1, 3, 2 (portal convention = ours)
    r3 = relion_to_matrices(read_picks(PORTAL / "relion_3_star.star").angles())
    np.testing.assert_allclose(relion_to_matrices(p.angles()), r3[[0, 1, 3, 2]], atol=1e-9)


def test_portal_stopgap_one_based():
    path = PORTAL / "stopgap_star.star"
    assert detect_format(path) == "stopgap"
    p = read_picks(path, tomogram="1", binning=4)
    # The portal reads orig + shift (0.7, 1.4, 2.2 at bin 4); this package takes STOPGAP
    # positions as 1-based (MATLAB), so one unbinned pixel less.
    np.testing.assert_allclose(p.xyz, np.array([[0.7, 1.4, 2.2], [1.8, 1.6, 1.3]]) - 1 / 4, atol=1e-9)
    np.testing.assert_allclose(p.table["score"], [0.1816, 0.1704])
    assert len(read_picks(path)) == 6


def test_portal_csvs_and_imod_agree():
    expected = [[1, 2, 3], [2, 2, 2], [0, 3, 0]]
    for name in ("points.csv", "points_tab_delim.csv", "points_with_header.csv", "points_with_header_pipe_delim.csv"):
        assert detect_format(PORTAL / name) == "csv"
        np.testing.assert_allclose(read_picks(PORTAL / name).xyz, expected)
        np.testing.assert_allclose(read_picks(PORTAL / name, binning=2).xyz, np.array(expected) / 2)
    # IMOD: voxel centre i is model i + 0.5 in x and y (the portal ignores the half pixel)
    mod = read_picks(PORTAL / "points.mod")
    assert detect_format(PORTAL / "points.mod") == "imod"
    np.testing.assert_allclose(mod.xyz, np.array(expected) - [0.5, 0.5, 0])
    assert len(read_picks(PORTAL / "oriented_points.mod")) == 4


def test_dynamotable_fixtures():
    import dynamotable

    for tbl, doc, n in [("t_complex.tbl", "tmap_complex.doc", 8742), ("t_double.tbl", None, 300)]:
        path = FIX / "dynamotable" / tbl
        assert detect_format(path) == "dynamo"
        p = read_picks(path, tomograms_star=None if doc is None else FIX / "dynamotable" / doc)
        df = dynamotable.read(str(path))
        assert len(p) == len(df) == n
        np.testing.assert_allclose(p.xyz, df[["x", "y", "z"]].to_numpy(float) + df[["dx", "dy", "dz"]].to_numpy(float) - 1)
        np.testing.assert_allclose(p.table["score"], df["cc"])
    double = read_picks(FIX / "dynamotable" / "t_double.tbl")
    assert sorted(set(double.class_names)) == sorted(f"class{k}" for k in set(dynamotable.read(
        str(FIX / "dynamotable" / "t_double.tbl"))["class"]))
    assert set(double.tomograms) <= {"1", "2", "3", "4", "5", "6", "7", "8", "9"}


def test_dynamo2m_table_and_warp_star_describe_the_same_tomograms():
    tbl = read_picks(FIX / "dynamo2m" / "dynamo2warp" / "example.tbl")  # .doc found beside it
    assert len(tbl) == 4934
    assert tbl.tomograms[0] == "tomo_ts01.mrc_15.00Apx"
    star_path = FIX / "dynamo2m" / "warp2dynamo" / "example.star"
    assert detect_format(star_path) == "relion3"
    star = read_picks(star_path, voxel_size=15.0)  # 5 A coordinates -> binning 3 inferred
    assert len(star) == 1399 and star.voxel_size == 15.0
    assert set(star.tomograms) <= set(tbl.tomograms)
    from scipy.spatial import cKDTree

    dist, offset = [], []
    for tomo in star.tomograms:
        a, b = star.select(tomogram=tomo).zyx, tbl.select(tomogram=tomo).zyx
        d, i = cKDTree(b).query(a)
        dist += d.tolist()
        offset += (a - b[i])[d < 3].tolist()
    # Same particles (other refinement), same scale: median distance about one voxel...
    assert np.median(dist) < 2.0
    # ...and Warp (0-based, 5 A) sits +1/3..1/2 voxel from Dynamo's x + dx - 1, as expected if
    # Dynamo is 1-based; if Dynamo were 0-based the offset would be about -2/3.
    mean = np.mean(offset, axis=0)
    assert np.all((mean > 0.2) & (mean < 0.8)), mean


def test_relion31_downgrade_fixture():
    path = FIX / "dynamo2m" / "relion_star_downgrade" / "relion3.1.star"
    p = read_picks(path)
    assert detect_format(path) == "relion3" and len(p) == 57 and p.voxel_size == 5.0
    star = starfile.read(path)["particles"]
    expected = star["rlnCoordinateX"] - star["rlnOriginXAngst"] / 5.0
    np.testing.assert_allclose(p.table["x"], expected)
    assert p.tomograms == ["TS_01"]


def test_imodmodel_fixtures():
    import imodmodel

    for path in sorted((FIX / "imodmodel").glob("*.mod")):
        df = imodmodel.read(path)
        p = read_picks(path)
        assert len(p) == len(df)
        np.testing.assert_allclose(p.table["x"], df["x"].to_numpy() - 0.5, atol=1e-6)
        np.testing.assert_allclose(p.table["z"], df["z"].to_numpy(), atol=1e-6)
    names = read_picks(FIX / "imodmodel" / "multiple_objects_example.mod").class_names
    assert names and all(n for n in names)


def test_shrec21_particle_locations():
    path = ANN / "shrec21_sohamroy20" / "particle_locations.txt"
    assert detect_format(path) == "shrec"
    p = read_picks(path, voxel_size=10.0)
    assert len(p) == 1466 and p.voxel_size == 10.0
    counts = p.counts()
    assert len(counts) == 15
    assert counts["4V94_fixed"] == 118 and counts["5MRC"] == 131 and counts["vesicle"] == 5 and counts["fiducial"] == 10
    assert p.zyx.min() >= 0 and p.zyx.max() < 512


def test_czii_kaggle_ground_truth():
    path = ANN / "czii_kaggle_TS_73_6_kobakos" / "gt_predictions.csv"
    assert detect_format(path) == "kaggle"
    p = read_picks(path, voxel_size=10.012)
    assert len(p) == 217 and p.tomograms == ["TS_73_6"]
    assert p.counts() == {"apo-ferritin": 95, "beta-amylase": 12, "beta-galactosidase": 14, "ribosome": 46,
                          "thyroglobulin": 28, "virus-like-particle": 22}
    # inside the competition's (184, 630, 630) voxel tomograms
    assert np.all(p.zyx >= 0) and np.all(p.zyx < [184, 630, 630])


def test_empiar10988_headerless_lists():
    d = ANN / "empiar10988_TS037_maurerv"
    assert len(read_picks(d / "TS_037_cyto_ribosomes.csv", voxel_size=13.481)) == 1646
    assert len(read_picks(d / "TS_037_fas.csv", voxel_size=13.481)) == 22
