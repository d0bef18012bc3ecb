"""Interrupted work loses nothing: processes killed with SIGKILL (kill -9) in the middle of
training or of an annotation autosave leave the last complete file behind.

Each case runs a real child process (``python -c``) and kills it at a chosen or random
moment; the file it was writing must then be absent or a complete, loadable earlier version.
(A picking run stopped in the GUI is tested in tests/napari/test_robustness.py.)
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from napari_cryopicker.cli import main
from napari_cryopicker.core.model import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Child:
    """A child process whose stdout lines are read as they come."""

    def __init__(self, code: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines: list[str] = []

    def wait_for(self, predicate, timeout: float = 120.0) -> str:
        """Read lines until one satisfies ``predicate``; returns it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                self.kill()
                raise AssertionError(f"child ended early: {self.lines[-5:]} {self.proc.stderr.read()[-2000:]}")
            self.lines.append(line.strip())
            if predicate(line.strip()):
                return line.strip()
        self.kill()
        raise AssertionError(f"timed out waiting; last lines {self.lines[-5:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.lines += [ln.strip() for ln in self.proc.stdout.read().splitlines()]  # what it said before
        assert self.proc.returncode in (-signal.SIGKILL, 0, 1), self.proc.returncode


# -- training --------------------------------------------------------------------------------

TRAIN = """
import sys
import torch
from napari_cryopicker.core.simulate import simulate_tomogram
from napari_cryopicker.core.tomogram import Tomogram
from napari_cryopicker.core.train import TrainConfig, train_model
out = sys.argv[1]
if len(sys.argv) > 2 and sys.argv[2] == "slow-second-save":
    # the second save stops half-way for a long time, so the kill lands in the middle of it
    real_save, n = torch.save, [0]
    def slow_save(obj, f, *a, **k):
        import io, time
        n[0] += 1
        if n[0] < 2:
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        with open(f, "wb") as part:
            part.write(data[: len(data) // 2])
            part.flush()
            print("MID-SAVE", flush=True)
            time.sleep(60)
            part.write(data[len(data) // 2:])
    torch.save = slow_save
sim = simulate_tomogram(shape=(32, 64, 64), seed=2, classes=["ribosome"], snr=2.0, n_per_class=6)
cfg = TrainConfig(epochs=100_000, steps_per_epoch=2, batch_size=1, patch=16, f_maps=(4, 8), device="cpu",
                  val_fraction=0.0, tune_thresholds=False, checkpoint_path=out)
train_model([Tomogram(sim.data, sim.voxel_size)], [sim.picks], sim.classes, cfg,
            on_epoch=lambda r: print("epoch", r["epoch"], flush=True))
"""


def _loadable(model: Path):
    ck = load_checkpoint(model)  # complete, tagged, and the weights fit the network
    assert ck.classes.names == ["ribosome"] and ck.best_epoch >= 1
    assert [h["epoch"] for h in ck.history] == list(range(1, len(ck.history) + 1))
    return ck


def test_training_killed_at_a_random_moment_leaves_a_loadable_model(tmp_path):
    model = tmp_path / "model.pt"
    child = Child(TRAIN, str(model))
    child.wait_for(lambda ln: ln.startswith("epoch"))  # the first epoch is over: a model was saved
    assert model.exists()
    time.sleep(random.Random(4).uniform(0.2, 1.0))  # tens of epochs (and saves) later
    child.kill()
    epochs = [int(ln.split()[1]) for ln in child.lines if ln.startswith("epoch")]
    assert len(epochs) > 1
    ck = _loadable(model)
    assert ck.best_epoch <= epochs[-1] + 1


def test_training_killed_in_the_middle_of_a_save_keeps_the_previous_model(tmp_path):
    model = tmp_path / "model.pt"
    child = Child(TRAIN, str(model), "slow-second-save")
    child.wait_for(lambda ln: ln.startswith("MID-SAVE"))
    before = model.read_bytes()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".model.pt.") and p.suffix == ".tmp"]
    assert partial, "the half-written temp file should be beside the model"
    child.kill()
    assert model.read_bytes() == before  # untouched by the half-done save
    assert _loadable(model).best_epoch == 1


