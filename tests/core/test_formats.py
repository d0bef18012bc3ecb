"""Picks file formats: round trips, the field's own readers, auto-detection and errors."""

from __future__ import annotations

import json
from pathlib import Path

import dynamotable
import numpy as np
import pandas as pd
import pytest
import starfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryopicker.core.errors import PicksFormatError
from napari_cryopicker.core.formats import (
    FORMAT_NAMES, WRITE_FORMATS, detect_format, format_from_extension, read_picks, write_picks,
)
from napari_cryopicker.core.formats._angles import relion_to_matrices, relion_to_zxz, zxz_to_relion
from napari_cryopicker.core.picks import Picks

VS = 7.84
SHAPE = (60, 120, 140)  # z, y, x voxels of the binned tomogram
CLASSES = ["ribosome", "apo-ferritin", "beta galactosidase"]


def make_picks(n=24, seed=0, angles=True, tomograms=("TS_01", "TS_02")) -> Picks:
    rng = np.random.default_rng(seed)
    zyx = rng.uniform(0, 1, (n, 3)) * (np.array(SHAPE) - 1)
    ang = np.column_stack([rng.uniform(-180, 180, n), rng.uniform(0, 180, n), rng.uniform(-180, 180, n)])
    return Picks.from_zyx(
        zyx, class_name=[CLASSES[i % 3] for i in range(n)], score=rng.uniform(0, 1, n).round(4),
        tomogram=[tomograms[i % len(tomograms)] for i in range(n)], source="predicted", voxel_size=VS,
        angles=ang if angles else None,
    )


def canonical_order(p: Picks) -> pd.DataFrame:
    return p.table.sort_values(["tomogram", "class_name", "x"]).reset_index(drop=True)


def assert_same(a: Picks, b: Picks, atol=1e-4, angles=True, tomograms=True):
    ta, tb = canonical_order(a), canonical_order(b)
    assert len(ta) == len(tb)
    np.testing.assert_allclose(tb[["z", "y", "x"]].to_numpy(), ta[["z", "y", "x"]].to_numpy(), atol=atol)
    assert tb["class_name"].tolist() == ta["class_name"].tolist()
    np.testing.assert_allclose(tb["score"], ta["score"], atol=1e-5)
    if tomograms:
        assert tb["tomogram"].tolist() == ta["tomogram"].tolist()
    if angles:
        assert b.has_angles
        ma = relion_to_matrices(ta[["rot", "tilt", "psi"]].to_numpy())
        mb = relion_to_matrices(tb[["rot", "tilt", "psi"]].to_numpy())
        np.testing.assert_allclose(mb, ma, atol=1e-5)


# -- round trips ---------------------------------------------------------------------------

ROUND_TRIPS = [  # format, file name, binning used
    ("csv", "picks.csv", 1.0),
    ("napari", "points.csv", 1.0),
    ("relion3", "warp.star", 2.0),
    ("relion4", "particles4.star", 2.0),
    ("relion5", "particles.star", 2.0),
    ("dynamo", "table.tbl", 2.0),
    ("copick", "copick_root", 1.0),
]


def test_every_writer_has_a_round_trip():
    assert sorted(f for f, _, _ in ROUND_TRIPS) == sorted(WRITE_FORMATS)
    assert set(WRITE_FORMATS) <= set(FORMAT_NAMES)
    assert {"stopgap", "imod", "shrec", "kaggle"} <= set(FORMAT_NAMES) - set(WRITE_FORMATS)


