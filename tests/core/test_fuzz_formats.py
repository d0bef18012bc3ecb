"""Fuzzing the picks importers with hypothesis.

* random bytes, token soup and random JSON, written with every picks extension, and
* valid files of every format with random mutations (truncation, flipped or inserted bytes,
  deleted, doubled or swapped lines, numbers replaced by junk),

read with the format auto-detected and with each format forced, never raise anything but
:class:`PicksFormatError` (whose message names a file), and what they do return has finite
coordinates. Random valid picks survive every writer/reader pair exactly (within the
format's float precision).

The runs are derandomized (same cases every time); the number of cases that ran is printed
at the end of the module ("fuzz cases run: ...") and recorded in docs/robustness.md.
"""

from __future__ import annotations

import collections
import json
import shutil
import string
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_cryopicker.core.errors import PicksFormatError
from napari_cryopicker.core.formats import FORMAT_NAMES, read_picks, write_picks
from napari_cryopicker.core.formats._angles import relion_to_matrices
from napari_cryopicker.core.picks import Picks

COUNT: collections.Counter = collections.Counter()


def fuzz(n: int):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


class _CountReport:
    """Prints the number of fuzz cases in pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter):
        total = sum(COUNT.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(COUNT.items()))
        terminalreporter.write_line(f"fuzz cases run: {total} ({parts})")


@pytest.fixture(scope="module", autouse=True)
def report_count(request):
    plugin = _CountReport()
    if not request.config.pluginmanager.is_registered(plugin):
        request.config.pluginmanager.register(plugin, "cryopicker-fuzz-count")
    yield


def read_or_format_error(path: Path, folder: Path, **kw) -> Picks | None:
    """read_picks must return finite picks or raise PicksFormatError naming a file in ``folder``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = read_picks(path, **kw)
        except PicksFormatError as e:
            assert str(e).startswith(str(folder)), str(e)
            return None
    assert isinstance(out, Picks)
    assert np.isfinite(out.zyx).all()
    return out


EXTENSIONS = [".csv", ".tsv", ".txt", ".star", ".tbl", ".json", ".mod", ".doc", ""]
FORMATS = [None, *FORMAT_NAMES]


# -- random input ----------------------------------------------------------------------------

@fuzz(250)
@given(data=st.binary(max_size=3000), ext=st.sampled_from(EXTENSIONS), fmt=st.sampled_from(FORMATS),
       vs=st.sampled_from([None, 10.0]))
def test_random_bytes(tmp_path, data, ext, fmt, vs):
    COUNT["random bytes"] += 1
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = Path(d) / f"f{ext}"
        path.write_bytes(data)
        read_or_format_error(path, Path(d), format=fmt, voxel_size=vs)


WORDS = ["x", "y", "z", "class", "class_name", "score", "source", "tomogram", "rot", "tilt", "psi", "index",
         "axis-0", "axis-1", "axis-2", "id", "experiment", "particle_type", "X [A]", "manual", "predicted",
         "data_", "data_particles", "data_optics", "data_global", "data_cryopicker_classes", "loop_",
         "_rlnCoordinateX", "_rlnCoordinateY", "_rlnCoordinateZ", "_rlnTomoName", "_rlnMicrographName",
         "_rlnCenteredCoordinateXAngst", "_rlnCenteredCoordinateYAngst", "_rlnCenteredCoordinateZAngst",
         "_rlnOriginXAngst", "_rlnOriginX", "_rlnClassNumber", "_rlnImagePixelSize", "_rlnPixelSize",
         "_rlnTomoTiltSeriesPixelSize", "_rlnTomoSizeX", "_rlnTomoSizeY", "_rlnTomoSizeZ",
         "_rlnTomoTomogramBinning", "_rlnAngleRot", "_rlnOpticsGroup", "_cryopickerClassName",
         "_orig_x", "_orig_y", "_orig_z", "_x_shift", "_tomo_num", "4V94", "vesicle", "TS_01", "IMOD",
         "nan", "NaN", "inf", "-inf", "1e999", "-", "", "#", '"', "'", "{", "}", "[", "]", ":"]
NUMBERS = st.one_of(st.integers(-5, 400).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.floats(-1000, 1000).map(lambda f: f"{f:.3f}"))
TOKENS = st.one_of(st.sampled_from(WORDS), NUMBERS, NUMBERS)
LINES = st.lists(st.tuples(st.lists(TOKENS, max_size=12), st.sampled_from([",", "\t", " ", "|", ";", "  "])),
                 max_size=25)


