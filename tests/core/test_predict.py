import numpy as np
import pytest
import torch

from napari_cryopicker.core.predict import PredictConfig, predict_picks, read_block, segment, tile_starts
from napari_cryopicker.core.tomogram import Tomogram


class BoxFilterNet(torch.nn.Module):
    """Two-class 'network' whose class-1 logit is a (2h+1)^3 box sum of the input."""

    def __init__(self, h):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 2 * h + 1, padding=h, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1.0)

    def forward(self, x):
        y = self.conv(x)
        return torch.cat([torch.zeros_like(y), y], dim=1)


def test_tile_starts_cover_axis_exactly():
    for n in (1, 7, 50, 72, 73, 200, 513):
        for tile, m in ((32, 4), (96, 12), (64, 0)):
            step = tile - 2 * m
            starts = tile_starts(n, tile, m)
            covered = np.zeros(n, bool)
            for s in starts:
                covered[s : s + step] = True
            assert covered.all() and starts == sorted(set(starts))


def test_read_block_mirrors_outside_volume():
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    blk = read_block(data, (-2, 1, 3), (6, 3, 6))
    assert blk.shape == (6, 3, 6)
    assert np.array_equal(blk[2:, :, :4], data[0:4, 1:4, 3:7])
    assert np.array_equal(blk[0], data[2, 1:4][:, [3, 4, 5, 6, 5, 4]])


@pytest.mark.parametrize("shape", [(40, 50, 61), (17, 90, 33)])
def test_overlap_tiles_equal_whole_volume_in_the_interior(shape):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=shape).astype(np.float32)
    h = 3
    net = BoxFilterNet(h)
    tomo = Tomogram(vol, 1.0)
    cfg = PredictConfig(device="cpu", tile=24, margin=4, batch_size=3, keep_probability=True)
    label, conf, full = segment(tomo, net, 1, 8, cfg, torch.device("cpu"), (0.0, 1.0))
    with torch.no_grad():
        ref = torch.softmax(net(torch.from_numpy(vol)[None, None]), 1)[0].numpy()
    inner = tuple(slice(h, s - h) for s in shape)
    assert np.allclose(full[1][inner], ref[1][inner], atol=2e-3)
    assert np.array_equal(label[inner], (ref[1] > 0.5)[inner].astype(np.uint8))
    expect_conf = np.round(np.maximum(ref[0], ref[1]) * 255)
    assert np.abs(conf[inner].astype(int) - expect_conf[inner]).max() <= 1


def test_segment_can_be_cancelled():
    from napari_cryopicker.core.errors import Cancelled
    from napari_cryopicker.core.progress import Progress

    prog = Progress()
    seen = []

    def cb(done, total, msg):
        seen.append(done)
        prog.cancel()

    prog.callback = cb
    tomo = Tomogram(np.zeros((40, 40, 40), np.float32), 1.0)
    with pytest.raises(Cancelled):
        segment(tomo, BoxFilterNet(1), 1, 8, PredictConfig(device="cpu", tile=16, margin=2),
                torch.device("cpu"), (0.0, 1.0), progress=prog)
    assert len(seen) == 1


class OOMAboveBatch(BoxFilterNet):
    """Runs out of memory (as torch reports it) for batches larger than ``limit``."""

    def __init__(self, h, limit):
        super().__init__(h)
        self.limit = limit
        self.seen = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(x)


def test_out_of_memory_halves_the_batch_and_says_so():
    from napari_cryopicker.core.errors import CryoPickerWarning

    vol = np.random.default_rng(0).normal(size=(30, 40, 50)).astype(np.float32)
    tomo = Tomogram(vol, 1.0)
    cfg = PredictConfig(device="cpu", tile=16, margin=2, batch_size=8)
    ref = segment(tomo, BoxFilterNet(1), 1, 8, PredictConfig(device="cpu", tile=16, margin=2, batch_size=2),
                  torch.device("cpu"), (0.0, 1.0))
    net = OOMAboveBatch(1, limit=2)
    with pytest.warns(CryoPickerWarning, match="out of memory on cpu with 8 tiles of 16x16x16; going on "
                                               "with batches of 4"):
        got = segment(tomo, net, 1, 8, cfg, torch.device("cpu"), (0.0, 1.0))
    assert net.seen[:3] == [8, 4, 2] and max(net.seen[3:]) == 2  # stays at the size that fitted
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_out_of_memory_for_one_tile_on_the_cpu_is_a_clear_error():
    from napari_cryopicker.core.errors import CryoPickerError

    tomo = Tomogram(np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32), 1.0)
    cfg = PredictConfig(device="cpu", tile=16, margin=2, batch_size=1)
    with pytest.raises(CryoPickerError, match=r"out of memory for one tile of 16x16x16 voxels on the CPU: "
                                              r"use a smaller tile"):
        segment(tomo, OOMAboveBatch(1, limit=0), 1, 8, cfg, torch.device("cpu"), (0.0, 1.0))