@pytest.mark.parametrize("fmt,name,binning", ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip(tmp_path, fmt, name, binning):
    picks = make_picks()
    paths = write_picks(picks, tmp_path / name, fmt, binning=binning, tomogram_shape=SHAPE)
    assert all(p.exists() for p in paths)
    assert detect_format(tmp_path / name) == fmt
    # The voxel size alone recovers the binning from the file's pixel size.
    back = read_picks(tmp_path / name, voxel_size=VS, binning=binning if fmt in ("csv", "napari") else 1.0)
    assert back.voxel_size == pytest.approx(VS)
    assert_same(picks, back)
    expected_source = {"predicted"} if fmt in ("csv", "napari") else {"imported"}
    assert set(back.table["source"]) == expected_source
    # No temporary files left behind.
    assert not [p for p in tmp_path.rglob(".*tmp*")]


@pytest.mark.parametrize("fmt,name", [("relion3", "a.star"), ("relion4", "b.star"), ("dynamo", "c.tbl")])
def test_pixel_formats_fill_voxel_size_from_file(tmp_path, fmt, name):
    picks = make_picks(angles=False)
    write_picks(picks, tmp_path / name, fmt, binning=4)
    back = read_picks(tmp_path / name, binning=4)  # no voxel size given: the file's pixel size * binning
    assert back.voxel_size == pytest.approx(VS)
    assert_same(picks, back, angles=False)
    unbinned = read_picks(tmp_path / name)  # neither: unbinned pixels
    assert unbinned.voxel_size == pytest.approx(VS / 4)
    np.testing.assert_allclose(canonical_order(unbinned)[["x"]], canonical_order(picks)[["x"]] * 4, atol=1e-4)


def test_round_trip_without_angles_and_single_tomogram(tmp_path):
    picks = make_picks(angles=False, tomograms=("TS_07",))
    for fmt, name in [("csv", "a.csv"), ("relion4", "a.star"), ("dynamo", "a.tbl"), ("copick", "a.json")]:
        paths = write_picks(picks, tmp_path / name, fmt)
        back = Picks.concat(read_picks(p, voxel_size=VS) for p in paths if p.suffix in (".csv", ".star", ".tbl", ".json")
                            and not p.name.endswith(".classes.json"))
        assert_same(picks, back, angles=False)
        assert not back.has_angles or np.allclose(back.angles(), 0)


def test_tomogram_option_fills_and_filters(tmp_path):
    picks = make_picks(angles=False)
    write_picks(picks, tmp_path / "p.star", "relion4")
    only = read_picks(tmp_path / "p.star", voxel_size=VS, tomogram="TS_02")
    assert len(only) == (picks.table["tomogram"] == "TS_02").sum()
    assert set(only.tomograms) == {"TS_02"}
    with pytest.raises(PicksFormatError, match=r"p\.star.*TS_99.*TS_01"):
        read_picks(tmp_path / "p.star", voxel_size=VS, tomogram="TS_99")
    nameless = Picks.from_zyx([[1, 2, 3]], voxel_size=VS)
    write_picks(nameless, tmp_path / "n.csv")
    assert read_picks(tmp_path / "n.csv", tomogram="TS_05").tomograms == ["TS_05"]
    # A file with a single tomogram is renamed to the one on screen.
    write_picks(make_picks(tomograms=("bin4_TS_01",)), tmp_path / "one.star")
    assert read_picks(tmp_path / "one.star", voxel_size=VS, tomogram="TS_01").tomograms == ["TS_01"]


def test_write_tomogram_option_names_nameless_picks(tmp_path):
    nameless = Picks.from_zyx([[1, 2, 3], [4, 5, 6]], voxel_size=VS)
    write_picks(nameless, tmp_path / "p.star", tomogram="TS_09")
    assert set(starfile.read(tmp_path / "p.star")["particles"]["rlnTomoName"]) == {"TS_09"}


def test_missing_angles_of_some_picks(tmp_path):
    picks = Picks.from_zyx([[1, 2, 3], [4, 5, 6]], angles=[[10, 20, 30], [np.nan] * 3], voxel_size=VS)
    for fmt, name in [("csv", "a.csv"), ("napari", "b.csv")]:
        write_picks(picks, tmp_path / name, fmt)
        back = read_picks(tmp_path / name)
        np.testing.assert_allclose(back.angles(), picks.angles())  # NaN stays NaN
    write_picks(picks, tmp_path / "c.star")  # RELION needs numbers: missing angles are 0
    np.testing.assert_allclose(read_picks(tmp_path / "c.star", voxel_size=VS).angles(), [[10, 20, 30], [0, 0, 0]])


def test_empty_picks_round_trip(tmp_path):
    empty = Picks(voxel_size=VS)
    for fmt, name in [("csv", "e.csv"), ("napari", "n.csv"), ("relion3", "e3.star"), ("relion4", "e4.star"),
                      ("relion5", "particles.star"), ("dynamo", "e.tbl"), ("copick", "e.json")]:
        write_picks(empty, tmp_path / name, fmt, tomogram_shape=SHAPE, tomogram="TS")
        assert len(read_picks(tmp_path / name, fmt, voxel_size=VS)) == 0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    coords=st.lists(st.tuples(*[st.floats(0, 4000, allow_nan=False, width=32)] * 3), min_size=1, max_size=12),
    classes=st.lists(st.sampled_from(CLASSES + ["80S", "p_1"]), min_size=12, max_size=12),
    binning=st.sampled_from([1.0, 2.0, 4.0, 8.0]),
)
def test_property_round_trip_csv_and_relion4(tmp_path, coords, classes, binning):
    n = len(coords)
    picks = Picks.from_zyx(np.array(coords, dtype=float), class_name=classes[:n],
                           score=np.linspace(0, 1, n), tomogram="TS_01", voxel_size=VS)
    write_picks(picks, tmp_path / "h.csv")
    back = read_picks(tmp_path / "h.csv")
    np.testing.assert_allclose(back.zyx, picks.zyx, rtol=0, atol=1e-9)
    assert back.table["class_name"].tolist() == classes[:n]
    write_picks(picks, tmp_path / "h.star", "relion4", binning=binning)
    back = read_picks(tmp_path / "h.star", voxel_size=VS)
    np.testing.assert_allclose(back.zyx, picks.zyx, rtol=0, atol=1e-5)
    assert back.table["class_name"].tolist() == classes[:n]


