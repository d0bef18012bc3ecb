"""The `cryopicker` command line, run as a user would (in-process through main())."""

import mrcfile
import pandas as pd
import pytest
import starfile

from napari_cryopicker.cli import main


@pytest.fixture(scope="module")
def simdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["simulate", str(out), "--preset", "simple", "--seed", "4", "--shape", "48", "112", "112",
                 "--snr", "2"]) == 0
    return out


def test_simulate_realistic_is_the_default(tmp_path, capsys):
    import json

    assert main(["simulate", str(tmp_path), "--seed", "1", "--shape", "48", "128", "128", "--dose", "80"]) == 0
    with mrcfile.open(tmp_path / "tomogram.mrc") as m:
        assert m.data.shape == (48, 128, 128) and m.voxel_size.x == pytest.approx(10.0)
        assert abs(float(m.data.mean())) < 0.2
    df = pd.read_csv(tmp_path / "picks.csv")
    assert {"ribosome", "mitoribosome", "proteasome", "chaperonin"} <= set(df["class"])
    classes = {c["name"]: c["diameter"] for c in json.loads((tmp_path / "classes.json").read_text())}
    assert classes["ribosome"] == 28 and classes["chaperonin"] == 14 and len(classes) >= 10
    assert len(classes) == 13


def test_simulate_writes_tomogram_and_truth(simdir, capsys):
    with mrcfile.open(simdir / "tomogram.mrc") as m:
        assert m.data.shape == (48, 112, 112)
        assert m.voxel_size.x == pytest.approx(10.0)
    df = pd.read_csv(simdir / "picks.csv")
    assert list(df.columns[:4]) == ["x", "y", "z", "class"] and len(df) > 0


