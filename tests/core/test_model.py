import copy
import pickle

import pytest
import torch

from napari_cryopicker.core.classes import ClassTable, ParticleClass
from napari_cryopicker.core.errors import ModelError
from napari_cryopicker.core.model import (
    Checkpoint, ModelConfig, ResBlock, ResUNet, count_parameters, load_checkpoint, macs_per_voxel, save_checkpoint,
)


def test_resunet_shapes_and_size():
    cfg = ModelConfig(n_classes=3, f_maps=(8, 16, 24))
    net = ResUNet(cfg).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 16, 24, 32))
    assert out.shape == (2, 4, 16, 24, 32)
    with pytest.raises(ValueError, match="multiple of 4"):
        net(torch.randn(1, 1, 10, 16, 16))
    # DeepETPicker-sized widths give a network of the paper's order (millions of weights)
    big = ModelConfig(n_classes=1, f_maps=(24, 48, 72, 108))
    assert 1_000_000 < count_parameters(ResUNet(big)) < 3_000_000
    assert macs_per_voxel(big) > 2 * macs_per_voxel(ModelConfig(n_classes=1, f_maps=(12, 24, 48, 64)))


def test_macs_per_voxel_of_a_single_conv_is_exact():
    cfg = ModelConfig(n_classes=1, f_maps=(4,), coord_conv=False, pyramid=False)
    # level 0 only: conv 1->4 (27*1*4) + conv 4->4 (27*16) + 1x1 shortcut (4) + head (4*2)
    assert macs_per_voxel(cfg) == 27 * 4 + 27 * 16 + 4 + 8


def _ckpt(cfg):
    net = ResUNet(cfg)
    return Checkpoint(model=cfg.to_dict(), state_dict=net.state_dict(),
                      classes=ClassTable([ParticleClass("ribo", 25), ParticleClass("shell", 13)]),
                      voxel_size=10.0, history=[{"epoch": 1, "train_loss": 0.5, "val_loss": None, "val_f1": None}])


def test_checkpoint_round_trip(tmp_path):
    cfg = ModelConfig(n_classes=2, f_maps=(8, 16))
    ck = _ckpt(cfg)
    p = save_checkpoint(ck, tmp_path / "m.pt")
    back = load_checkpoint(p)
    assert back.classes.names == ["ribo", "shell"] and back.voxel_size == 10.0
    assert back.history[0]["train_loss"] == 0.5
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.allclose(ck.build().eval()(x), back.build().eval()(x))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


def test_an_ensemble_checkpoint_round_trips_and_runs_prepared_as_it_runs_raw(tmp_path):
    from napari_cryopicker.core.model import Ensemble, prepare_for_inference

    cfg = ModelConfig(n_classes=2, f_maps=(8, 16))
    ck = _ckpt(cfg)
    ck.members = [ResUNet(cfg).state_dict()]
    back = load_checkpoint(save_checkpoint(ck, tmp_path / "two.pt"))
    assert back.n_members == 2 and back.member(1).n_members == 1
    assert all(torch.equal(back.member(1).state_dict[k], v) for k, v in ck.members[0].items())
    net = back.build().eval()
    assert isinstance(net, Ensemble)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        raw = net(x)
        p = [torch.softmax(back.member(k).build().eval()(x), 1) for k in (0, 1)]
        assert torch.allclose(raw.exp(), (p[0] + p[1]) / 2, atol=1e-5)
        fast = prepare_for_inference(back.build(), "cpu")
        assert isinstance(fast, Ensemble) and torch.allclose(fast(x), raw, atol=1e-4)
    # a file whose second network does not fit the architecture is refused, by name
    ck.members = [{k: v[..., :1] if v.ndim else v for k, v in ck.members[0].items()}]
    bad = save_checkpoint(ck, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="bad.pt"):
        load_checkpoint(bad)