def test_cryopicker_train_writes_out_after_every_better_epoch(tmp_path, monkeypatch, capsys):
    """The CLI passes --out as the checkpoint path: a Ctrl-C after an epoch leaves that model."""
    import napari_cryopicker.core.train as train_mod
    from napari_cryopicker.core.model import save_checkpoint
    from napari_cryopicker.core.tomogram import write_tomogram

    seen = {}

    def train_then_interrupt(tomos, picks, classes, config, **kw):
        seen["path"] = config.checkpoint_path
        ck = real(tomos, picks, classes, train_mod.TrainConfig(**{**config.__dict__, "epochs": 1, "patch": 16,
                                                                   "f_maps": (4, 8), "steps_per_epoch": 1}))
        save_checkpoint(ck, config.checkpoint_path)
        raise KeyboardInterrupt

    real = train_mod.train_model
    monkeypatch.setattr(train_mod, "train_model", train_then_interrupt)
    vol = np.random.default_rng(0).normal(size=(32, 48, 48)).astype(np.float32)
    tomo = write_tomogram(tmp_path / "t.mrc", vol, 10.0)
    (tmp_path / "p.csv").write_text("x,y,z,class\n10,10,10,a\n20,30,16,a\n")
    out = tmp_path / "model.pt"
    assert main(["train", "--tomogram", str(tomo), "--picks", str(tmp_path / "p.csv"), "--class", "a=6",
                 "--out", str(out), "--device", "cpu"]) == 130
    assert seen["path"] == str(out)
    assert "cryopicker: interrupted" in capsys.readouterr().err
    assert load_checkpoint(out).classes.names == ["a"]


# -- annotation autosave -----------------------------------------------------------------------

AUTOSAVE = """
import sys, numpy as np
from napari_cryopicker.core.annotations import write_json_atomic
path, n = sys.argv[1], 60_000
rng = np.random.default_rng(0)
for seq in range(1_000_000):
    z = rng.uniform(0, 500, n).round(3).tolist()
    payload = {"format": "napari-cryopicker-annotations", "version": 1, "seq": seq,
               "picks": {"z": z, "y": z, "x": z, "class_name": ["ribosome"] * n, "score": [1.0] * n,
                         "source": ["manual"] * n},
               "check": round(sum(z), 3)}
    write_json_atomic(__import__("pathlib").Path(path), payload)
    print("saved", seq, flush=True)
"""


def test_autosave_killed_during_saves_is_absent_or_a_complete_earlier_version(tmp_path):
    rnd = random.Random(1)
    path = tmp_path / "TS_01.cryopicker.json"
    outcomes = {"absent": 0, "complete": 0}
    for kill in range(5):
        path.unlink(missing_ok=True)
        child = Child(AUTOSAVE, str(path))
        if kill == 0:  # before or during the very first save
            time.sleep(rnd.uniform(1.0, 2.0))
        else:
            child.wait_for(lambda ln: ln.startswith("saved"))
            time.sleep(rnd.uniform(0.0, 1.0))
        child.kill()
        saved = [int(ln.split()[1]) for ln in child.lines if ln.startswith("saved")]
        if not path.exists():
            assert not saved  # a save that was reported done is never lost
            outcomes["absent"] += 1
            continue
        payload = json.loads(path.read_text())  # complete JSON, never a torn file
        z = payload["picks"]["z"]
        assert len(z) == len(payload["picks"]["x"]) == 60_000
        assert round(sum(z), 3) == payload["check"]
        assert payload["seq"] >= (saved[-1] if saved else 0)  # the last reported save or a later one
        assert payload["seq"] <= (saved[-1] + 1 if saved else 0)
        outcomes["complete"] += 1
    assert outcomes["complete"] >= 3