@fuzz(250)
@given(lines=LINES, ext=st.sampled_from(EXTENSIONS), fmt=st.sampled_from(FORMATS),
       vs=st.sampled_from([None, 10.0]))
def test_token_soup(tmp_path, lines, ext, fmt, vs):
    COUNT["token soup"] += 1
    text = "\n".join(sep.join(tokens) for tokens, sep in lines)
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = Path(d) / f"f{ext}"
        path.write_text(text)
        read_or_format_error(path, Path(d), format=fmt, voxel_size=vs)


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10), st.floats(allow_nan=False), st.text(max_size=5)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(["x", "y", "z", "location", "score", "transformation_", "points",
                                         "pickable_object_name", "voxel_spacing", "unit", "run_name"]),
                        inner, max_size=5)),
    max_leaves=20,
)


@fuzz(80)
@given(doc=st.fixed_dictionaries(
    {"pickable_object_name": st.one_of(st.text(max_size=5), st.integers()),
     "points": st.one_of(JSON_VALUES, st.lists(st.fixed_dictionaries(
         {"location": st.one_of(JSON_VALUES, st.fixed_dictionaries({a: JSON_VALUES for a in "xyz"}))},
         optional={"score": JSON_VALUES, "transformation_": JSON_VALUES}), max_size=3))},
    optional={"voxel_spacing": JSON_VALUES, "unit": st.sampled_from(["angstrom", "nm", "A", None, 3]),
              "run_name": JSON_VALUES}),
    vs=st.sampled_from([None, 10.0]))
def test_random_copick_json(tmp_path, doc, vs):
    COUNT["random copick JSON"] += 1
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        path = Path(d) / "p.json"
        path.write_text(json.dumps(doc))
        read_or_format_error(path, Path(d), voxel_size=vs)


# -- mutated valid files ------------------------------------------------------------------------

VS = 7.84
SHAPE = (40, 90, 100)


def _seed_picks() -> Picks:
    rng = np.random.default_rng(7)
    n = 5
    return Picks.from_zyx(rng.uniform(0, 1, (n, 3)) * (np.array(SHAPE) - 1),
                          class_name=["ribosome", "apo", "ribosome", "apo", "ribosome"],
                          score=rng.uniform(0, 1, n).round(3), tomogram=["TS_01", "TS_01", "TS_02", "TS_02", "TS_02"],
                          source="manual", voxel_size=VS,
                          angles=np.column_stack([rng.uniform(-180, 180, n), rng.uniform(0, 180, n),
                                                  rng.uniform(-180, 180, n)]))


SEED_TEXT = {
    "stopgap": ("motl.star", "data_stopgap_motivelist\n\nloop_\n_motl_idx\n_tomo_num\n_object\n_subtomo_num\n"
                             "_halfset\n_orig_x\n_orig_y\n_orig_z\n_score\n_x_shift\n_y_shift\n_z_shift\n_phi\n_psi\n"
                             "_the\n_class\n1 1 1 1 A 4.0 8.0 12.0 0.18 -1.2 -2.4 -3.2 90 180 45 1\n"
                             "2 1 1 2 A 4.0 4.0 4.0 0.17 3.2 2.4 1.2 -45 120 90 2\n"),
    "shrec": ("particle_locations.txt", "4V94 10 20 30 1 2 3\n1BXN 11.5 21 31.25 0 0 0\nvesicle 1 2 3 NaN NaN NaN\n"),
    "kaggle": ("sub.csv", "id,experiment,particle_type,x,y,z\n0,TS_5_4,ribosome,5871.5,4518.4,1256.2\n"
                          "1,TS_5_4,apo-ferritin,100.0,200.0,300.0\n"),
    "csv headerless": ("plain.txt", "1 2 3\n4.5 5.5 6.5\n"),
    "tardis": ("tardis.csv", "X [A],Y [A],Z [A]\n10,20,30\n40,50,60\n"),
}


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, tuple[Path, str | None]]:
    """format label -> (folder holding one valid file set, main file name)."""
    root = tmp_path_factory.mktemp("seeds")
    picks = _seed_picks()
    out = {}
    writes = [("csv", "picks.csv"), ("napari", "points.csv"), ("relion3", "warp.star"), ("relion4", "p4.star"),
              ("relion5", "particles.star"), ("dynamo", "table.tbl"), ("copick", "copick.json")]
    for fmt, name in writes:
        d = root / fmt
        d.mkdir()
        p = picks if fmt != "copick" else picks.select(tomogram="TS_02", class_name="ribosome")
        write_picks(p, d / name, fmt, binning=2.0 if fmt.startswith("relion") else 1.0, tomogram_shape=SHAPE)
        out[fmt] = (d, name)
    for label, (name, text) in SEED_TEXT.items():
        d = root / label.replace(" ", "_")
        d.mkdir()
        (d / name).write_text(text)
        out[label] = (d, name)
    import imodmodel

    d = root / "imod"
    d.mkdir()
    imodmodel.write(pd.DataFrame({"object_id": [0, 0, 1], "contour_id": [0, 0, 0], "x": [1.5, 2.5, 3.5],
                                  "y": [4.5, 5.5, 6.5], "z": [7.0, 8.0, 9.0]}), d / "model.mod")
    out["imod"] = (d, "model.mod")
    for label, (d, name) in out.items():  # every seed is valid
        assert read_or_format_error(d / name, d, voxel_size=VS), label
    return out