def test_constant_tiles_are_background_without_running_the_network():
    vol = np.zeros((24, 48, 48), np.float32)
    vol[:, :, 24:] = np.random.default_rng(0).normal(size=(24, 48, 24))
    net = OOMAboveBatch(1, limit=100)
    cfg = PredictConfig(device="cpu", tile=24, margin=0, batch_size=1)
    label, conf, _ = segment(Tomogram(vol, 1.0), net, 1, 8, cfg, torch.device("cpu"), (0.0, 1.0))
    assert len(net.seen) == 2  # 4 tiles, the two all-zero ones skipped
    assert (label[:, :, :24] == 0).all()
    ran = segment(Tomogram(vol, 1.0), BoxFilterNet(1), 1, 8, PredictConfig(device="cpu", tile=24, margin=0,
                  skip_empty=False), torch.device("cpu"), (0.0, 1.0))
    assert np.array_equal(ran[0][:, :, 24:], label[:, :, 24:])


def test_a_tomogram_bigger_than_the_output_budget_is_stitched_on_disk_with_bounded_memory(tmp_path):
    """A 2 GiB sparse MRC (mostly empty, one noisy corner) is picked tile by tile in a
    subprocess; its RAM (anonymous memory, sampled) stays below half the volume's size:
    no float copy of the volume (8 GiB) and no in-RAM stitched result (4 GiB), only the
    working set of one 192^3 tile."""
    import subprocess
    import sys
    import textwrap

    import mrcfile

    path = tmp_path / "huge.mrc"
    shape = (1024, 1024, 2048)  # int8: 2 GiB on disk, sparse
    with mrcfile.new_mmap(str(path), shape=shape, mrc_mode=0, overwrite=True) as m:
        m.voxel_size = 10.0
        m.data[:64, :96, :96] = np.random.default_rng(0).integers(-60, 60, (64, 96, 96), dtype=np.int8)
    assert path.stat().st_size >= 2 << 30
    code = textwrap.dedent(f"""
        import threading, time, torch
        torch.set_num_threads(1)
        peak = [0]
        def watch():
            while True:
                for line in open("/proc/self/status"):
                    if line.startswith("RssAnon:"):
                        peak[0] = max(peak[0], int(line.split()[1]) * 1024)
                time.sleep(0.02)
        threading.Thread(target=watch, daemon=True).start()
        from napari_cryopicker.core.classes import ClassTable, ParticleClass
        from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet
        from napari_cryopicker.core.predict import PredictConfig, predict_picks
        from napari_cryopicker.core.tomogram import open_tomogram
        torch.manual_seed(0)
        mc = ModelConfig(n_classes=1, f_maps=(4, 8))
        ck = Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(),
                        classes=ClassTable([ParticleClass("p", 9)]), voxel_size=10.0)
        tomo = open_tomogram({str(path)!r})
        base = peak[0]
        res = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=192, margin=8,
                                                   max_ram_output=64 << 20))
        time.sleep(0.1)
        assert isinstance(res.label, __import__("numpy").memmap), type(res.label)
        print("PEAK", peak[0] - base, len(res.picks))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    extra = int(out.stdout.split("PEAK")[1].split()[0])
    assert extra < 1 << 30, f"picking a 2 GiB tomogram took {extra / 2**20:.0f} MiB of RAM"


# ----------------------------------------------------------------------------- compiled networks
@pytest.fixture()
def tiny_model_and_tomogram(monkeypatch, tmp_path):
    from napari_cryopicker.core import compiled
    from napari_cryopicker.core.classes import ClassTable, ParticleClass
    from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet

    monkeypatch.delenv("CRYOPICKER_COMPILE", raising=False)
    monkeypatch.setenv("CRYOPICKER_COMPILE_CACHE", str(tmp_path / "compiled"))
    monkeypatch.setattr(compiled, "_LOADED", {})
    monkeypatch.setattr(compiled, "_PREDICTED", {})
    torch.manual_seed(0)
    mc = ModelConfig(n_classes=2, f_maps=(4, 8), coord_conv=False)
    classes = ClassTable([ParticleClass("a", 8), ParticleClass("b", 6)])
    ck = Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(), classes=classes, voxel_size=10.0)
    vol = np.random.default_rng(0).normal(size=(24, 40, 40)).astype(np.float32)
    return ck, Tomogram(vol, 10.0)


@pytest.fixture()
def fake_compiler(monkeypatch):
    """Stands in for AOTInductor: 'builds' by pickling the folded network, 'loads' it back
    (the same numbers as the eager path), and counts both."""
    from napari_cryopicker.core import compiled

    calls = {"build": [], "load": 0, "fail": False}

    def build(net, shape, path):
        calls["build"].append(shape)
        if calls["fail"]:
            raise RuntimeError("no C++ compiler found")
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(net, path)

    def load(path, batch):
        calls["load"] += 1
        return torch.load(path, weights_only=False)

    monkeypatch.setattr(compiled, "_build", build)
    monkeypatch.setattr(compiled, "_load", load)
    return calls


def _new_process(monkeypatch):
    from napari_cryopicker.core import compiled

    monkeypatch.setattr(compiled, "_LOADED", {})
    monkeypatch.setattr(compiled, "_PREDICTED", {})


def test_auto_builds_for_the_second_tomogram_then_loads_from_the_cache(tiny_model_and_tomogram, fake_compiler,
                                                                        monkeypatch):
    from napari_cryopicker.core import compiled

    ck, tomo = tiny_model_and_tomogram
    cfg = PredictConfig(device="cpu", tile=24, margin=4, compile="auto")
    first = predict_picks(tomo, ck, cfg)
    assert fake_compiler["build"] == []  # one small tomogram: not worth building
    second = predict_picks(tomo, ck, cfg)
    assert len(fake_compiler["build"]) == 1 and fake_compiler["build"][0][:2] == (1, 1)  # a batch: built
    assert len(list(compiled.cache_dir().glob("*.pt2"))) == 1
    predict_picks(tomo, ck, cfg)
    assert len(fake_compiler["build"]) == 1 and fake_compiler["load"] == 1  # once per process
    assert np.array_equal(first.label, second.label) and first.picks.equals(second.picks)
    _new_process(monkeypatch)
    monkeypatch.setattr(compiled, "LOAD_MIN_TILES", 1000)
    predict_picks(tomo, ck, cfg)  # a later run of a tomogram too small to pay for loading it
    assert fake_compiler["load"] == 1
    _new_process(monkeypatch)
    monkeypatch.setattr(compiled, "LOAD_MIN_TILES", 2)
    predict_picks(tomo, ck, cfg)  # one big enough: the package on disk is loaded at once
    assert len(fake_compiler["build"]) == 1 and fake_compiler["load"] == 2
    predict_picks(tomo, ck, PredictConfig(device="cpu", tile=16, margin=4, compile="auto"))
    assert len(fake_compiler["build"]) == 1  # another tile shape starts afresh
    monkeypatch.setattr(compiled, "COMPILE_MIN_TILES", 2)
    predict_picks(tomo, ck, PredictConfig(device="cpu", tile=32, margin=4, compile="auto"))
    assert len(fake_compiler["build"]) == 2  # a tomogram of many tiles builds at once
    monkeypatch.setenv("CRYOPICKER_COMPILE", "0")
    predict_picks(tomo, ck, PredictConfig(device="cpu", tile=40, margin=4, compile=True))
    monkeypatch.delenv("CRYOPICKER_COMPILE")
    predict_picks(tomo, ck, PredictConfig(device="cpu", tile=40, margin=4, compile=False))
    assert len(fake_compiler["build"]) == 2


def test_a_failed_build_warns_once_and_predicts_without(tiny_model_and_tomogram, fake_compiler):
    from napari_cryopicker.core import compiled
    from napari_cryopicker.core.errors import CryoPickerWarning

    ck, tomo = tiny_model_and_tomogram
    fake_compiler["fail"] = True
    plain = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4))
    with pytest.warns(CryoPickerWarning, match="no C.. compiler found"):
        got = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4, compile=True))
    assert np.array_equal(got.label, plain.label) and got.picks.equals(plain.picks)
    predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4, compile=True))
    assert len(fake_compiler["build"]) == 1  # not tried again in this process
    assert list(compiled.cache_dir().glob("*.pt2")) == []  # and nothing half-built is kept


def test_a_damaged_package_is_built_again(tiny_model_and_tomogram, fake_compiler, monkeypatch):
    from napari_cryopicker.core import compiled

    ck, tomo = tiny_model_and_tomogram
    cfg = PredictConfig(device="cpu", tile=24, margin=4, compile=True)
    plain = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4))
    predict_picks(tomo, ck, cfg)
    (pkg,) = compiled.cache_dir().glob("*.pt2")
    pkg.write_bytes(b"not a package")
    _new_process(monkeypatch)
    got = predict_picks(tomo, ck, cfg)
    assert len(fake_compiler["build"]) == 2 and np.array_equal(got.label, plain.label)


def test_compiled_network_picks_as_the_plain_one(tiny_model_and_tomogram, monkeypatch):
    """The real AOTInductor build (needs a C++ compiler), then a later process's load."""
    import shutil
    import warnings

    from napari_cryopicker.core import compiled

    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("no C++ compiler for torch.compile")
    ck, tomo = tiny_model_and_tomogram
    plain = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error", compiled.CryoPickerWarning)  # a fallback would warn
        got = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4, compile=True))
        assert [v is not None for v in compiled._LOADED.values()] == [True]
        assert (got.label == plain.label).mean() > 0.999
        assert abs(len(got.picks) - len(plain.picks)) <= 1
        _new_process(monkeypatch)
        monkeypatch.setattr(compiled, "LOAD_MIN_TILES", 1)
        again = predict_picks(tomo, ck, PredictConfig(device="cpu", tile=24, margin=4, compile="auto"))
    assert [v is not None for v in compiled._LOADED.values()] == [True]
    assert np.array_equal(again.label, got.label)


