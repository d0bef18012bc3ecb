"""Bad inputs: each gives one message naming the file, what is wrong and what to do.

Through the core API here, and through the command line (exit 2, one line
``cryopicker: error: ...``) where a user meets it there. docs/robustness.md lists them.
"""

from __future__ import annotations

import re
import warnings

import mrcfile
import numpy as np
import pytest

from napari_cryopicker.cli import main
from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.errors import CryoPickerError, CryoPickerWarning, PicksFormatError, TomogramError
from napari_cryopicker.core.formats import read_picks, write_picks
from napari_cryopicker.core.picks import Picks
from napari_cryopicker.core.tomogram import (
    Tomogram, count_nonfinite, normalise, open_tomogram, percentile_stats, robust_normalisation, write_tomogram,
)


def full(pattern: str, text: str) -> None:
    """``text`` is exactly ``pattern`` (a regex in which ``{}`` fields were escaped by the caller)."""
    assert re.fullmatch(pattern, text, flags=re.S), f"\n{text!r}\n does not match\n{pattern!r}"


def cli_error(argv, capsys) -> str:
    """Run the CLI; it must exit 2 with exactly one stderr line; return that line."""
    assert main([str(a) for a in argv]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("cryopicker: warning: ")]
    assert len(err) == 1 and err[0].startswith("cryopicker: error: "), err
    return err[0][len("cryopicker: error: "):]