# -- the field's own readers ---------------------------------------------------------------


def test_relion4_read_by_starfile(tmp_path):
    picks = make_picks()
    write_picks(picks, tmp_path / "p.star", binning=4)  # .star defaults to relion4
    star = starfile.read(tmp_path / "p.star")
    part, optics = star["particles"], star["optics"]
    np.testing.assert_allclose(part["rlnCoordinateX"], picks.table["x"] * 4, atol=1e-5)
    np.testing.assert_allclose(part["rlnCoordinateZ"], picks.table["z"] * 4, atol=1e-5)
    assert part["rlnTomoName"].tolist() == picks.table["tomogram"].tolist()
    assert part["rlnTomoParticleId"].tolist() == list(range(1, len(picks) + 1))
    assert (part[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]] == 0).all().all()
    assert set(part["rlnOpticsGroup"]) == {1}
    assert optics["rlnTomoTiltSeriesPixelSize"].iloc[0] == pytest.approx(VS / 4)
    np.testing.assert_allclose(part["rlnAngleTilt"], picks.table["tilt"], atol=1e-5)
    names = dict(zip(star["cryopicker_classes"]["rlnClassNumber"], star["cryopicker_classes"]["cryopickerClassName"]))
    assert [names[k] for k in part["rlnClassNumber"]] == picks.table["class_name"].tolist()
    np.testing.assert_allclose(part["rlnAutopickFigureOfMerit"], picks.table["score"], atol=1e-6)


def test_relion3_read_by_starfile(tmp_path):
    picks = make_picks()
    write_picks(picks, tmp_path / "w.star", "relion3", binning=2)
    star = starfile.read(tmp_path / "w.star")
    part = star["particles"]
    assert part["rlnMicrographName"].tolist() == [f"{t}.mrc" for t in picks.table["tomogram"]]
    assert "rlnTomoName" not in part
    np.testing.assert_allclose(part["rlnCoordinateY"], picks.table["y"] * 2, atol=1e-5)
    assert star["optics"]["rlnImagePixelSize"].iloc[0] == pytest.approx(VS / 2)
    assert detect_format(tmp_path / "w.star") == "relion3"


