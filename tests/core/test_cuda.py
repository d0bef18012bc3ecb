"""The CUDA paths of training and prediction. Skipped where there is no CUDA GPU (CI has
none); run on a GPU machine with ``pytest tests/core/test_cuda.py``."""

import numpy as np
import pytest
import torch

from napari_cryopicker.core.model import Checkpoint, ModelConfig, ResUNet, load_checkpoint, save_checkpoint
from napari_cryopicker.core.predict import PredictConfig, predict_picks, segment
from napari_cryopicker.core.simulate import simulate_tomogram
from napari_cryopicker.core.tomogram import Tomogram
from napari_cryopicker.core.train import TrainConfig, train_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def sim():
    s = simulate_tomogram(shape=(48, 112, 112), seed=3, classes=["ribosome", "blob"], snr=2.0, n_per_class=8)
    return Tomogram(s.data, s.voxel_size), s


def _net(n_classes=2, **kw):
    torch.manual_seed(0)
    return ResUNet(ModelConfig(n_classes=n_classes, f_maps=(8, 16, 32), **kw)).eval()


@pytest.mark.parametrize("amp", [False, True])
def test_segment_on_cuda_matches_the_cpu(sim, amp):
    tomo, _ = sim
    net = _net()
    cfg = PredictConfig(tile=64, margin=8, keep_probability=True, amp=amp)
    norm = (float(tomo.data.mean()), float(tomo.data.std()))
    lab_c, conf_c, full_c = segment(tomo, net, 2, 8, cfg, torch.device("cpu"), norm)
    lab_g, conf_g, full_g = segment(tomo, net.to(CUDA), 2, 8, cfg, CUDA, norm)
    # fp32 on the GPU still rounds differently (TF32 convolutions); bfloat16 more so
    tol = 0.08 if amp else 0.02
    assert np.abs(full_g.astype(np.float32) - full_c.astype(np.float32)).max() < tol
    assert (lab_g == lab_c).mean() > (0.99 if amp else 0.999)
    assert np.abs(conf_g.astype(int) - conf_c.astype(int)).mean() < 2


def test_batches_on_cuda_give_the_same_labels(sim):
    tomo, _ = sim
    net = _net().to(CUDA)
    norm = (float(tomo.data.mean()), float(tomo.data.std()))
    one = segment(tomo, net, 2, 8, PredictConfig(tile=48, margin=8, amp=False), CUDA, norm)[0]
    four = segment(tomo, net, 2, 8, PredictConfig(tile=48, margin=8, amp=False, batch_size=4), CUDA, norm)[0]
    assert (one == four).mean() > 0.999


def test_training_on_cuda_with_amp_saves_a_model_the_cpu_loads(sim, tmp_path):
    tomo, s = sim
    cfg = TrainConfig(epochs=3, steps_per_epoch=4, batch_size=2, patch=32, val_fraction=0.3, device="cuda",
                      f_maps=(4, 8, 16), amp=True)
    ck = train_model([tomo], [s.picks], s.classes, cfg)
    losses = [r["train_loss"] for r in ck.history]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert all(v.device.type == "cpu" for v in ck.state_dict.values())
    save_checkpoint(ck, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    res_cpu = predict_picks(tomo, back, PredictConfig(device="cpu", tile=64, margin=8))
    res_gpu = predict_picks(tomo, back, PredictConfig(device="cuda", tile=64, margin=8, amp=False))
    assert (res_gpu.label == res_cpu.label).mean() > 0.999  # the same segmentation on either device
    # the same picks within a voxel or two, whichever device ran the network
    if len(res_cpu.picks) and len(res_gpu.picks):
        a, b = res_cpu.picks.zyx, res_gpu.picks.zyx
        d = np.linalg.norm(a[:, None] - b[None], axis=-1).min(axis=1)
        assert np.mean(d <= 2.0) > 0.9
    assert abs(len(res_cpu.picks) - len(res_gpu.picks)) <= max(2, 0.1 * len(res_cpu.picks))


def test_predict_on_cuda_finds_the_particles_of_a_trained_model(sim):
    """Training on the GPU, long enough to learn the two classes, then picking there."""
    tomo, s = sim
    cfg = TrainConfig(epochs=40, steps_per_epoch=8, batch_size=4, patch=48, val_fraction=0.0, device="cuda",
                      f_maps=(8, 16, 32), members=1)
    ck = train_model([tomo], [s.picks], s.classes, cfg)
    res = predict_picks(tomo, ck, PredictConfig(device="cuda", tile=64, margin=8))
    from napari_cryopicker.core.metrics import evaluate

    rep = evaluate(res.picks.with_tomogram("t"), s.picks.with_tomogram("t"), s.classes)
    assert rep.overall.f1 > 0.8, rep.overall


def test_checkpoint_built_on_cuda(sim):
    _, s = sim
    mc = ModelConfig(n_classes=2, f_maps=(4, 8, 16))
    ck = Checkpoint(model=mc.to_dict(), state_dict=ResUNet(mc).state_dict(), classes=s.classes, voxel_size=10.0)
    net = ck.build(CUDA)
    assert next(net.parameters()).device.type == "cuda"
    two = Checkpoint(model=mc.to_dict(), state_dict=ck.state_dict, classes=s.classes, voxel_size=10.0,
                     members=[ResUNet(mc).state_dict()])
    ens = two.build(CUDA)  # an ensemble: every network on the GPU, and it runs there
    assert {p.device.type for p in ens.parameters()} == {"cuda"} and len(ens.nets) == 2
    with torch.no_grad():
        out = ens.eval()(torch.randn(1, 1, 16, 16, 16, device=CUDA))
    assert out.shape == (1, 3, 16, 16, 16) and torch.allclose(out.exp().sum(1), torch.ones(1, 16, 16, 16, device=CUDA))