@pytest.fixture
def picks_csv(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("x,y,z,class\n4,5,3,a\n")
    return p


# -- tomograms ---------------------------------------------------------------------------

def _truncated(p):
    data = write_tomogram(p, np.ones((8, 8, 8), np.float32), 5.0).read_bytes()
    p.write_bytes(data[:1024 + 100])  # header intact, data cut short


def _empty_volume(p):
    data = bytearray(write_tomogram(p, np.ones((4, 5, 6), np.float32), 5.0).read_bytes())
    data[0:4] = np.int32(0).tobytes()  # nx = 0
    p.write_bytes(bytes(data))


TOMOGRAM_CASES = {
    "truncated": (_truncated, r"not a valid MRC file or truncated \(.+\); re-export it from your "
                              r"reconstruction program"),
    "text renamed .mrc": (lambda p: p.write_bytes(b"x,y,z\n1,2,3\n" * 100),
                          r"not a valid MRC file or truncated \(Map ID string not found.*\); re-export it "
                          r"from your reconstruction program"),
    "too short for a header": (lambda p: p.write_bytes(b"MRC?" * 10),
                               r"not a readable MRC file \(.+\); check that this is the tomogram \(\.mrc/\.rec\)"
                               r" and not a renamed or partly copied file, or re-export it from your "
                               r"reconstruction program"),
    "2D image": (lambda p: mrcfile.new(p, data=np.zeros((5, 6), np.float32)).close(),
                 r"holds a 2D image of shape \(5, 6\); a tomogram must be a 3D volume \(z, y, x\)\. Open one "
                 r"tomogram, not a projection, tilt image or stack"),
    "4D stack": (lambda p: mrcfile.new(p, data=np.zeros((2, 3, 4, 5), np.float32)).close(),
                 r"holds 4D data \(a stack of volumes\) of shape \(2, 3, 4, 5\); a tomogram must be a 3D volume "
                 r"\(z, y, x\)\. Open one tomogram, not a projection, tilt image or stack"),
    "empty volume": (_empty_volume, r"holds an empty volume of shape \(4, 5, 0\); re-export the tomogram"),
    "directory": (lambda p: p.mkdir(), r"is a directory, not a tomogram file; give the \.mrc file inside it"),
    "missing": (lambda p: None, r"no such file"),
}


@pytest.mark.parametrize("case", list(TOMOGRAM_CASES))
def test_bad_tomogram_file(tmp_path, case, picks_csv, capsys):
    make, message = TOMOGRAM_CASES[case]
    p = tmp_path / "bad.mrc"
    make(p)
    with pytest.raises(TomogramError) as e:
        open_tomogram(p)
    full(re.escape(str(p)) + ": " + message, str(e.value))
    # the same line from the command line (any command that opens a tomogram)
    line = cli_error(["convert", picks_csv, tmp_path / "out.csv", "--tomogram", p], capsys)
    full(re.escape(str(p)) + ": " + message, line)


def test_zero_voxel_size_warns_naming_the_file(tmp_path, picks_csv, capsys):
    p = tmp_path / "novs.mrc"
    with mrcfile.new(p) as m:
        m.set_data(np.zeros((4, 8, 8), np.float32))
    with pytest.warns(CryoPickerWarning) as rec:
        t = open_tomogram(p)
    assert t.voxel_size == 1.0
    message = (re.escape(str(p)) + r": the MRC header has no voxel size \(0\); assuming 1 Angstrom per voxel\. "
               r"Set the real voxel size for correct export coordinates\.")
    full(message, str(rec[0].message))
    assert main(["convert", str(picks_csv), str(tmp_path / "o.star"), "--tomogram", str(p)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    full("cryopicker: warning: " + message, err[0])


def _nan_volume(shape=(32, 48, 48), seed=0):
    vol = np.random.default_rng(seed).normal(0.0, 1.0, shape).astype(np.float32)
    vol[5:7] = np.nan  # two slices of NaN
    vol[10, 10, 10] = np.inf
    vol[11, 11, 11] = -np.inf
    return vol


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's header statistics of the NaN volume
def test_nan_and_inf_voxels_warn_and_are_ignored(tmp_path):
    vol = _nan_volume()
    p = write_tomogram(tmp_path / "holes.mrc", vol, 10.0)
    with pytest.warns(CryoPickerWarning) as rec:
        t = open_tomogram(p)
    n_bad = 2 * 48 * 48 + 2
    full(re.escape(str(p)) + rf": {n_bad} voxel\(s\) are NaN or infinite; they are left out of the intensity "
         r"normalisation and read as the mean intensity\. Re-export the tomogram if this is unexpected\.",
         str(rec[0].message))
    assert count_nonfinite(t.data) == (n_bad, True)
    # big volumes are counted on a subset of slices
    assert count_nonfinite(vol, max_voxels=10_000)[1] is False
    # statistics of the finite voxels only
    lo, hi = percentile_stats(t.data)
    ref = np.percentile(vol[np.isfinite(vol)], [0.5, 99.5])
    assert np.isfinite([lo, hi]).all() and (lo, hi) == pytest.approx(tuple(ref), rel=1e-5)
    c, s = robust_normalisation(t.data)
    out = normalise(t.data, c, s)
    assert np.isfinite(out).all()
    assert (out[5:7] == 0).all() and out[10, 10, 10] == 0 and out[11, 11, 11] == 0
    assert percentile_stats(np.full((4, 4, 4), np.nan, np.float32)) == (0.0, 1.0)


def test_nan_voxels_never_give_nan_picks_or_losses():
    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet
    from napari_cryopicker.core.predict import PredictConfig, predict_picks
    from napari_cryopicker.core.train import TrainConfig, train_model

    import torch

    torch.manual_seed(0)
    classes = ClassTable([ParticleClass("a", 6)])
    tomo = Tomogram(_nan_volume(), 10.0)
    picks = Picks.from_zyx([[16, 20, 20], [20, 30, 30], [6, 24, 24]], class_name="a", voxel_size=10.0)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch=16, f_maps=(4, 8), device="cpu",
                      val_fraction=0.0, tune_thresholds=False)
    ck = train_model([tomo], [picks], classes, cfg)
    assert np.isfinite(ck.history[0]["train_loss"])
    # an untrained net that calls everything class "a": picks everywhere, all finite
    mc = ModelConfig(n_classes=1, f_maps=(4, 8), coord_conv=False)
    net = ResUNet(mc)
    with torch.no_grad():
        net.head.bias[:] = torch.tensor([0.0, 2.0])
    rnd = Checkpoint(model=mc.to_dict(), state_dict=net.state_dict(), classes=classes, voxel_size=10.0)
    res = predict_picks(tomo, rnd, PredictConfig(device="cpu", tile=32, margin=4, nms={"default": {"t_lm": 0.0}}),
                        return_probability=True)
    assert len(res.picks) > 0
    assert np.isfinite(res.picks.zyx).all() and np.isfinite(res.picks.table["score"]).all()
    assert np.isfinite(res.probability.astype(np.float32)).all()


# -- training and picking ------------------------------------------------------------------

TINY = dict(epochs=1, steps_per_epoch=1, batch_size=1, patch=16, f_maps=(4, 8), device="cpu",
            val_fraction=0.0, tune_thresholds=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A noise tomogram file (32, 48, 48) at 10 A and its picks file (class 'a', x y z in voxels)."""
    d = tmp_path_factory.mktemp("small")
    vol = np.random.default_rng(1).normal(size=(32, 48, 48)).astype(np.float32)
    t = write_tomogram(d / "t.mrc", vol, 10.0)
    return d, t


def _train(picks, classes=("a",), **kw):
    from napari_cryopicker.core.train import TrainConfig, train_model

    tomo = Tomogram(np.random.default_rng(1).normal(size=(32, 48, 48)).astype(np.float32), 10.0)
    table = ClassTable([ParticleClass(c, 6) for c in classes])
    return train_model([tomo], [picks], table, TrainConfig(**{**TINY, **kw}))


def test_unknown_class_names(small, tmp_path, capsys):
    picks = Picks.from_zyx([[10, 10, 10], [20, 20, 20]], class_name=["a", "zzz"], voxel_size=10.0)
    with pytest.raises(CryoPickerError) as e:
        _train(picks)
    full(r"tomogram 'tomogram': picks of class\(es\) zzz are not in the class table \(a\); add the class\(es\) "
         r"with a diameter or remove those picks", str(e.value))
    d, t = small
    p = tmp_path / "p.csv"
    p.write_text("x,y,z,class\n10,10,10,a\n20,20,20,zzz\n")
    line = cli_error(["train", "--tomogram", t, "--picks", p, "--class", "a=6", "--out", tmp_path / "m.pt"], capsys)
    full(re.escape(str(p)) + r": class\(es\) zzz are not among --class a; add --class zzz=DIAMETER", line)


def test_a_class_without_picks(small, tmp_path, capsys):
    picks = Picks.from_zyx([[10, 10, 10]], class_name="a", voxel_size=10.0)
    with pytest.raises(CryoPickerError) as e:
        _train(picks, classes=("a", "b"))
    full(r"class\(es\) b have no picks; pick a few of each class or remove the class", str(e.value))
    d, t = small
    p = tmp_path / "p.csv"
    p.write_text("x,y,z,class\n10,10,10,a\n")
    line = cli_error(["train", "--tomogram", t, "--picks", p, "--class", "a=6", "--class", "b=6",
                      "--out", tmp_path / "m.pt"], capsys)
    full(r"class\(es\) b have no picks; pick a few of each class or remove the class", line)


def test_picks_outside_the_volume(small, tmp_path, capsys):
    some = Picks.from_zyx([[10, 10, 10], [20, 20, 20], [40, 20, 20], [10, -3, 10]], class_name="a", voxel_size=10.0)
    with pytest.warns(CryoPickerWarning) as rec:
        ck = _train(some)
    assert ck.best_epoch == 1
    full(r"tomogram 'tomogram': 2 of 4 pick\(s\) lie outside the tomogram \(z, y, x = \(32, 48, 48\)\); "
         r"they are ignored", str(rec[0].message))
    none = Picks.from_zyx([[40, 10, 10], [10, 100, 10]], class_name="a", voxel_size=10.0)
    with pytest.raises(CryoPickerError) as e, warnings.catch_warnings():
        warnings.simplefilter("ignore", CryoPickerWarning)
        _train(none)
    full(r"class\(es\) a have no picks inside the tomogram\(s\) \(2 lie outside\); pick a few of each class or "
         r"remove the class", str(e.value))
    # the command line shows the warning, then trains
    d, t = small
    p = tmp_path / "p.csv"
    p.write_text("x,y,z,class\n10,10,10,a\n20,20,20,a\n200,20,20,a\n")
    assert main(["train", "--tomogram", str(t), "--picks", str(p), "--class", "a=6", "--out", str(tmp_path / "m.pt"),
                 "--epochs", "1", "--time-limit", "1", "--patch", "16", "--device", "cpu"]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("cryopicker:")]
    assert ("cryopicker: warning: " + str(t) + ": 1 of 3 pick(s) lie outside the tomogram (z, y, x = (32, 48, 48)); "
            "they are ignored") in err


def test_too_few_picks_for_a_validation_split():
    picks = Picks.from_zyx([[10, 10, 10], [20, 20, 20], [16, 30, 30]], class_name="a", voxel_size=10.0)
    with pytest.warns(CryoPickerWarning) as rec:
        ck = _train(picks, val_fraction=0.15)
    full(r"only 3 pick\(s\) per tomogram: holding out 15% for validation needs at least 10; training without "
         r"validation \(the epoch with the lowest training loss is kept and the pick thresholds are not tuned\)",
         str(rec[0].message))
    assert ck.history[0]["val_loss"] is None and ck.best_epoch == 1


def test_a_small_class_holding_auto_binning_back_is_named():
    # a 16-voxel class alone would be binned by 2; a 6-voxel look-alike keeps the run at full resolution
    from napari_cryopicker.core.train import TrainConfig, train_model

    tomo = Tomogram(np.random.default_rng(1).normal(size=(32, 48, 48)).astype(np.float32), 10.0)
    picks = Picks.from_zyx([[10, 12, 12], [20, 30, 30], [16, 20, 36], [12, 36, 14]],
                           class_name=["big", "big", "tiny", "tiny"], voxel_size=10.0)
    table = ClassTable([ParticleClass("big", 16), ParticleClass("tiny", 6)])
    with pytest.warns(CryoPickerWarning) as rec:
        ck = train_model([tomo], [picks], table, TrainConfig(**{**TINY, "binning": "auto"}))
    said = [str(w.message) for w in rec if "auto binning" in str(w.message)]
    assert said == ["class 'tiny' (6 voxels across) keeps auto binning at full resolution; without it the "
                    "network would work at bin 2, with 8x less work per step. For a look-alike kept apart only, "
                    "choose bin 2 (the Training panel's 'work at', or cryopicker train --bin 2)"]
    assert ck.binning == 1
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        train_model([tomo], [picks], table, TrainConfig(**{**TINY, "binning": 1}))  # chosen: nothing to say
    assert not [w for w in quiet if "auto binning" in str(w.message)]


def test_picks_at_another_voxel_size_are_rescaled():
    # picked on a 2x finer tomogram (5 A): at 10 A they are at half the coordinates, inside the volume
    picks = Picks.from_zyx([[20, 20, 20], [40, 60, 60]], class_name="a", voxel_size=5.0)
    with pytest.warns(CryoPickerWarning) as rec:
        ck = _train(picks)
    assert len(rec) == 1  # rescaled, so none is outside
    full(r"tomogram 'tomogram': the picks are at 5 A per voxel, the tomogram at 10 A; the pick coordinates were "
         r"rescaled to the tomogram's voxels", str(rec[0].message))
    assert ck.voxel_size == 10.0


def test_model_trained_at_another_voxel_size(small, tmp_path, capsys):
    import torch

    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet, save_checkpoint
    from napari_cryopicker.core.predict import predict_picks

    mc = ModelConfig(n_classes=1, f_maps=(4, 8))
    torch.manual_seed(0)
    ck = Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(),
                    classes=ClassTable([ParticleClass("a", 6)]), voxel_size=20.0)
    d, t = small
    with pytest.raises(CryoPickerError) as e:
        predict_picks(open_tomogram(t), ck)
    message = (re.escape(str(t)) + r": voxel size 10 A differs from the model's 20 A; bin or rescale the tomogram to "
               r"the model's voxel size, or train a model at this voxel size")
    full(message, str(e.value))
    model = save_checkpoint(ck, tmp_path / "m20.pt")
    full(message, cli_error(["predict", "--model", model, "--tomogram", t, "--out", tmp_path / "o.csv",
                             "--device", "cpu"], capsys))


# -- picks files ---------------------------------------------------------------------------

PICKS_CASES = {
    "star missing columns": ("m.star", b"data_particles\n\nloop_\n_rlnCoordinateX\n_rlnTomoName\n1 TS\n",
                             r"has no rlnCoordinateY, rlnCoordinateZ column\(s\); is this a RELION particles file\?"),
    "star without coordinates": ("n.star", b"data_particles\n\nloop_\n_rlnTomoName\n_rlnAngleRot\nTS 10\n",
                                 r"has no rlnCoordinateX column \(columns: \['rlnAngleRot', 'rlnTomoName'\]\); is "
                                 r"this a RELION particles file\?"),
    "UTF-16 csv": ("u.csv", "x,y,z,class\n1,2,3,a\n".encode("utf-16"),
                   r"is UTF-16 text; re-save it as UTF-8 \(e\.g\. 'CSV UTF-8' in a spreadsheet program\) and open that"),
    "UTF-16 star, no BOM": ("u.star", "data_\nloop_\n_rlnCoordinateX\n1\n".encode("utf-16-le"),
                            r"is UTF-16 text; re-save it as UTF-8 \(e\.g\. 'CSV UTF-8' in a spreadsheet program\) and "
                            r"open that"),
    "Latin-1 csv": ("l.csv", "x,y,z,class\n1,2,3,prot\xe9ine\n".encode("latin-1"),
                    r"is not UTF-8 text \(undecodable byte at offset 22\); re-save it as UTF-8 or check that it is a "
                    r"picks file"),
    "binary junk csv": ("j.csv", b"MAP \x00\x00\x01\x02" + bytes(range(256)) * 4,
                        r"is a binary file, not a text picks file; is this a tomogram or a model\?"),
    "binary junk star": ("j.star", bytes(range(256)),
                         r"is a binary file, not a text picks file; is this a tomogram or a model\?"),
    "empty csv": ("e.csv", b"", r"is empty \(no picks and no header\)"),
    "directory": ("folder", None, r"is a directory, not a picks file \(and holds no copick picks JSON\); give the file "
                                  r"inside it"),
}


@pytest.mark.parametrize("case", list(PICKS_CASES))
def test_bad_picks_file(tmp_path, case, capsys):
    name, content, message = PICKS_CASES[case]
    p = tmp_path / name
    if content is None:
        p.mkdir()
    else:
        p.write_bytes(content)
    with pytest.raises(PicksFormatError) as e:
        read_picks(p, voxel_size=10.0)
    full(re.escape(str(p)) + ": " + message, str(e.value))
    full(re.escape(str(p)) + ": " + message, cli_error(["convert", p, tmp_path / "out.csv"], capsys))


def test_a_directory_where_a_file_is_written_or_a_model_is_read(tmp_path, capsys):
    from napari_cryopicker.core.errors import ModelError
    from napari_cryopicker.core.model import load_checkpoint

    (tmp_path / "d.csv").mkdir()
    with pytest.raises(PicksFormatError) as e:
        write_picks(Picks.from_zyx([[1, 2, 3]], voxel_size=10.0), tmp_path / "d.csv")
    full(re.escape(str(tmp_path / "d.csv")) + r": is a directory; give a file name to write to", str(e.value))
    (tmp_path / "m.pt").mkdir()
    with pytest.raises(ModelError) as e:
        load_checkpoint(tmp_path / "m.pt")
    message = re.escape(str(tmp_path / "m.pt")) + r": is a directory; give the model file \(\.pt\) saved by cryopicker train"
    full(message, str(e.value))
    t = write_tomogram(tmp_path / "t.mrc", np.zeros((8, 8, 8), np.float32), 10.0)
    full(message, cli_error(["predict", "--model", tmp_path / "m.pt", "--tomogram", t, "--out", tmp_path / "o.csv"],
                            capsys))


def _rescale_message(path, stated, target):
    return (re.escape(str(path)) + rf": the picks were made at {stated:g} A per voxel; they were rescaled to this "
            rf"tomogram's {target:g} A voxels \(coordinates x {stated / target:.4g}\)")


@pytest.mark.parametrize("fmt, name", [("copick", "c.json"), ("dynamo", "d.tbl"), ("relion3", "r3.star"),
                                       ("relion5", "particles.star")])
def test_picks_file_at_another_voxel_size_is_rescaled_and_said(tmp_path, fmt, name, capsys):
    # picked on a 20 A tomogram; read for a 10 A tomogram: twice the voxel coordinates
    picks = Picks.from_zyx([[4, 5, 6], [7, 8, 9]], class_name="a", tomogram="TS", voxel_size=20.0)
    write_picks(picks, tmp_path / name, fmt, tomogram_shape=(30, 40, 50))
    with pytest.warns(CryoPickerWarning) as rec:
        back = read_picks(tmp_path / name, voxel_size=10.0)
    np.testing.assert_allclose(back.zyx, picks.zyx * 2, atol=1e-4)
    assert back.voxel_size == 10.0
    messages = [str(w.message) for w in rec if issubclass(w.category, CryoPickerWarning)]
    assert len(messages) == 1
    full(_rescale_message(tmp_path / name, 20.0, 10.0), messages[0])
    # the same reading at the file's own voxel size says nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryoPickerWarning)
        read_picks(tmp_path / name, voxel_size=20.0)
    # the command line shows it as a warning line
    assert main(["convert", str(tmp_path / name), str(tmp_path / "o.csv"), "--voxel-size", "10"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    full("cryopicker: warning: " + _rescale_message(tmp_path / name, 20.0, 10.0), err[0])


def test_empty_picks_on_export(tmp_path, capsys):
    """Writing no picks gives a valid empty file of the format (a tomogram without particles in a
    batch still gets its output); the GUI's export refuses instead (tests/napari/test_widgets.py)."""
    src = tmp_path / "none.csv"
    src.write_text("x,y,z,class\n")
    assert main(["convert", str(src), str(tmp_path / "none.star"), "--voxel-size", "10"]) == 0
    assert capsys.readouterr().out.strip() == f"converted 0 picks: {tmp_path / 'none.star'}"
    assert len(read_picks(tmp_path / "none.star", voxel_size=10.0)) == 0


def test_class_without_a_diameter_in_evaluate(tmp_path, capsys):
    truth = tmp_path / "t.csv"
    truth.write_text("x,y,z,class\n1,2,3,a\n")
    picks = tmp_path / "p.csv"
    picks.write_text("x,y,z,class\n1,2,3,b\n")
    line = cli_error(["evaluate", "--picks", picks, "--truth", truth, "--class", "a=5"], capsys)
    full(re.escape(str(picks)) + r": class\(es\) b have no diameter; add --class NAME=DIAMETER_VOXELS", line)


def test_damaged_imod_models_fail_fast(tmp_path, capsys):
    """imodmodel's own parser loops forever without the IEOF marker (found by the fuzzer)."""
    import imodmodel
    import pandas as pd

    good = tmp_path / "good.mod"
    imodmodel.write(pd.DataFrame({"object_id": [0, 0], "contour_id": [0, 0], "x": [1.5, 2.5], "y": [4.5, 5.5],
                                  "z": [7.0, 8.0]}), good)
    data = good.read_bytes()
    assert data.endswith(b"IEOF")
    cases = {
        "no_end.mod": (data[:-4], r"is truncated or damaged \(no IEOF end marker\); re-save the model in IMOD"),
        "huge.mod": (data.replace(b"CONT\x00\x00\x00\x02", b"CONT\x7f\xff\xff\xff"),
                     r"is truncated or damaged \(a 'CONT' chunk runs past the end\); re-save the model in IMOD"),
    }
    for name, (content, message) in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(PicksFormatError) as e:
            read_picks(p)
        full(re.escape(str(p)) + ": " + message, str(e.value))
    full(re.escape(str(tmp_path / "no_end.mod")) + ": " + cases["no_end.mod"][1],
         cli_error(["convert", tmp_path / "no_end.mod", tmp_path / "o.csv"], capsys))


# -- model files ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: a file appears if the payload ever runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def _tiny_checkpoint():
    import torch

    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet

    mc = ModelConfig(n_classes=1, f_maps=(4, 8))
    torch.manual_seed(0)
    return Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(),
                      classes=ClassTable([ParticleClass("a", 6)]), voxel_size=10.0)


NOT_LOADED = r"not a cryopicker model, or it is corrupted or holds code that is not loaded for safety \(.*\)"
DAMAGED = r"model file is damaged or inconsistent \(.*{}.*\)"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch on the legacy pickle
def test_tampered_checkpoints_are_refused_and_never_run(tmp_path, capsys):
    import pickle

    import torch

    from napari_cryopicker.core.errors import ModelError
    from napari_cryopicker.core.model import load_checkpoint

    # the payload is live: plain unpickling runs it
    probe = tmp_path / "probe-ran"
    pickle.loads(pickle.dumps(_Payload(probe)))
    assert probe.exists()

    marker = tmp_path / "payload-ran"
    good = _tiny_checkpoint().to_payload()
    cases = {}
    torch.save({**good, "extra": _Payload(marker)}, tmp_path / "inside.pt")
    cases["inside.pt"] = NOT_LOADED
    torch.save(_Payload(marker), tmp_path / "whole.pt")
    cases["whole.pt"] = NOT_LOADED
    with open(tmp_path / "legacy.pt", "wb") as f:  # a plain (non-zip) pickle
        pickle.dump({"format": "napari-cryopicker-checkpoint", "x": _Payload(marker)}, f)
    cases["legacy.pt"] = NOT_LOADED
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(5000))
    cases["random.pt"] = NOT_LOADED
    for key in ("state_dict", "model", "classes"):
        torch.save({k: v for k, v in good.items() if k != key}, tmp_path / f"no_{key}.pt")
        cases[f"no_{key}.pt"] = DAMAGED.format(re.escape(repr(key)))
    torch.save({**good, "state_dict": dict(list(good["state_dict"].items())[1:])}, tmp_path / "no_weight.pt")
    cases["no_weight.pt"] = DAMAGED.format("Missing key")
    torch.save({**good, "version": 99}, tmp_path / "newer.pt")
    cases["newer.pt"] = r"written by a newer napari-cryopicker; upgrade to load it"
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    cases["foreign.pt"] = r"not a napari-cryopicker model file \(no 'napari-cryopicker-checkpoint' tag\)"
    for name, message in cases.items():
        with pytest.raises(ModelError) as e:
            load_checkpoint(tmp_path / name)
        full(re.escape(str(tmp_path / name)) + ": " + message, str(e.value))
    assert not marker.exists()
    # from the command line: one plain line (no terminal colour codes, no line breaks)
    t = write_tomogram(tmp_path / "t.mrc", np.zeros((8, 8, 8), np.float32), 10.0)
    for name in ("inside.pt", "no_weight.pt"):
        line = cli_error(["predict", "--model", tmp_path / name, "--tomogram", t, "--out", tmp_path / "o.csv"],
                         capsys)
        assert "\x1b" not in line
        full(re.escape(str(tmp_path / name)) + ": " + cases[name], line)
    assert not marker.exists()


def test_stopgap_reader_without_data_blocks_is_a_format_error(tmp_path):
    """Found by the fuzzer: a mutated motivelist whose STAR parse gave no blocks raised StopIteration."""
    from napari_cryopicker.core.errors import PicksFormatError
    from napari_cryopicker.core.formats import stopgap
    from napari_cryopicker.core.formats._common import ReadOptions

    path = tmp_path / "m.star"
    with pytest.raises(PicksFormatError, match=r"m\.star: holds no STAR data block; is this a STOPGAP motivelist\?"):
        stopgap.read(path, ReadOptions(), blocks={})