def test_a_compiled_network_takes_a_short_last_batch():
    from napari_cryopicker.core.compiled import _Runner

    seen = []

    def runner(x):  # built for batches of 3 only
        seen.append(tuple(x.shape))
        assert x.shape[0] == 3
        return x * 2

    out = _Runner(runner, 3)(torch.ones(2, 1, 4, 4, 4))
    assert seen == [(3, 1, 4, 4, 4)] and out.shape == (2, 1, 4, 4, 4) and bool((out == 2).all())


def test_flip_average_is_the_mean_of_the_flipped_runs_flipped_back():
    from napari_cryopicker.core.errors import CryoPickerError
    from napari_cryopicker.core.predict import FlipAverage

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Conv3d(3, 3, 3, padding=1)).eval()
    x = torch.randn(2, 1, 6, 8, 10)
    with torch.no_grad():
        got = torch.softmax(FlipAverage(net, 4)(x), dim=1)
        want = sum(torch.flip(torch.softmax(net(torch.flip(x, d) if d else x), 1), d) if d
                   else torch.softmax(net(x), 1) for d in [(), (4,), (3,), (3, 4)]) / 4
        assert torch.allclose(got, want, atol=1e-5)
        # averaged over x and y flips, the result is itself symmetric under them
        flipped = torch.softmax(FlipAverage(net, 4)(torch.flip(x, (4,))), dim=1)
        assert torch.allclose(torch.flip(flipped, (4,)), got, atol=1e-5)
        assert torch.allclose(torch.softmax(FlipAverage(net, 1)(x), 1), torch.softmax(net(x), 1), atol=1e-6)
    with pytest.raises(CryoPickerError, match="1, 2, 4 or 8"):
        FlipAverage(net, 3)