def test_foreign_and_tampered_checkpoints_are_rejected(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"format": "napari-cryopicker-checkpoint", "x": Evil()}, f)
    with pytest.raises(ModelError, match="evil.pt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ModelError, match="not a napari-cryopicker model"):
        load_checkpoint(foreign)
    trunc = tmp_path / "trunc.pt"
    data = open(save_checkpoint(_ckpt(ModelConfig(n_classes=2, f_maps=(8, 16))), tmp_path / "ok.pt"), "rb").read()
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="trunc.pt"):
        load_checkpoint(trunc)
    with pytest.raises(ModelError, match="directory"):
        load_checkpoint(tmp_path)


def test_folding_batch_norm_keeps_the_output():
    from napari_cryopicker.core.model import ModelConfig, ResUNet, fold_batchnorm

    torch.manual_seed(0)
    net = ResUNet(ModelConfig(n_classes=2, f_maps=(4, 8, 12)))
    for m in net.modules():  # non-trivial running statistics and affine parameters
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.randn(2, 1, 16, 24, 16)
    with torch.no_grad():
        ref = net(x)
        folded = fold_batchnorm(net)
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("coord_conv", [False, True])
def test_prepared_for_inference_gives_the_same_output(coord_conv):
    import copy

    from napari_cryopicker.core import model as M

    torch.manual_seed(1)
    net = M.ResUNet(M.ModelConfig(n_classes=3, f_maps=(4, 8, 12, 16), coord_conv=coord_conv))
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(1, 1, 24, 32, 16)
    with torch.no_grad():
        ref = net(x)
        fast = M.prepare_for_inference(copy.deepcopy(net), "cpu")
        got = fast(x.contiguous(memory_format=torch.channels_last_3d))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    direct = [m for m in fast.modules() if isinstance(m, M._OneDNNConv3d)]
    if M._onednn_usable():  # every 3x3x3 convolution, the 1-channel first one included
        assert len(direct) == 2 * (4 + 3) and fast.enc[0][0].conv1 in direct
        assert fast.onednn_pool  # the pooling too
    else:
        assert not direct and not fast.onednn_pool


def test_direct_onednn_path_can_be_turned_off(monkeypatch):
    from napari_cryopicker.core import model as M

    monkeypatch.setattr(M, "_ONEDNN_OK", None)
    monkeypatch.setenv("CRYOPICKER_ONEDNN", "0")
    net = M.prepare_for_inference(M.ResUNet(M.ModelConfig(n_classes=1, f_maps=(4, 8))), "cpu")
    assert not any(isinstance(m, M._OneDNNConv3d) for m in net.modules()) and not net.onednn_pool


def test_cudnn_autotune_only_on_cuda_and_restores_the_flag():
    from napari_cryopicker.core.model import cudnn_autotune

    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with cudnn_autotune("cpu"):
            assert torch.backends.cudnn.benchmark is False
        with cudnn_autotune(torch.device("cuda")):  # the flag needs no GPU to be set
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(RuntimeError), cudnn_autotune("cuda"):
            raise RuntimeError("a failed run")
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = old