def test_relion5_centred_angstrom_by_hand(tmp_path):
    # one pick at voxel (z, y, x) = (10, 20, 30) of a (100, 200, 300) tomogram, 10 A voxels, bin 2
    picks = Picks.from_zyx([[10, 20, 30]], tomogram="TS_01", voxel_size=10.0, class_name="ribosome")
    paths = write_picks(picks, tmp_path / "particles.star", "relion5", binning=2, tomogram_shape=(100, 200, 300))
    assert [p.name for p in paths] == ["particles.star", "tomograms.star"]
    part = starfile.read(tmp_path / "particles.star")["particles"]
    # px_ts = 5 A; unbinned sizes X, Y, Z = 600, 400, 200; centred = i * 10 - size * 5 / 2
    assert part["rlnCenteredCoordinateXAngst"].iloc[0] == pytest.approx(300 - 1500)
    assert part["rlnCenteredCoordinateYAngst"].iloc[0] == pytest.approx(200 - 1000)
    assert part["rlnCenteredCoordinateZAngst"].iloc[0] == pytest.approx(100 - 500)
    assert part["rlnTomoParticleName"].tolist() == ["TS_01/1"]
    assert part["rlnTomoName"].tolist() == ["TS_01"]
    tomos = starfile.read(tmp_path / "tomograms.star")
    assert tomos[["rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]].iloc[0].tolist() == [600, 400, 200]
    assert tomos["rlnTomoTiltSeriesPixelSize"].iloc[0] == pytest.approx(5.0)
    assert tomos["rlnTomoTomogramBinning"].iloc[0] == pytest.approx(2.0)
    back = read_picks(tmp_path / "particles.star")
    assert back.voxel_size == pytest.approx(10.0)
    np.testing.assert_allclose(back.zyx, [[10, 20, 30]], atol=1e-6)
    # read at another voxel size (e.g. the bin-4 tomogram): the same physical point
    np.testing.assert_allclose(read_picks(tmp_path / "particles.star", voxel_size=20.0).zyx, [[5, 10, 15]], atol=1e-6)


def test_relion5_companion_name_and_argument(tmp_path):
    picks = make_picks(angles=False)
    paths = write_picks(picks, tmp_path / "run1.star", "relion5", tomogram_shape={"TS_01": SHAPE, "TS_02": SHAPE})
    assert paths[1].name == "run1_tomograms.star"
    moved = tmp_path / "sub"
    moved.mkdir()
    (tmp_path / "run1.star").rename(moved / "run1.star")
    with pytest.raises(PicksFormatError, match=r"run1\.star.*tomograms\.star"):
        read_picks(moved / "run1.star")
    back = read_picks(moved / "run1.star", tomograms_star=paths[1])
    assert_same(picks, back, angles=False)


def test_dynamo_read_by_dynamotable(tmp_path):
    picks = make_picks()
    paths = write_picks(picks, tmp_path / "t.tbl", voxel_size=VS)
    assert [p.name for p in paths] == ["t.tbl", "t.doc", "t.classes.json"]
    df = dynamotable.read(str(tmp_path / "t.tbl"), str(tmp_path / "t.doc"))
    # 1-based: x + dx = i + 1
    np.testing.assert_allclose(df["x"] + df["dx"], picks.table["x"] + 1, atol=1e-9)
    np.testing.assert_allclose(df["z"] + df["dz"], picks.table["z"] + 1, atol=1e-9)
    np.testing.assert_allclose(df["apix"], VS)
    np.testing.assert_allclose(df["cc"], picks.table["score"])
    assert df["tag"].tolist() == list(range(1, len(picks) + 1))
    assert df["tomo_file"].tolist() == [f"{t}.mrc" for t in picks.table["tomogram"]]
    classes = json.loads((tmp_path / "t.classes.json").read_text())
    assert [classes[str(k)] for k in df["class"]] == picks.table["class_name"].tolist()
    # angles: Dynamo zxz of the same rotation
    np.testing.assert_allclose(zxz_to_relion(df[["tdrot", "tilt", "narot"]].to_numpy())[:, 1],
                               picks.table["tilt"], atol=1e-6)


def test_dynamo_class_names_without_sidecar(tmp_path):
    write_picks(make_picks(), tmp_path / "t.tbl")
    (tmp_path / "t.classes.json").unlink()
    back = read_picks(tmp_path / "t.tbl", voxel_size=VS)
    assert sorted(set(back.class_names)) == ["class1", "class2", "class3"]


def test_napari_csv_matches_napari_builtins(tmp_path):
    io_read = pytest.importorskip("napari_builtins.io._read")
    io_write = pytest.importorskip("napari_builtins.io._write")
    picks = make_picks(angles=False)
    write_picks(picks, tmp_path / "ours.csv", "napari")
    data, meta, kind = io_read.csv_to_layer_data(str(tmp_path / "ours.csv"))
    assert kind == "points"
    np.testing.assert_allclose(data, picks.zyx)
    assert list(meta["properties"]["class_name"]) == picks.table["class_name"].tolist()
    # and a file written by napari itself (a Points layer with a class feature)
    io_write.napari_write_points(str(tmp_path / "theirs.csv"), picks.zyx,
                                 {"properties": {"class_name": picks.table["class_name"].to_numpy()}})
    assert detect_format(tmp_path / "theirs.csv") == "napari"
    back = read_picks(tmp_path / "theirs.csv")
    np.testing.assert_allclose(back.zyx, picks.zyx)
    assert back.table["class_name"].tolist() == picks.table["class_name"].tolist()


def test_copick_json_schema(tmp_path):
    picks = make_picks(angles=False, tomograms=("TS_01",))
    paths = write_picks(picks, tmp_path / "out", "copick", user_id="alice", session_id="7")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == sorted(
        f"out/TS_01/Picks/alice_7_{c.replace(' ', '-')}.json" for c in CLASSES)
    doc = json.loads(paths[0].read_text())
    assert {"pickable_object_name", "user_id", "session_id", "run_name", "voxel_spacing", "unit", "points"} <= set(doc)
    assert doc["unit"] == "angstrom" and doc["run_name"] == "TS_01" and doc["voxel_spacing"] == VS
    assert doc["user_id"] == "alice" and doc["session_id"] == "7"
    sel = picks.table[picks.table["class_name"] == doc["pickable_object_name"]]
    pt = doc["points"][0]
    assert set(pt) >= {"location", "transformation_", "instance_id", "score"}
    assert pt["location"]["x"] == pytest.approx(sel["x"].iloc[0] * VS)
    assert pt["location"]["z"] == pytest.approx(sel["z"].iloc[0] * VS)
    assert pt["transformation_"] == np.eye(4).tolist()
    # one class -> exactly the .json path; several -> <stem>_<class>.json
    one = picks.select(class_name="ribosome")
    assert [p.name for p in write_picks(one, tmp_path / "r.json")] == ["r.json"]
    assert sorted(p.name for p in write_picks(picks, tmp_path / "all.json")) == sorted(
        f"all_{c.replace(' ', '-')}.json" for c in CLASSES)
    with pytest.raises(PicksFormatError, match=r"two\.json.*folder"):
        write_picks(make_picks(), tmp_path / "two.json")


def test_copick_pydantic_models_accept_output(tmp_path):
    models = pytest.importorskip("copick.models")
    paths = write_picks(make_picks(), tmp_path / "root", "copick")
    for p in paths:
        models.CopickPicksFile(**json.loads(p.read_text()))


def test_angle_conversions_keep_the_rotation():
    rng = np.random.default_rng(3)
    ang = np.column_stack([rng.uniform(-180, 180, 50), rng.uniform(1, 179, 50), rng.uniform(-180, 180, 50)])
    back = zxz_to_relion(relion_to_zxz(ang))
    np.testing.assert_allclose(relion_to_matrices(back), relion_to_matrices(ang), atol=1e-9)
    # Dynamo (tdrot, tilt, narot) = (0, t, 0) is a rotation about x; RELION's about y: rot -90 / psi 90
    np.testing.assert_allclose(relion_to_matrices(zxz_to_relion([[0, 30, 0]])),
                               relion_to_matrices([[-90, 30, 90]]), atol=1e-9)


# -- auto-detection ------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


STAR_R30 = """data_

loop_
_rlnMicrographName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
_rlnOriginX #5
_rlnOriginY #6
_rlnOriginZ #7
_rlnDetectorPixelSize #8
_rlnMagnification #9
TS_01.tomostar 10 20 30 1 2 3 5.0 10000
TS_01.tomostar 11 21 31 0 0 0 5.0 10000
"""

STAR_R31 = """data_optics

loop_
_rlnOpticsGroup #1
_rlnImagePixelSize #2
1 5.0

data_particles

loop_
_rlnMicrographName #1
_rlnCoordinateX #2
_rlnCoordinateY #3
_rlnCoordinateZ #4
_rlnOriginXAngst #5
_rlnOriginYAngst #6
_rlnOriginZAngst #7
_rlnOpticsGroup #8
/data/TS_01.mrc.tomostar 10 20 30 5 10 15 1
"""

STAR_TOMOMAN = """data_

loop_
_rlnCoordinateX
_rlnCoordinateY
_rlnCoordinateZ
_rlnTomoName
_rlnOriginX
_rlnOriginY
_rlnOriginZ
10 20 30 TS_01 1 2 3
"""

STAR_STOPGAP = """data_stopgap_motivelist

loop_
_motl_idx
_tomo_num
_orig_x
_orig_y
_orig_z
_score
_x_shift
_y_shift
_z_shift
_phi
_psi
_the
_class
1 3 11.0 21.0 31.0 0.5 0.5 -0.5 1.0 0 0 0 2
"""


def test_detect_relion_flavours(tmp_path):
    assert detect_format(_write(tmp_path / "a.star", STAR_R30)) == "relion3"
    assert detect_format(_write(tmp_path / "b.star", STAR_R31)) == "relion3"
    assert detect_format(_write(tmp_path / "c.star", STAR_TOMOMAN)) == "relion3"
    assert detect_format(_write(tmp_path / "d.star", STAR_STOPGAP)) == "stopgap"
    write_picks(make_picks(), tmp_path / "e.star")
    assert detect_format(tmp_path / "e.star") == "relion4"
    write_picks(make_picks(), tmp_path / "f.star", "relion5", tomogram_shape=SHAPE)
    assert detect_format(tmp_path / "f.star") == "relion5"
    with pytest.raises(PicksFormatError, match=r"f_tomograms\.star.*tomograms\.star.*particles"):
        detect_format(tmp_path / "f_tomograms.star")


def test_relion3_origins_in_pixels_and_angstrom(tmp_path):
    r30 = read_picks(_write(tmp_path / "a.star", STAR_R30))
    assert r30.voxel_size == pytest.approx(5.0)  # 5.0 / 10000 * 1e4
    np.testing.assert_allclose(r30.xyz, [[9, 18, 27], [11, 21, 31]])
    assert r30.tomograms == ["TS_01"]
    r31 = read_picks(_write(tmp_path / "b.star", STAR_R31), voxel_size=10.0)  # binning 10 / 5 = 2
    np.testing.assert_allclose(r31.xyz, [[(10 - 1) / 2, (20 - 2) / 2, (30 - 3) / 2]])
    assert r31.tomograms == ["TS_01"]
    tm = read_picks(_write(tmp_path / "c.star", STAR_TOMOMAN), binning=2)
    np.testing.assert_allclose(tm.xyz, [[4.5, 9, 13.5]])
    # filtering by the raw micrograph name works too
    assert len(read_picks(tmp_path / "a.star", tomogram="TS_01.tomostar")) == 2


def test_stopgap_is_one_based(tmp_path):
    p = read_picks(_write(tmp_path / "s.star", STAR_STOPGAP))
    np.testing.assert_allclose(p.xyz, [[11.5 - 1, 20.5 - 1, 32 - 1]])
    assert p.tomograms == ["3"] and p.table["score"].tolist() == [0.5]


@pytest.mark.parametrize("text,expected", [
    ("1,2,3\n4,5,6\n", [[1, 2, 3], [4, 5, 6]]),
    ("1\t2\t3\n4\t5\t6\n", [[1, 2, 3], [4, 5, 6]]),
    ("x|y|z\n1|2|3\n4|5|6\n", [[1, 2, 3], [4, 5, 6]]),
    ("z,y,x,class_name\n3,2,1,ribo\n6,5,4,ribo\n", [[1, 2, 3], [4, 5, 6]]),
    ("1 2 3\n4 5 6\n", [[1, 2, 3], [4, 5, 6]]),
], ids=["comma", "tab", "pipe-header", "zyx-header", "spaces"])
def test_detect_plain_csv(tmp_path, text, expected):
    path = _write(tmp_path / "p.csv", text)
    assert detect_format(path) == "csv"
    p = read_picks(path, class_name="ribo")
    np.testing.assert_allclose(p.xyz, expected)
    assert p.class_names == ["ribo"]


def test_detect_napari_kaggle_shrec_tardis(tmp_path):
    nap = _write(tmp_path / "n.csv", "index,axis-0,axis-1,axis-2,class_name\n0,1.5,2,3,ribosome\n")
    assert detect_format(nap) == "napari"
    np.testing.assert_allclose(read_picks(nap).zyx, [[1.5, 2, 3]])
    kag = _write(tmp_path / "k.csv", "id,experiment,particle_type,x,y,z\n0,TS_5_4,ribosome,100,200,300\n"
                                     "1,TS_6_4,apo-ferritin,10,20,30\n")
    assert detect_format(kag) == "kaggle"
    k = read_picks(kag, voxel_size=10.0, tomogram="TS_5_4")
    np.testing.assert_allclose(k.xyz, [[10, 20, 30]])
    assert k.class_names == ["ribosome"] and k.tomograms == ["TS_5_4"]
    shrec = _write(tmp_path / "particle_locations.txt", "4V94 10 20 30 1 2 3\nvesicle 1 2 3 NaN NaN NaN\n")
    assert detect_format(shrec) == "shrec"
    s = read_picks(shrec)
    assert s.class_names == ["4V94", "vesicle"]
    np.testing.assert_allclose(s.xyz, [[10, 20, 30], [1, 2, 3]])
    plain_txt = _write(tmp_path / "plain.txt", "1 2 3\n")
    assert detect_format(plain_txt) == "csv"
    tardis = _write(tmp_path / "t.csv", "IDs,X [A],Y [A],Z [A]\n0,40,80,120\n")
    np.testing.assert_allclose(read_picks(tardis, voxel_size=4.0).xyz, [[10, 20, 30]])


def test_detect_dynamo_copick_imod(tmp_path):
    write_picks(make_picks(), tmp_path / "t.tbl")
    assert detect_format(tmp_path / "t.tbl") == "dynamo"
    write_picks(make_picks(), tmp_path / "root", "copick")
    assert detect_format(tmp_path / "root") == "copick"
    assert detect_format(next((tmp_path / "root").rglob("*.json"))) == "copick"
    imodmodel = pytest.importorskip("imodmodel")
    df = pd.DataFrame({"x": [10.5, 20.5], "y": [5.5, 6.5], "z": [3.0, 4.0], "object_id": 0, "contour_id": 0})
    imodmodel.write(df, tmp_path / "m.mod")
    assert detect_format(tmp_path / "m.mod") == "imod"
    m = read_picks(tmp_path / "m.mod", class_name="ribosome")
    np.testing.assert_allclose(m.xyz, [[10, 5, 3], [20, 6, 4]])  # voxel centre i is model i + 0.5 (x, y)
    assert m.class_names == ["ribosome"]


def test_format_from_extension_defaults():
    assert format_from_extension("a.csv") == "csv"
    assert format_from_extension("a.star") == "relion4"
    assert format_from_extension("a.tbl") == "dynamo"
    assert format_from_extension("a.json") == "copick"
    assert format_from_extension("a.mod") == "imod"
    with pytest.raises(PicksFormatError, match=r"a\.xyz.*unknown picks file extension"):
        format_from_extension("a.xyz")
    with pytest.raises(PicksFormatError, match=r"tomo\.mrc.*tomogram"):
        format_from_extension("tomo.mrc")


# -- errors --------------------------------------------------------------------------------


def _raises(path, match, **kw):
    with pytest.raises(PicksFormatError) as err:
        read_picks(path, **kw)
    msg = str(err.value)
    assert str(path) in msg, msg
    assert __import__("re").search(match, msg), msg
    return msg


def test_error_star_without_coordinates(tmp_path):
    path = _write(tmp_path / "bad.star", "data_particles\n\nloop_\n_rlnTomoName\n_rlnAngleRot\nTS_01 10\n")
    _raises(path, r"no rlnCoordinateX column.*RELION particles file")
    with pytest.raises(PicksFormatError, match=r"bad\.star.*rlnCoordinateX"):
        read_picks(path, "relion4")


def test_error_relion4_missing_tomo_name(tmp_path):
    path = _write(tmp_path / "r.star", STAR_R30)
    _raises(path, r"rlnTomoName.*RELION 4", format="relion4")


def test_error_garbage_bytes(tmp_path):
    path = tmp_path / "tomogram_renamed.csv"
    path.write_bytes(b"MAP \x00\x00\x01\x02" + bytes(range(256)) * 4)
    _raises(path, "binary")
    star = tmp_path / "junk.star"
    star.write_bytes(bytes(range(256)))
    _raises(star, "binary|UTF-8")


def test_error_not_utf8(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("x,y,z,class\n1,2,3,prot\xe9ine\n".encode("latin-1"))
    _raises(path, "not UTF-8")
    tbl = tmp_path / "latin1.tbl"
    tbl.write_bytes(b"1 1 1 0 0 0 0 0 0 \xff\xfe\n")
    _raises(tbl, "not UTF-8")


def test_error_directory_and_missing(tmp_path):
    (tmp_path / "folder").mkdir()
    _raises(tmp_path / "folder", "is a directory")
    _raises(tmp_path / "folder", "is a directory", format="csv")
    _raises(tmp_path / "nothing.csv", "no such file")


@pytest.mark.parametrize("name", ["e.csv", "e.star", "e.json", "e.txt", "e.mod"])
def test_error_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    _raises(path, "empty|IMOD")


def test_error_missing_voxel_size(tmp_path):
    kag = _write(tmp_path / "k.csv", "id,experiment,particle_type,x,y,z\n0,TS,ribosome,1,2,3\n")
    _raises(kag, r"Angstrom.*voxel_size")
    cp = write_picks(make_picks(tomograms=("TS",)), tmp_path / "c.json", "copick", voxel_size=VS)[0]
    doc = json.loads(cp.read_text())
    doc["voxel_spacing"] = None
    cp.write_text(json.dumps(doc))
    _raises(cp, r"Angstrom.*voxel_size")
    with pytest.raises(PicksFormatError, match=r"w\.star.*voxel size"):
        write_picks(Picks.from_zyx([[1, 2, 3]]), tmp_path / "w.star")


def test_error_bad_values_and_columns(tmp_path):
    _raises(_write(tmp_path / "a.csv", "x,y,z\n1,2,three\n"), r"row 1.*'three'")
    _raises(_write(tmp_path / "b.csv", "a,b,c\n1,2,3\n"), r"no x, y, z")
    _raises(_write(tmp_path / "c.csv", "1,2\n3,4\n"), r"2 column")
    _raises(_write(tmp_path / "d.star", "data_\n\nloop_\n_rlnCoordinateX\n_rlnCoordinateY\n_rlnCoordinateZ\n1 2 abc\n"),
            r"non-numeric")
    _raises(_write(tmp_path / "e.json", "{not json"), "not valid JSON")
    _raises(_write(tmp_path / "f.json", '{"a": 1}'), "copick picks file")
    _raises(_write(tmp_path / "g.tbl", "1 2 3\n"), "at least 26")
    _raises(_write(tmp_path / "h.mod", "not a model"), "IMOD")
    _raises(_write(tmp_path / "i.txt", "4V94 1 2\n"), r"3 column|2 column|x, y, z|SHREC", format="shrec")
    with pytest.raises(PicksFormatError, match=r"j\.csv.*unknown picks format 'xml'"):
        read_picks(_write(tmp_path / "j.csv", "1,2,3\n"), "xml")
    _raises(tmp_path / "j.csv", r"binning", binning=0)


def test_write_errors(tmp_path):
    picks = make_picks()
    with pytest.raises(PicksFormatError, match=r"p\.star.*tomogram_shape"):
        write_picks(picks, tmp_path / "p.star", "relion5")
    with pytest.raises(PicksFormatError, match=r"p\.mod.*read-only"):
        write_picks(picks, tmp_path / "p.mod")
    with pytest.raises(PicksFormatError, match=r"p\.csv.*read-only"):
        write_picks(picks, tmp_path / "p.csv", "kaggle")
    with pytest.raises(PicksFormatError, match=r"missing.*does not exist"):
        write_picks(picks, tmp_path / "missing" / "p.csv")
    (tmp_path / "d.csv").mkdir()
    with pytest.raises(PicksFormatError, match=r"d\.csv.*is a directory"):
        write_picks(picks, tmp_path / "d.csv")
    with pytest.raises(PicksFormatError, match=r"p\.dat.*unknown"):
        write_picks(picks, tmp_path / "p.dat")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.csv"
    path.write_text("x,y,z\n1,2,3\n")
    import napari_cryopicker.core.atomic as atomic  # the one atomic-write helper every writer uses

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(PicksFormatError, match=r"keep\.csv.*No space left"):
        write_picks(make_picks(), path)
    assert path.read_text() == "x,y,z\n1,2,3\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]


@pytest.mark.parametrize("ext", [".csv", ".star", ".tbl", ".json", ".txt", ".mod"])
@pytest.mark.parametrize("content", [b"\n\n", b"#\n", b"x\n", b"1,2,3,\n,,,\n", b"data_\nloop_\n_a\n1\n",
                                     b"\xef\xbb\xbf1 2\n", b"{}", b"IMOD\x00\x01"])
def test_only_picks_format_errors_escape(tmp_path, ext, content):
    path = tmp_path / f"f{ext}"
    path.write_bytes(content)
    try:
        read_picks(path, voxel_size=5.0)
    except PicksFormatError as exc:
        assert str(path) in str(exc)