SEED_LABELS = ["csv", "napari", "relion3", "relion4", "relion5", "dynamo", "copick", "stopgap", "shrec",
               "kaggle", "csv headerless", "tardis", "imod"]
JUNK = ["nan", "NaN", "inf", "-inf", "", "1e999", "-1e999", "abc", "-", "1e-320", "9" * 400, "0x10", '"',
        "data_", "loop_", "_rlnCoordinateX", "#", "\t", ",", "{", "]", "\x00", "é"]
FRAC = st.floats(0, 1)
MUTATION = st.one_of(
    st.tuples(st.just("truncate"), FRAC),
    st.tuples(st.just("byte"), FRAC, st.integers(0, 255)),
    st.tuples(st.just("insert"), FRAC, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete line"), FRAC),
    st.tuples(st.just("double line"), FRAC),
    st.tuples(st.just("swap lines"), FRAC, FRAC),
    st.tuples(st.just("junk token"), FRAC, st.sampled_from(JUNK)),
    st.tuples(st.just("drop token"), FRAC),
)


def _at(frac: float, n: int) -> int:
    return min(n - 1, int(frac * n)) if n else 0


def mutate(data: bytes, m: tuple) -> bytes:
    kind = m[0]
    if kind == "truncate":
        return data[: _at(m[1], len(data) + 1)]
    if kind == "byte":
        if not data:
            return bytes([m[2]])
        i = _at(m[1], len(data))
        return data[:i] + bytes([m[2]]) + data[i + 1:]
    if kind == "insert":
        i = _at(m[1], len(data) + 1)
        return data[:i] + m[2] + data[i:]
    lines = data.split(b"\n")
    if kind == "delete line":
        del lines[_at(m[1], len(lines))]
    elif kind == "double line":
        i = _at(m[1], len(lines))
        lines.insert(i, lines[i])
    elif kind == "swap lines":
        i, j = _at(m[1], len(lines)), _at(m[2], len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    else:  # replace or drop one whitespace/comma separated token
        tokens = [(li, ti) for li, ln in enumerate(lines) for ti, _ in enumerate(ln.replace(b",", b" ").split())]
        if tokens:
            li, ti = tokens[_at(m[1], len(tokens))]
            parts = lines[li].replace(b",", b" ").split()
            sep = b"," if b"," in lines[li] else b" "
            if kind == "junk token":
                parts[ti] = m[2].encode()
            else:
                del parts[ti]
            lines[li] = sep.join(parts)
    return b"\n".join(lines)


@fuzz(400)
@given(label=st.sampled_from(SEED_LABELS), which=FRAC, mutations=st.lists(MUTATION, min_size=1, max_size=3),
       forced=st.booleans(), vs=st.sampled_from([None, VS]))
def test_mutated_valid_files(tmp_path, seeds, label, which, mutations, forced, vs):
    COUNT["mutated valid files"] += 1
    src, name = seeds[label]
    with tempfile.TemporaryDirectory(dir=tmp_path) as d:
        d = Path(d)
        for f in src.iterdir():
            shutil.copy(f, d / f.name)
        files = sorted(d.iterdir())
        target = files[_at(which, len(files))]  # the main file or a companion (.doc, tomograms.star, ...)
        data = target.read_bytes()
        for m in mutations:
            data = mutate(data, m)
        target.write_bytes(data)
        fmt = label if forced and label in FORMAT_NAMES else None
        read_or_format_error(d / name, d, format=fmt, voxel_size=vs)


# -- round trips ------------------------------------------------------------------------------

NAME_CHARS = string.ascii_letters + string.digits + "_-"
CLASS_NAMES = st.text(NAME_CHARS + " .", min_size=1, max_size=12).map(str.strip).filter(
    lambda s: s and s.lower() != "nan" and s[0] not in "-.")
TOMO_NAMES = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True).filter(lambda s: s.lower() != "nan")
COORD = st.floats(-50, 3000, allow_nan=False, allow_infinity=False)
ANGLE = st.floats(-180, 180, allow_nan=False)


@st.composite
def random_picks(draw, one_tomogram=False):
    n = draw(st.integers(0, 12))
    classes = draw(st.lists(CLASS_NAMES, min_size=1, max_size=3, unique=True))
    tomos = draw(st.lists(TOMO_NAMES, min_size=1, max_size=1 if one_tomogram else 3, unique=True))
    angles = draw(st.booleans())
    return Picks.from_zyx(
        np.array(draw(st.lists(st.tuples(COORD, COORD, COORD), min_size=n, max_size=n)), float).reshape(-1, 3),
        class_name=[draw(st.sampled_from(classes)) for _ in range(n)],
        score=[draw(st.floats(0, 1)) for _ in range(n)],
        tomogram=[draw(st.sampled_from(tomos)) for _ in range(n)],
        source=[draw(st.sampled_from(["manual", "predicted", "accepted", "rejected", "imported"])) for _ in range(n)],
        voxel_size=draw(st.sampled_from([1.0, 7.84, 13.48, 10.0])),
        angles=np.array([[draw(ANGLE), draw(st.floats(0, 180)), draw(ANGLE)] for _ in range(n)]).reshape(-1, 3)
        if angles else None,
    )


def _sorted(p: Picks) -> pd.DataFrame:
    """Rows grouped by tomogram and class (a copick folder is one file per run and object); the
    order inside a group is the file's, which every format keeps."""
    return p.table.sort_values(["tomogram", "class_name"], kind="stable").reset_index(drop=True)


# format, file name, atol of coordinates (voxels), keeps source, keeps angles, one tomogram per file
ROUND_TRIPS = [
    ("csv", "p.csv", 0.0, True, True, False),
    ("napari", "p.csv", 0.0, True, True, False),
    ("relion3", "p.star", 1e-5, False, True, False),
    ("relion4", "p.star", 1e-5, False, True, False),
    ("relion5", "particles.star", 1e-5, False, True, False),
    ("dynamo", "p.tbl", 1e-4, False, True, False),
    ("copick", "root", 1e-9, False, True, False),
    ("copick", "one.json", 1e-9, False, True, True),
]


@pytest.mark.parametrize("fmt, name, atol, keeps_source, keeps_angles, one_tomogram", ROUND_TRIPS,
                         ids=[f"{r[0]}-{r[1]}" for r in ROUND_TRIPS])
def test_round_trip(tmp_path, fmt, name, atol, keeps_source, keeps_angles, one_tomogram):
    @fuzz(20)
    @given(picks=random_picks(one_tomogram=one_tomogram), binning=st.sampled_from([1.0, 2.0, 4.0]))
    def run(picks, binning):
        COUNT[f"round trip {fmt}"] += 1
        if name.endswith(".json") and len(set(picks.class_names)) > 1:
            picks = picks.select(class_name=picks.class_names[0])  # one copick file holds one object
        with tempfile.TemporaryDirectory(dir=tmp_path) as d:
            path = Path(d) / name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                write_picks(picks, path, fmt, binning=binning, tomogram_shape=SHAPE)
                back = read_picks(path, fmt, voxel_size=picks.voxel_size,
                                  binning=binning if fmt in ("csv", "napari") else 1.0)
        assert back.voxel_size == pytest.approx(picks.voxel_size)
        a, b = _sorted(picks), _sorted(back)
        assert len(a) == len(b)
        if not len(a):
            return
        np.testing.assert_allclose(b[["z", "y", "x"]].to_numpy(), a[["z", "y", "x"]].to_numpy(), rtol=0,
                                   atol=atol + 1e-12 * np.abs(a[["z", "y", "x"]].to_numpy()).max())
        assert b["class_name"].tolist() == a["class_name"].tolist()
        assert b["tomogram"].tolist() == a["tomogram"].tolist()
        np.testing.assert_allclose(b["score"], a["score"], rtol=0, atol=1e-6)
        if keeps_source:
            assert b["source"].tolist() == a["source"].tolist()
        if keeps_angles and picks.has_angles:
            ma = relion_to_matrices(a[["rot", "tilt", "psi"]].to_numpy())
            # copick stores no angles when every rotation is the identity
            mb = relion_to_matrices(b[["rot", "tilt", "psi"]].to_numpy() if back.has_angles else np.zeros((len(b), 3)))
            np.testing.assert_allclose(mb, ma, atol=1e-5)

    run()
