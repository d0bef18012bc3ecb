"""The 3D ResUNet (after DeepETPicker) and the checkpoint format.

Architecture: an encoder-decoder over ``len(f_maps)`` levels; each level is a residual
block (two 3x3x3 convolutions, batch norm, ELU, identity or 1x1 shortcut). Down-sampling
is 2x average pooling, up-sampling a 2x transpose convolution added to the encoder's
skip (additive skips). Optional CoordConv (three coordinate channels) and an image
pyramid (the average-pooled input concatenated at every encoder level). The head gives
``n_classes + 1`` logits (0 = background). DeepETPicker's default is
``f_maps=(24, 48, 72, 108)`` (~2.4 M parameters).

Checkpoints are plain dicts of tensors and primitive values, saved with ``torch.save``
and loaded with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .atomic import atomic_output
from .classes import ClassTable
from .errors import ModelError

CHECKPOINT_TAG = "napari-cryopicker-checkpoint"
CHECKPOINT_VERSION = 1
COORD_SCALE = 32.0  # coordinate channels are (index - centre) / COORD_SCALE voxels


@dataclass
class ModelConfig:
    n_classes: int = 1
    f_maps: tuple[int, ...] = (8, 16, 32, 48)
    in_channels: int = 1
    coord_conv: bool = True
    pyramid: bool = True
    blocks_per_level: int = 1
    # Sub-voxel input (1: off): the network takes the tomogram at ``subvoxels`` times its
    # working grid's sampling and first folds each subvoxels^3 block into channels (space to
    # depth), so it works and answers on the binned grid but sees everything block-mean
    # binning would average away (see core.binning.SubvoxelView).
    subvoxels: int = 1
    # The finest level's decoder block (False: the head reads the sum of the up-sampled
    # features and the first encoder block's, with no block between; that block is about a
    # third of a training step's arithmetic, all at the crop's full size).
    fine_decoder: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["f_maps"] = list(self.f_maps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["f_maps"] = tuple(int(x) for x in d["f_maps"])
        return cls(**d)

    @property
    def multiple(self) -> int:
        """Sizes on the working grid (the output's) must be multiples of this."""
        return 2 ** (len(self.f_maps) - 1)

    @property
    def first_channels(self) -> int:
        """Channels into the first block (before CoordConv's): the input's, times the
        sub-voxels folded into each."""
        return self.in_channels * self.subvoxels ** 3


class _ChannelScale(nn.Conv3d):
    """A 1x1x1 convolution from one channel, computed as the product it is (same weights,
    same state dict). PyTorch sends it to a slow generic kernel: the profiler put the first
    block's shortcut at 40 ms of a 690-ms training step (4x48^3, forward and backward);
    measured end to end, a step is 1-4 % faster this way (benchmarks/training.py)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.weight.view(1, -1, 1, 1, 1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1, 1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        if cin == cout:
            self.short = nn.Identity()
        else:
            self.short = (_ChannelScale if cin == 1 else nn.Conv3d)(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.elu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.elu(y + self.short(x))


def coord_channels(shape, device, dtype) -> torch.Tensor:
    """(1, 3, z, y, x) patch-centred coordinates in units of COORD_SCALE voxels."""
    axes = [
        (torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2.0) / COORD_SCALE for n in shape
    ]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([zz, yy, xx])[None]


class ResUNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        f = list(config.f_maps)
        extra = 3 if config.coord_conv else 0
        self.enc = nn.ModuleList()
        if int(config.subvoxels) < 1:
            raise ValueError(f"subvoxels must be >= 1, not {config.subvoxels}")
        for i, fi in enumerate(f):
            if i == 0:
                cin = config.first_channels + extra
            else:
                cin = f[i - 1] + (config.in_channels if config.pyramid else 0)
            blocks = [ResBlock(cin, fi)] + [ResBlock(fi, fi) for _ in range(config.blocks_per_level - 1)]
            self.enc.append(nn.Sequential(*blocks))
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(len(f) - 2, -1, -1):
            self.up.append(nn.ConvTranspose3d(f[i + 1], f[i], 2, stride=2))
            self.dec.append(ResBlock(f[i], f[i]) if i > 0 or config.fine_decoder else nn.Identity())
        self.head = nn.Conv3d(f[0], config.n_classes + 1, 1)
        self.onednn_pool = False  # set by prepare_for_inference
        if config.subvoxels > 1:
            self._start_as_binned()

    @torch.no_grad()
    def _start_as_binned(self) -> None:
        """Sub-voxel input: give the first block's weights on the f^3 sub-voxels of an input
        channel that channel's weight / f^3, so that the untrained network computes what one
        reading the block means would (a random mixture of sub-voxels would start from their
        noise); training then learns what the sub-voxels add."""
        cfg = self.config
        k, c = cfg.subvoxels ** 3, cfg.in_channels
        block = self.enc[0][0]
        convs = [block.conv1] + ([block.short] if isinstance(block.short, nn.Conv3d) else [])
        for conv in convs:
            w = conv.weight
            # drawn at 1/sqrt(k) of a one-channel layer's scale (k times the fan-in): / sqrt(k)
            # again makes each sub-voxel's weight that layer's / k, their sum its weight
            per = w[:, : c * k : k].clone()
            w[:, : c * k] = per.repeat_interleave(k, dim=1) / k ** 0.5

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        """2x average pooling. With ``onednn_pool`` (inference on the CPU) as a depthwise
        2x2x2 convolution of weight 1/8 run by oneDNN: the same numbers, but PyTorch's own
        3D pooling of channels-last tensors converts them to and fro (8 channels at
        128x152x152: 258 -> 17 ms on one core)."""
        if self.onednn_pool and x.device.type == "cpu" and x.dtype == torch.float32:
            c = x.shape[1]
            w = torch.full((c, 1, 2, 2, 2), 0.125, dtype=x.dtype)
            return torch.ops.aten.mkldnn_convolution(
                x.contiguous(memory_format=torch.channels_last_3d), w, None, [0, 0, 0], [2, 2, 2], [1, 1, 1], c)
        return F.avg_pool3d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        m = cfg.multiple * cfg.subvoxels
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"input spatial shape {tuple(x.shape[2:])} must be a multiple of {m}")
        if cfg.subvoxels > 1:
            x = space_to_depth(x, cfg.subvoxels)
            # the pyramid gets the block means: the binned tomogram, as without sub-voxels
            img = x.reshape(x.shape[0], cfg.in_channels, -1, *x.shape[2:]).mean(2)
        else:
            img = x
        if cfg.coord_conv:
            cc = coord_channels(x.shape[2:], x.device, x.dtype).expand(x.shape[0], -1, -1, -1, -1)
            x = torch.cat([x, cc], dim=1)
        skips = []
        for i, block in enumerate(self.enc):
            if i > 0:
                x = self._down(x)
                if cfg.pyramid:
                    img = self._down(img)
                    x = torch.cat([x, img], dim=1)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(up(x) + skips.pop())
        return self.head(x)


def space_to_depth(x: torch.Tensor, f: int) -> torch.Tensor:
    """(B, C, f*Z, f*Y, f*X) -> (B, C*f^3, Z, Y, X): each f^3 block of voxels becomes
    channels (channel ``c*f^3 + (i*f + j)*f + k`` holds sub-voxel (i, j, k) of channel c);
    the result is channels-last, as the convolutions want it."""
    b, c, z, y, xx = x.shape
    x = x.reshape(b, c, z // f, f, y // f, f, xx // f, f)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * f ** 3, z // f, y // f, xx // f).contiguous(memory_format=torch.channels_last_3d)


def fold_batchnorm(net: ResUNet) -> ResUNet:
    """For inference only: fold every batch norm into the convolution before it (with the
    running statistics), so a forward pass makes two passes fewer over each block's
    activations (1.09x per tile on the 2-core benchmark machine). Puts ``net`` in eval mode;
    do not train it afterwards."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    net.eval()
    for m in net.modules():
        if isinstance(m, ResBlock):
            for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
                if isinstance(getattr(m, bn), nn.BatchNorm3d):
                    setattr(m, conv, fuse_conv_bn_eval(getattr(m, conv), getattr(m, bn)))
                    setattr(m, bn, nn.Identity())
    return net


class _OneDNNConv3d(nn.Module):
    """Inference on the CPU: one 3D convolution handed straight to oneDNN.

    PyTorch's dispatcher sends some 3D convolutions to its slow reference kernel instead of
    oneDNN: the first layer (one input channel) and the small deepest level among them.
    Measured on the 2-core benchmark machine, 128x152x152 tile: the first layer 156 ->
    31 ms, a 48-channel 16x19x19 layer 24 -> 5 ms; the whole forward pass 1.33 -> 1.02 s,
    same output to 1e-5."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().contiguous())
        self.padding = [int(p) for p in conv.padding]
        self.stride = [int(s) for s in conv.stride]
        self.dilation = [int(d) for d in conv.dilation]
        self.groups = int(conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.mkldnn_convolution(
            x.contiguous(memory_format=torch.channels_last_3d), self.weight, self.bias,
            self.padding, self.stride, self.dilation, self.groups)


_ONEDNN_OK: bool | None = None


def _onednn_usable() -> bool:
    """oneDNN's 3D convolution is there and agrees with PyTorch's (checked once);
    ``CRYOPICKER_ONEDNN=0`` turns the direct path off."""
    global _ONEDNN_OK
    if _ONEDNN_OK is None:
        _ONEDNN_OK = False
        if os.environ.get("CRYOPICKER_ONEDNN", "1") != "0" and torch.backends.mkldnn.is_available():
            try:
                with torch.no_grad():
                    conv = nn.Conv3d(1, 4, 3, padding=1)
                    x = torch.randn(1, 1, 8, 8, 8).contiguous(memory_format=torch.channels_last_3d)
                    _ONEDNN_OK = bool(torch.allclose(_OneDNNConv3d(conv)(x), conv(x), atol=1e-4))
            except Exception:  # an old or unusual build: PyTorch's own dispatch it is
                _ONEDNN_OK = False
    return _ONEDNN_OK


class Ensemble(nn.Module):
    """Networks trained apart on the same picks (``TrainConfig.members``), answering as one:
    the log of their mean class probabilities, so that a softmax downstream gives the mean.
    Runs from different random starts part ways on the similar classes (the realistic
    benchmark's mitoribosome: F1 0.54 and 0.87 from two starts on the same clicks), and the
    mean of several is about as good as the better ones (docs/method.md)."""

    def __init__(self, nets):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = None
        for net in self.nets:
            p = torch.softmax(net(x).float(), dim=1)
            acc = p if acc is None else acc + p
        return torch.log((acc / len(self.nets)).clamp_min(1e-12))


def prepare_for_inference(net: ResUNet | Ensemble, device: str | torch.device = "cpu") -> ResUNet | Ensemble:
    """The fastest way this machine runs ``net`` for prediction (same output): batch norm
    folded (:func:`fold_batchnorm`), channels-last memory layout, and on the CPU every 3x3x3
    convolution and the average pooling run by oneDNN directly (:class:`_OneDNNConv3d`,
    :meth:`ResUNet._down`). Eval mode; do not train the result. An :class:`Ensemble` has
    each of its networks prepared."""
    if isinstance(net, Ensemble):
        return Ensemble([prepare_for_inference(n, device) for n in net.nets]).eval()
    net = fold_batchnorm(net).to(memory_format=torch.channels_last_3d)
    if torch.device(device).type == "cpu" and _onednn_usable():
        for module in list(net.modules()):
            for name, child in list(module.named_children()):
                if (type(child) is nn.Conv3d and child.kernel_size != (1, 1, 1)
                        and child.padding_mode == "zeros" and not isinstance(child.padding, str)):
                    setattr(module, name, _OneDNNConv3d(child))
        net.onednn_pool = True
    return net


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_per_voxel(config: ModelConfig) -> float:
    """Multiply-adds per voxel of the working grid (the output's) of one forward pass
    (convolutions only)."""
    model = ResUNet(config)
    total = 0.0
    m = config.multiple * config.subvoxels
    shape = (m * 2,) * 3
    hooks = []
    n_in = float(shape[0] * shape[1] * shape[2]) / config.subvoxels ** 3  # per working-grid voxel

    def hook(mod, inp, out):
        nonlocal total
        k = 1
        for s in mod.kernel_size:
            k *= s
        cin = mod.in_channels // mod.groups
        if isinstance(mod, nn.ConvTranspose3d):
            # each input voxel scatters k * cout outputs
            total += inp[0].shape[2:].numel() * k * cin * mod.out_channels
        else:
            total += out.shape[2:].numel() * k * cin * mod.out_channels

    for mod in model.modules():
        if isinstance(mod, (nn.Conv3d, nn.ConvTranspose3d)):
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros((1, config.in_channels) + shape))
    for h in hooks:
        h.remove()
    return total / n_in


# ---------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """Everything predict needs, in one file."""

    model: dict  # ModelConfig.to_dict()
    state_dict: dict[str, torch.Tensor]
    classes: ClassTable
    voxel_size: float | None = None
    label_mode: str = "tball"
    normalisation: dict = field(default_factory=lambda: {"method": "percentile", "lo": 0.5, "hi": 99.5})
    history: list[dict] = field(default_factory=list)
    train_config: dict = field(default_factory=dict)
    best_epoch: int | None = None
    best_score: float | None = None
    postprocess: dict = field(default_factory=dict)  # tuned MP-NMS thresholds
    # the weights of the ensemble's further networks (TrainConfig.members), same architecture
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)
    # per class, a template averaged from its clicks (core.template.Template.to_dict): its
    # candidates are scored by local template matching at full resolution
    templates: dict[str, dict] = field(default_factory=dict)

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.model)

    @property
    def n_members(self) -> int:
        return 1 + len(self.members)

    def member(self, k: int) -> Checkpoint:
        """Network ``k`` of the ensemble alone, as a checkpoint of its own (fine-tuning starts
        each network from its own weights)."""
        states = [self.state_dict, *self.members]
        return dataclasses.replace(self, state_dict=states[k], members=[])

    @property
    def binning(self) -> int:
        """The network works on the tomogram block-mean binned by this factor (core.binning)."""
        return max(1, int((self.normalisation or {}).get("binning", 1) or 1))

    def build(self, device: str | torch.device = "cpu") -> ResUNet | Ensemble:
        nets = []
        for state in (self.state_dict, *self.members):
            net = ResUNet(self.model_config)
            net.load_state_dict(state)
            nets.append(net.to(device))
        return nets[0] if len(nets) == 1 else Ensemble(nets)

    def to_payload(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_TAG,
            "version": CHECKPOINT_VERSION,
            "model": self.model,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "classes": self.classes.to_dict(),
            "voxel_size": self.voxel_size,
            "label_mode": self.label_mode,
            "normalisation": dict(self.normalisation),
            "history": [dict(h) for h in self.history],
            "train_config": dict(self.train_config),
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "postprocess": dict(self.postprocess),
            **({"members": [{k: v.detach().cpu() for k, v in m.items()} for m in self.members]}
               if self.members else {}),
            **({"templates": {name: {**t, "volume": torch.as_tensor(np.asarray(t["volume"], np.float32))}
                              for name, t in self.templates.items()}} if self.templates else {}),
        }


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename): a crash never leaves a half-written model."""
    p = Path(path)
    with atomic_output(p) as tmp:
        torch.save(ckpt.to_payload(), tmp)
    return p


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint safely (``weights_only=True``); reject foreign or tampered files."""
    p = Path(path)
    if p.is_dir():
        raise ModelError(f"{p}: is a directory; give the model file (.pt) saved by cryopicker train")
    if not p.exists():
        raise ModelError(f"{p}: no such model file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's own message invites loading the file unsafely: name only what kind of failure
        why = ("it holds Python objects, which are never loaded (they could run code)"
               if "weights_only" in str(e) or "Unsupported global" in str(e) else type(e).__name__)
        raise ModelError(
            f"{p}: not a cryopicker model, or it is corrupted or holds code that is not "
            f"loaded for safety ({why})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_TAG:
        raise ModelError(f"{p}: not a napari-cryopicker model file (no '{CHECKPOINT_TAG}' tag)")
    if int(payload.get("version", 0)) > CHECKPOINT_VERSION:
        raise ModelError(f"{p}: written by a newer napari-cryopicker; upgrade to load it")
    try:
        ckpt = Checkpoint(
            model=dict(payload["model"]),
            state_dict=dict(payload["state_dict"]),
            classes=ClassTable.from_dict(payload["classes"]),
            voxel_size=payload.get("voxel_size"),
            label_mode=payload.get("label_mode", "tball"),
            normalisation=dict(payload.get("normalisation") or {}),
            history=list(payload.get("history") or []),
            train_config=dict(payload.get("train_config") or {}),
            best_epoch=payload.get("best_epoch"),
            best_score=payload.get("best_score"),
            postprocess=dict(payload.get("postprocess") or {}),
            members=[dict(m) for m in payload.get("members") or []],
            templates={str(name): {**t, "volume": np.asarray(t["volume"], np.float32)}
                       for name, t in (payload.get("templates") or {}).items()},
        )
        ckpt.build("cpu")  # validates that weights fit the architecture
    except ModelError:
        raise
    except KeyError as e:
        raise ModelError(f"{p}: model file is damaged or inconsistent (missing {e})") from None
    except Exception as e:
        what = " ".join(str(e).split()) or type(e).__name__  # one line
        raise ModelError(f"{p}: model file is damaged or inconsistent ({what[:200]})") from None
    return ckpt


@contextlib.contextmanager
def cudnn_autotune(device: str | torch.device):
    """cuDNN's benchmark mode while inside, on a CUDA device (elsewhere nothing changes).

    Training crops and prediction tiles have fixed shapes, so cuDNN's one-off timing of
    its algorithms per shape pays back at once: on an H100 the network part of predicting
    a 200x512x512 tomogram went from 1.65 s to 0.96 s (benchmarks/gpu.py). The global flag
    is put back afterwards."""
    if torch.device(device).type != "cuda":
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(device)
