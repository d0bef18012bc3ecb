import numpy as np
import pytest
import torch

from napari_cryopicker.core.predict import PredictConfig, read_block, segment, tile_starts
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