def test_evaluate_truth_against_itself_and_a_shifted_copy(simdir, tmp_path, capsys):
    assert main(["evaluate", "--picks", str(simdir / "picks.csv"), "--truth", str(simdir / "picks.csv")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "overall precision=1.000 recall=1.000 f1=1.000"
    df = pd.read_csv(simdir / "picks.csv")
    df.loc[: len(df) // 2 - 1, "x"] += 30  # half the picks move far away
    df.to_csv(tmp_path / "moved.csv", index=False)
    assert main(["evaluate", "--picks", str(tmp_path / "moved.csv"), "--truth", str(simdir / "picks.csv"),
                 "--fbeta", "4"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("overall precision=0.5") and "f4=" in last


def test_convert_to_relion_and_back(simdir, tmp_path, capsys):
    star = tmp_path / "p.star"
    assert main(["convert", str(simdir / "picks.csv"), str(star), "--tomogram", str(simdir / "tomogram.mrc"),
                 "--binning", "2"]) == 0
    df = starfile.read(star)
    parts = df["particles"] if isinstance(df, dict) else df
    src = pd.read_csv(simdir / "picks.csv")
    assert parts["rlnCoordinateX"].to_numpy() == pytest.approx(src["x"].to_numpy() * 2, abs=1e-3)
    back = tmp_path / "back.csv"
    assert main(["convert", str(star), str(back), "--tomogram", str(simdir / "tomogram.mrc"),
                 "--in-binning", "2"]) == 0
    b = pd.read_csv(back)
    assert b["x"].to_numpy() == pytest.approx(src["x"].to_numpy(), abs=1e-3)
    assert b["class"].tolist() == src["class"].tolist()


def test_train_predict_round_trip(simdir, tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.pt"
    rc = main(["train", "--tomogram", str(simdir / "tomogram.mrc"), "--picks", str(simdir / "picks.csv"),
               "--class", "ribosome=25", "--class", "shell=13", "--class", "barrel=18", "--class", "blob=9",
               "--out", str(model), "--epochs", "1", "--patch", "32", "--device", "cpu", "--no-sparse"])
    assert rc == 0 and model.exists()
    assert "epoch   1" in capsys.readouterr().out
    from napari_cryopicker.core.model import load_checkpoint

    assert load_checkpoint(model).train_config["sparse"] is False
    out = tmp_path / "picks.star"
    assert main(["predict", "--model", str(model), "--tomogram", str(simdir / "tomogram.mrc"),
                 "--out", str(out), "--threshold", "0.0", "--device", "cpu"]) == 0
    assert out.exists()
    assert "picks" in capsys.readouterr().out
    # smaller tiles in batches of two give the same picks
    out2 = tmp_path / "picks2.star"
    assert main(["predict", "--model", str(model), "--tomogram", str(simdir / "tomogram.mrc"),
                 "--out", str(out2), "--threshold", "0.0", "--device", "cpu", "--tile", "48",
                 "--batch-size", "2"]) == 0
    import starfile

    a, b = (starfile.read(p) for p in (out, out2))
    a, b = (x["particles"] if isinstance(x, dict) else x for x in (a, b))
    assert len(b) > 0 and abs(len(a) - len(b)) <= max(2, len(a) // 10)
    # --compile on builds the network compiled for the CPU once and picks with it (the same
    # picks); off never runs it; auto runs it once this process has it loaded. A stand-in for
    # AOTInductor that counts its calls (tests/core/test_predict.py runs the real one).
    import torch

    from napari_cryopicker.core import compiled

    built, calls = [], []

    class Counted(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            calls.append(tuple(x.shape))
            return self.net(x)

    monkeypatch.delenv("CRYOPICKER_COMPILE", raising=False)
    monkeypatch.setenv("CRYOPICKER_COMPILE_CACHE", str(tmp_path / "compiled"))
    monkeypatch.setattr(compiled, "_LOADED", {})
    monkeypatch.setattr(compiled, "_PREDICTED", {})
    monkeypatch.setattr(compiled, "_build", lambda net, shape, path: (built.append(shape), torch.save(net, path)))
    monkeypatch.setattr(compiled, "_load", lambda path, batch: Counted(torch.load(path, weights_only=False)))
    out3 = tmp_path / "picks3.star"
    for flag, runs_compiled in (("on", True), ("off", False), ("auto", True)):
        calls.clear()
        assert main(["predict", "--model", str(model), "--tomogram", str(simdir / "tomogram.mrc"),
                     "--out", str(out3), "--threshold", "0.0", "--device", "cpu", "--compile", flag]) == 0
        c = starfile.read(out3)
        c = c["particles"] if isinstance(c, dict) else c
        assert len(c) == len(a), flag
        assert bool(calls) == runs_compiled, flag
        assert len(built) == 1 and len(list((tmp_path / "compiled").glob("*.pt2"))) == 1


def test_train_makes_several_networks_unless_told(simdir, tmp_path, capsys):
    """`cryopicker train` trains several networks by default (three, never more than its
    epochs: two here, each with one epoch) and says so; --members 1 trains one; --members 0 is one clear line."""
    from napari_cryopicker.core.model import load_checkpoint

    base = ["train", "--tomogram", str(simdir / "tomogram.mrc"), "--picks", str(simdir / "picks.csv"),
            "--class", "ribosome=25", "--class", "shell=13", "--class", "barrel=18", "--class", "blob=9",
            "--epochs", "2", "--patch", "32", "--device", "cpu"]
    assert main([*base, "--out", str(tmp_path / "two.pt")]) == 0
    out = capsys.readouterr().out
    assert "epoch   1  network 1" in out and "epoch   2  network 2" in out and "2 networks" in out
    assert load_checkpoint(tmp_path / "two.pt").n_members == 2
    assert main([*base, "--out", str(tmp_path / "one.pt"), "--members", "1"]) == 0
    assert load_checkpoint(tmp_path / "one.pt").n_members == 1 and "  network 1" not in capsys.readouterr().out
    assert main([*base, "--out", str(tmp_path / "none.pt"), "--members", "0"]) == 2
    assert "--members 0" in capsys.readouterr().err


def test_train_turns_crops_by_30_degrees_and_snaps_clicks_unless_told(simdir, tmp_path, capsys):
    """The model records the rotation it was trained with: 30 by default, --rotate 0 none;
    an angle out of range is one clear line. Likewise the clicks moved onto their centres
    (on; --no-snap off)."""
    from napari_cryopicker.core.model import load_checkpoint

    base = ["train", "--tomogram", str(simdir / "tomogram.mrc"), "--picks", str(simdir / "picks.csv"),
            "--class", "ribosome=25", "--class", "shell=13", "--class", "barrel=18", "--class", "blob=9",
            "--epochs", "1", "--patch", "32", "--device", "cpu", "--members", "1"]
    assert main([*base, "--out", str(tmp_path / "a.pt")]) == 0
    assert load_checkpoint(tmp_path / "a.pt").train_config["rotate"] == 30.0
    assert load_checkpoint(tmp_path / "a.pt").train_config["snap_clicks"] is True
    assert main([*base, "--out", str(tmp_path / "b.pt"), "--rotate", "0", "--no-snap"]) == 0
    assert load_checkpoint(tmp_path / "b.pt").train_config["rotate"] == 0.0
    assert load_checkpoint(tmp_path / "b.pt").train_config["snap_clicks"] is False
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c.pt"), "--rotate", "-5"]) == 2
    assert "--rotate -5" in capsys.readouterr().err


def test_train_matches_a_template_of_the_classes_named_and_predict_can_leave_it_out(simdir, tmp_path, capsys):
    """--template NAME averages that class's picks into a template the model keeps; predict
    scores the class by it (the template's threshold for it) unless --no-template; bad
    values are one clear line."""
    import numpy as np
    import pandas as pd

    from napari_cryopicker.core.model import load_checkpoint

    sim = tmp_path / "sim"  # a bigger phantom than simdir's: 4 blobs are too few for a template
    assert main(["simulate", str(sim), "--preset", "simple", "--seed", "4", "--shape", "48", "160", "160",
                 "--snr", "2"]) == 0
    mrc = str(sim / "tomogram.mrc")
    base = ["train", "--tomogram", mrc, "--picks", str(sim / "picks.csv"),
            "--class", "ribosome=25", "--class", "shell=13", "--class", "barrel=18", "--class", "blob=9",
            "--epochs", "2", "--patch", "32", "--device", "cpu", "--members", "1"]
    assert main([*base, "--out", str(tmp_path / "a.pt"), "--template", "blob", "--tilt-range", "55"]) == 0
    ck = load_checkpoint(tmp_path / "a.pt")
    assert set(ck.templates) == {"blob"} and ck.templates["blob"]["tilt_range"] == 55.0
    assert ck.train_config["template"] == "blob"
    with_t, without = tmp_path / "with.csv", tmp_path / "without.csv"
    assert main(["predict", "--model", str(tmp_path / "a.pt"), "--tomogram", mrc, "--out", str(with_t),
                 "--device", "cpu", "--keep-fiducials"]) == 0
    assert main(["predict", "--model", str(tmp_path / "a.pt"), "--tomogram", mrc, "--out", str(without),
                 "--device", "cpu", "--keep-fiducials", "--no-template"]) == 0
    a, b = pd.read_csv(with_t), pd.read_csv(without)
    cls = [c for c in a.columns if "class" in c][0]
    others_a, others_b = a[a[cls] != "blob"], b[b[cls] != "blob"]
    assert len(others_a) == len(others_b) and np.allclose(others_a[["x", "y", "z"]], others_b[["x", "y", "z"]])
    blob = a[a[cls] == "blob"]
    assert (blob["score"] >= ck.templates["blob"]["threshold"] - 1e-6).all()
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c.pt"), "--template", "blob,nope"]) == 2
    err = capsys.readouterr().err
    assert "no class named 'nope'" in err and "ribosome, shell, barrel, blob" in err
    assert main([*base, "--out", str(tmp_path / "d.pt"), "--tilt-range", "0"]) == 2
    assert "--tilt-range 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["evaluate", "--picks", "/nonexistent/p.csv", "--truth", "/nonexistent/t.csv"], "/nonexistent/t.csv"),
        (["train", "--tomogram", "/nope.mrc", "--picks", "x.csv", "--class", "a=5", "--out", "m.pt"], "/nope.mrc"),
        (["predict", "--model", "/nope/model.pt", "--tomogram", "t.mrc", "--out", "o.csv"], "/nope/model.pt"),
        (["train", "--tomogram", "a.mrc", "--picks", "a.csv", "--class", "ribosome", "--out", "m.pt"],
         "NAME=DIAMETER"),
    ],
)
def test_bad_input_is_one_clear_line(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.mrc").write_bytes(b"")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cryopicker: error: ") and needle in err[0]


def test_truncated_mrc_named_in_error(tmp_path, capsys):
    bad = tmp_path / "broken.mrc"
    bad.write_bytes(b"\x00" * 100)
    (tmp_path / "p.csv").write_text("x,y,z,class\n1,2,3,a\n")
    assert main(["train", "--tomogram", str(bad), "--picks", str(tmp_path / "p.csv"), "--class", "a=5",
                 "--out", str(tmp_path / "m.pt")]) == 2
    assert "broken.mrc" in capsys.readouterr().err


def test_demo_runs_on_the_realistic_preset(tmp_path, capsys):
    """`cryopicker demo`: realistic tomograms, four of 13 classes clicked, train, pick, score, export."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--time-limit", "3", "--shape", "48", "128", "128",
                 "--per-class", "2", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "realistic preset" in text and "of 13 classes" in text
    for cls in ("ribosome", "mitoribosome", "proteasome", "chaperonin"):
        assert cls in text
    assert (out / "model.pt").exists() and (out / "picks" / "test.csv").exists()
    assert (out / "train" / "tomogram.mrc").exists() and (out / "test" / "picks.csv").exists()


def test_train_and_predict_on_a_copick_project(simdir, tmp_path, capsys, copick_project):
    """A project the copick library made (two runs, OME-Zarr tomograms, a user's picks):
    `cryopicker train --copick` learns its particle objects from those picks, and `cryopicker
    predict --copick ... --copick-user` stores the picks where copick reads them."""
    copick = pytest.importorskip("copick")
    import numpy as np

    from napari_cryopicker.core.tomogram import open_tomogram

    truth = pd.read_csv(simdir / "picks.csv")
    names = sorted(truth["class"].unique())[:2]
    objects = [{"name": n, "is_particle": True, "label": i + 1, "radius": 60.0} for i, n in enumerate(names)]
    vol = np.asarray(open_tomogram(simdir / "tomogram.mrc").data)
    cfg, _, root = copick_project(objects, runs={"TS_1": vol, "TS_2": vol})
    for n in names:  # alice clicked TS_1 only
        sel = truth[truth["class"] == n]
        pk = root.get_run("TS_1").new_picks(n, "0", "alice")
        pk.from_numpy(sel[["x", "y", "z"]].to_numpy(float) * 10.0)
    model = tmp_path / "m.pt"
    assert main(["train", "--copick", str(cfg), "--copick-user", "alice", "--out", str(model), "--epochs", "1",
                 "--device", "cpu", "--patch", "32"]) == 0
    out = capsys.readouterr().out
    assert "training on 1 run(s): TS_1" in out
    from napari_cryopicker.core.model import load_checkpoint

    assert load_checkpoint(model).classes.names == names  # the project's objects, diameter from the radius
    assert main(["predict", "--model", str(model), "--copick", str(cfg), "--out", str(tmp_path / "picks"),
                 "--threshold", "0.0", "--device", "cpu", "--copick-user", "cryopicker",
                 "--copick-session", "1"]) == 0
    fresh = copick.from_file(str(cfg))
    for run_name in ("TS_1", "TS_2"):
        stored = fresh.get_run(run_name).get_picks(user_id="cryopicker", session_id="1")
        assert stored and sum(len(p.points) for p in stored) > 0, run_name


def test_level_trains_and_picks_an_ome_zarr_at_a_coarser_scale(simdir, tmp_path, capsys, copick_project):
    """--level N works on that scale level of an OME-Zarr tomogram: the model's voxels and
    the picks are that level's; an MRC has one level, and the error says so."""
    pytest.importorskip("copick")
    import numpy as np

    from napari_cryopicker.core.formats import read_picks
    from napari_cryopicker.core.model import load_checkpoint
    from napari_cryopicker.core.tomogram import open_tomogram

    truth = pd.read_csv(simdir / "picks.csv")
    name = sorted(truth["class"].unique())[0]
    vol = np.asarray(open_tomogram(simdir / "tomogram.mrc").data)
    cfg, folder, root = copick_project([{"name": name, "is_particle": True, "label": 1, "radius": 80.0}],
                                       runs={"TS_1": vol})
    sel = truth[truth["class"] == name]
    root.get_run("TS_1").new_picks(name, "0", "alice").from_numpy(sel[["x", "y", "z"]].to_numpy(float) * 10.0)
    model = tmp_path / "m.pt"
    assert main(["train", "--copick", str(cfg), "--copick-user", "alice", "--level", "1", "--out", str(model),
                 "--epochs", "1", "--device", "cpu", "--patch", "16", "--bin", "1"]) == 0
    ck = load_checkpoint(model)
    assert ck.voxel_size == 20.0 and ck.classes[name].diameter == pytest.approx(8.0)  # 160 A at 20 A
    zarr_path = folder / "ExperimentRuns" / "TS_1" / "VoxelSpacing10.000" / "wbp.zarr"
    out = tmp_path / "picks.csv"
    assert main(["predict", "--model", str(model), "--tomogram", str(zarr_path), "--level", "1", "--out", str(out),
                 "--threshold", "0.0", "--device", "cpu"]) == 0
    picks = read_picks(out)
    assert len(picks)
    assert (picks.zyx < np.array(vol.shape) / 2).all()  # level 1's voxels
    capsys.readouterr()
    assert main(["predict", "--model", str(model), "--tomogram", str(simdir / "tomogram.mrc"), "--level", "1",
                 "--out", str(tmp_path / "x.csv"), "--device", "cpu"]) != 0
    assert "an MRC file has one scale level" in capsys.readouterr().err