def test_atomic_output_honours_the_umask(tmp_path):
    """Files written through a temporary file get the umask's mode, not mkstemp's 0600."""
    import os

    from napari_cryopicker.core.atomic import atomic_output

    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "shared.json") as tmp:
            tmp.write_text("{}")
        assert (tmp_path / "shared.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        with atomic_output(tmp_path / "group.json") as tmp:
            tmp.write_text("{}")
        assert (tmp_path / "group.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


def test_one_channel_shortcut_is_the_convolution_it_replaces():
    """The first block's 1x1x1 shortcut from one channel is computed as a product: the same
    output and gradients as the convolution, and the same state dict."""
    from napari_cryopicker.core.model import _ChannelScale

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(1, 8, 1, bias=False)
    fast = _ChannelScale(1, 8, 1, bias=False)
    fast.load_state_dict(conv.state_dict())
    x = torch.randn(2, 1, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
    g = torch.randn(2, 8, 8, 8, 8)
    (conv(x) * g).sum().backward()
    (fast(x) * g).sum().backward()
    torch.testing.assert_close(fast(x), conv(x))
    torch.testing.assert_close(fast.weight.grad, conv.weight.grad)
    net = ResUNet(ModelConfig(n_classes=2, f_maps=(8, 16), coord_conv=False))  # training's default
    assert isinstance(net.enc[0][0].short, _ChannelScale)
    assert net.state_dict()["enc.0.0.short.weight"].shape == (8, 1, 1, 1, 1)
    with_coords = ResUNet(ModelConfig(n_classes=2, f_maps=(8, 16), coord_conv=True))  # 4 input channels
    assert type(with_coords.enc[0][0].short) is torch.nn.Conv3d


def test_space_to_depth_folds_each_block_into_channels_and_the_network_answers_on_the_binned_grid():
    from napari_cryopicker.core.model import prepare_for_inference, space_to_depth

    x = torch.randn(2, 1, 8, 12, 16)
    y = space_to_depth(x, 2)
    assert y.shape == (2, 8, 4, 6, 8)
    assert torch.equal(y[1, (1 * 2 + 0) * 2 + 1, 3, 2, 5], x[1, 0, 7, 4, 11])  # sub-voxel (1, 0, 1)
    torch.testing.assert_close(y.mean(1, keepdim=True), torch.nn.functional.avg_pool3d(x, 2))
    cfg = ModelConfig(n_classes=3, f_maps=(4, 8, 16), coord_conv=False, subvoxels=2)
    net = ResUNet(cfg).eval()
    assert cfg.first_channels == 8 and net.enc[0][0].conv1.in_channels == 8
    assert net(torch.randn(1, 1, 16, 24, 32)).shape == (1, 4, 8, 12, 16)
    with pytest.raises(ValueError, match="multiple of 8"):
        net(torch.randn(1, 1, 12, 24, 32))  # 4 on the working grid: not a multiple of 4
    # untrained, it computes what a network reading the block means would: sub-voxels that
    # differ within their blocks change nothing yet
    x = torch.randn(1, 1, 16, 24, 32)
    means = torch.nn.functional.avg_pool3d(x, 2).repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(means), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(net(x), net(torch.randn(1, 1, 16, 24, 32)), atol=1e-3)
    w = net.enc[0][0].conv1.weight
    one = ResUNet(ModelConfig(n_classes=3, f_maps=(4, 8, 16), coord_conv=False)).enc[0][0].conv1.weight
    assert float(w.detach().abs().mean()) * 8 == pytest.approx(float(one.detach().abs().mean()), rel=0.3)  # the sub-voxels share a one-channel layer's weight
    # per working-grid voxel, only the first convolution costs more
    plain = ModelConfig(n_classes=3, f_maps=(4, 8, 16), coord_conv=False)
    assert macs_per_voxel(plain) < macs_per_voxel(cfg) < 1.5 * macs_per_voxel(plain)
    # ready for inference (batch norm folded, oneDNN): the same answer
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        want = net(x)
        got = prepare_for_inference(copy.deepcopy(net))(x)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_without_the_fine_decoder_block_the_head_reads_the_finest_skip_and_old_models_keep_theirs(tmp_path):
    cfg = ModelConfig(n_classes=2, f_maps=(4, 8, 16), coord_conv=False, fine_decoder=False)
    net = ResUNet(cfg).eval()
    assert isinstance(net.dec[-1], torch.nn.Identity) and isinstance(net.dec[0], ResBlock)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 8, 12, 16)).shape == (1, 3, 8, 12, 16)
    full = ModelConfig(n_classes=2, f_maps=(4, 8, 16), coord_conv=False)
    assert macs_per_voxel(cfg) < 0.8 * macs_per_voxel(full)
    ck = Checkpoint(model=cfg.to_dict(), state_dict=net.state_dict(), classes=ClassTable([ParticleClass("a", 8),
                                                                                          ParticleClass("b", 8)]))
    back = load_checkpoint(save_checkpoint(ck, tmp_path / "m.pt"))
    assert back.model_config.fine_decoder is False
    # a model file from before the option has the block
    old = {k: v for k, v in full.to_dict().items() if k not in ("fine_decoder", "subvoxels")}
    assert ModelConfig.from_dict(old).fine_decoder is True and ModelConfig.from_dict(old).subvoxels == 1