def test_probability_peaks_are_the_local_maxima_of_a_class_at_or_above_the_level():
    """The candidates template_peaks adds: a class's probability maxima (within half its
    radius on the working grid) at or above the level, in working-grid voxels, whichever
    class wins there."""
    from napari_cryopicker.core.classes import ClassTable, ParticleClass
    from napari_cryopicker.core.predict import probability_peaks

    classes = ClassTable([ParticleClass("big", 24), ParticleClass("small", 8)])
    full = np.zeros((2, 20, 30, 30), np.float16)  # channels kept: background, small
    z, y, x = np.indices((20, 30, 30))
    for c, h in (((5, 5, 5), 0.45), ((12, 20, 20), 0.9), ((15, 8, 24), 0.2)):
        full[1] = np.maximum(full[1], h * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / 4.0))
    full[0] = 1 - full[1]  # background wins at the 0.45 peak: still a candidate
    tomo = Tomogram(np.zeros((40, 60, 60), np.float32), 10.0, label="t")
    out = probability_peaks(full, (0, 2), ["small"], classes, 2, 0.3, tomo)
    assert set(out.table["class_name"]) == {"small"}
    assert sorted(map(tuple, out.zyx.astype(int).tolist())) == [(5, 5, 5), (12, 20, 20)]
    assert np.allclose(sorted(out.table["score"]), [0.45, 0.9], atol=1e-3)

