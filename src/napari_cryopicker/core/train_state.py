"""What a training run keeps: its history and best epoch so far (:class:`TrainState`, and
which epoch wins), the exponential moving average of the weights, the weights it starts
from when fine-tuning, and the checkpoint it hands back. See :mod:`.train`."""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .classes import ClassTable
from .model import Checkpoint, ModelConfig, ResUNet
from .train_data import nms_defaults

if TYPE_CHECKING:  # pragma: no cover
    from .train import TrainConfig


@dataclass
class TrainState:
    history: list[dict] = field(default_factory=list)
    best_state: dict | None = None
    best_epoch: int | None = None
    best_key: tuple = (-math.inf, -math.inf)
    top_score: float = -math.inf  # the best validation F-alpha seen
    best_score: float | None = None
    best_nms: dict = field(default_factory=dict)


def _ema_model(net: ResUNet, decay: float):
    """An exponential moving average of ``net``'s weights and batch-norm buffers (torch's
    AveragedModel; the first update copies), or None for ``decay`` 0."""
    if not decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _copy_state(net) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


class _Settled:
    """Live training's kept network: the mean of the last ``size`` epochs' networks (weights
    and batch-norm statistics) since the user's picks last changed, so that a Stop or a
    "pick now" early in a learning-rate cycle does not get a network mid-swing (averaged
    weights along one run stay in one basin, as in stochastic weight averaging). Right after
    a change it is the newest network alone: every network averaged was taught the same picks."""

    def __init__(self, size: int):
        self.states: deque[dict] = deque(maxlen=max(1, int(size)))

    def add(self, state: dict, restart: bool) -> None:
        if restart:
            self.states.clear()
        self.states.append(state)

    def __len__(self) -> int:
        return len(self.states)

    def mean(self) -> dict:
        import torch

        last = self.states[-1]
        if len(self.states) == 1:
            return last
        return {k: (torch.stack([s[k] for s in self.states]).mean(0) if v.is_floating_point() else v.clone())
                for k, v in last.items()}


def _init_from(net: ResUNet, init: Checkpoint, classes: ClassTable) -> None:
    """Load weights of ``init``; map head channels by class name when the classes differ."""
    src = init.state_dict
    own = net.state_dict()
    for k, v in src.items():
        if k in own and own[k].shape == v.shape and not k.startswith("head."):
            own[k] = v.clone()
    old = ["__background__"] + init.classes.names
    new = ["__background__"] + classes.names
    for k in ("head.weight", "head.bias"):
        if k in src:
            for j, name in enumerate(new):
                if name in old:
                    own[k][j] = src[k][old.index(name)]
    net.load_state_dict(own)



def _better(key: tuple, state: TrainState, tolerance: float) -> bool:
    """Is the epoch with ``key`` = (validation F-alpha, -validation loss) the new best?

    F-alpha on a few dozen held-out picks moves in steps of one pick (~0.01-0.03) and
    plateaus while the loss still falls; a strict maximum would keep the first lucky epoch
    of the plateau, often a half-trained one (seen: epoch 13 of 25 kept with sparse picks,
    F-alpha 0.747 against 0.739 at epoch 22, whose loss was 17 % lower). So an epoch wins
    by a clearly higher F-alpha, or by a lower loss at an F-alpha within ``tolerance`` of
    the best seen (``state.top_score``, this epoch's included). Without validation,
    key = (-inf, -training loss): lowest loss wins."""
    f = key[0]
    if state.best_epoch is None or f > state.best_key[0] + tolerance:
        return True
    return f >= state.top_score - tolerance and key[1] > state.best_key[1]


def _checkpoint(state: TrainState, mcfg: ModelConfig, classes: ClassTable, vs, config: TrainConfig,
                out: tuple) -> Checkpoint:
    """The checkpoint of the best epoch so far: MP-NMS settings in the working grid's voxels,
    the user's class table and voxel size, and the binning that leads from one to the other.
    ``out``: (the user's classes, the binning, the sub-voxel factor[, the run's templates])."""
    user_classes, factor = out[:2]  # (and the sub-voxel factor, which the model config holds)
    post = nms_defaults(classes, config)
    for name, (t, f) in state.best_nms.items():
        post[name]["t_lm"] = float(t)
        post[name]["min_fill"] = float(f)
    return Checkpoint(
        model=mcfg.to_dict(),
        state_dict=state.best_state,
        classes=copy.deepcopy(user_classes),
        voxel_size=float(np.mean(vs)),
        label_mode=config.label_mode,
        normalisation={"method": "percentile", "lo": 0.5, "hi": 99.5, "lowpass": config.lowpass,
                       "binning": int(factor)},
        history=list(state.history),
        train_config=config.to_dict(),
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        postprocess=post,
        templates=dict(out[3]) if len(out) > 3 else {},
    )
