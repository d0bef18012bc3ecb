"""Sliding-window overlap-tile inference over a (memory-mapped) tomogram, then MP-NMS.

Tiles have a fixed shape ``N`` (per axis, shrunk for small volumes) and a margin ``p``;
their stride is ``N - 2p`` and only each tile's centre ``[p, N - p)`` is kept, so every
voxel's prediction sees at least ``p`` voxels of context. Volume edges are mirror-padded.
Tiles are read one at a time from the memory map (no copy of the volume is held), run in
batches, and stitched into two compact volumes: the arg-max label (uint8) and its
probability (uint8, 0..255). MP-NMS (:mod:`.nms`) then runs over those in z-slabs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from scipy import ndimage

from . import compiled
from .errors import CryoPickerError, CryoPickerWarning
from .model import Checkpoint, cudnn_autotune, prepare_for_inference, resolve_device
from .memory import physical_memory, scratch_zeros
from .binning import SubvoxelView, classes_binned, picks_from_binned, unbin_map, working_tomogram
from .nms import NMSParams, mp_nms
from .picks import Picks
from .progress import Progress, ensure
from .template import CANDIDATE_FLOOR, rescore_picks
from .tomogram import Tomogram, normalise, normalise_tensor, robust_normalisation


@dataclass
class PredictConfig:
    device: str = "auto"
    tile: int = 160           # tile edge N (voxels); shrunk to fit small volumes
    margin: int = 12          # kept-centre margin p
    batch_size: int = 1
    amp: bool = True          # mixed precision on CUDA
    skip_empty: bool = True   # tiles of constant value (outside the reconstruction) are background
    # the stitched result (2 bytes per voxel) goes to an unlinked scratch file on disk instead
    # of RAM when larger than this (bytes; None = a quarter of the machine's memory)
    max_ram_output: int | None = None
    scratch_dir: str | None = None
    nms: dict = field(default_factory=dict)  # overrides: {"default": {...}, "<class>": {...}}
    keep_probability: bool = False
    # a compiled network on the CPU (core/compiled.py): False, True, or "auto" (as
    # `cryopicker predict` and batch runs use it: when built already, or when it pays back)
    compile: bool | str = False
    # leave out picks on gold fiducials (core/fiducials.py): dark compact beads get high
    # scores from a network that saw few of them
    mask_fiducials: bool = True
    # keep candidates down to this score (every class), not only those above the model's
    # thresholds, so that a threshold slider can show weaker picks too; the thresholds are
    # returned in PredictResult.thresholds (None: only picks above the thresholds)
    score_floor: float | None = None
    # test-time augmentation: average the class probabilities over this many flips of each
    # tile (1, 2, 4 or 8: none, x, x and y, x y and z); flips keep the missing wedge where it is
    tta: int = 1
    # score the classes the model has a template for (Checkpoint.templates, core.template) by
    # matching it at full resolution around the network's candidates of that class
    template: bool = True
    # ... and also around every local maximum of that class's probability at or above this
    # level (None: off), whichever class wins the voxel: a network that learnt the class
    # from off-centre clicks leaves many of its particles just under another class's (or
    # the background's) probability
    template_peaks: float | None = None
    # segment(): keep only these probability channels (0 = background) in ``full``
    keep_channels: tuple[int, ...] | None = None


@dataclass
class ScoreMap:
    """What MP-NMS picks from, on the grid the network ran on: per voxel the arg-max class
    (0 background) and its probability (uint8, 255 = 1). Two bytes per working voxel (a
    quarter of a byte per tomogram voxel at bin 2), already computed, on disk for large
    tomograms. Working voxel j lies at tomogram voxel ``factor * j + offset``."""

    label: np.ndarray
    confidence: np.ndarray
    factor: int = 1
    shape: tuple[int, ...] | None = None  # the tomogram's (z, y, x)

    @property
    def offset(self) -> float:
        return (self.factor - 1) / 2.0

    def full_label(self) -> np.ndarray:
        """The arg-max class on the tomogram's own grid (a copy when binned: 1 byte per voxel)."""
        if self.factor <= 1 or self.shape is None:
            return self.label
        return unbin_map(self.label, self.factor, self.shape)


@dataclass
class PredictResult:
    picks: Picks
    probability: np.ndarray | None = None  # (C+1, z, y, x) float16 when requested
    fiducials: object | None = None  # core.fiducials.Fiducials found (mask_fiducials)
    thresholds: dict = field(default_factory=dict)  # per class: the score threshold the picks are meant for
    score_map: ScoreMap | None = None  # the arg-max class and its probability on the working grid

    @property
    def label(self) -> np.ndarray | None:
        """(z, y, x) uint8 arg-max class on the tomogram's grid (made on first use when binned)."""
        if self.score_map is None:
            return None
        if "_label" not in self.__dict__:
            self.__dict__["_label"] = self.score_map.full_label()
        return self.__dict__["_label"]


def _tile_shape(shape, tile: int, margin: int, multiple: int) -> tuple[int, ...]:
    """Per-axis tile edge: no larger than ``tile``, and as small as covers the axis with the
    fewest tiles (200 voxels with tile 160 and margin 12 -> two tiles of 128, not of 160:
    the overhead of computing voxels twice or past the edge drops from 2.5x to 1.8x on a
    200 x 512 x 512 tomogram)."""
    out = []
    for n in shape:
        step = max(multiple, tile - 2 * margin)
        k = max(1, math.ceil(n / step))
        want = math.ceil(n / k) + 2 * margin
        want = int(math.ceil(want / multiple) * multiple)
        out.append(max(want, multiple, 2 * margin + multiple))
    return tuple(out)


def tile_starts(n: int, tile: int, margin: int) -> list[int]:
    """Start indices (of the kept centres) along one axis covering [0, n)."""
    step = tile - 2 * margin
    if step <= 0:
        raise ValueError(f"tile {tile} too small for margin {margin}")
    starts = list(range(0, max(1, n - step) + 1, step))
    if starts[-1] + step < n:
        starts.append(n - step)
    return sorted(set(max(0, s) for s in starts))


def read_block(data: np.ndarray, start, size, dtype=np.float32) -> np.ndarray:
    """data[start : start + size] with mirror padding where the block leaves the volume
    (as ``dtype``; None keeps the file's type). From a :class:`.binning.SubvoxelView`
    (positions and sizes on its binned grid) the block is its full-resolution one."""
    f = data.factor if isinstance(data, SubvoxelView) else 1
    sl, pads = [], []
    for s, n, dim in zip(start, size, data.shape):
        a, b = max(0, s), min(dim, s + n)
        sl.append(slice(a, b))
        pads.append(((a - s) * f, (s + n - b) * f))
    block = np.asarray(data[tuple(sl)], dtype=dtype)
    if any(p != (0, 0) for p in pads):
        mode = "reflect" if all(p[0] < d and p[1] < d for p, d in zip(pads, block.shape)) else "symmetric"
        try:
            block = np.pad(block, pads, mode=mode)
        except ValueError:
            block = np.pad(block, pads, mode="edge")
    return block


def normalisation_for(tomo: Tomogram, ckpt: Checkpoint | None = None) -> tuple[float, float]:
    norm = (ckpt.normalisation if ckpt is not None else {}) or {}
    return robust_normalisation(tomo.data, norm.get("lo", 0.5), norm.get("hi", 99.5))


def _is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg))


class FlipAverage(torch.nn.Module):
    """``net`` run on flipped copies of its input, the softmax averaged (flipped back);
    returns the log of the mean probabilities, so a softmax downstream gives the mean."""

    FLIPS = ((), (4,), (3,), (3, 4), (2,), (2, 4), (2, 3), (2, 3, 4))

    def __init__(self, net: torch.nn.Module, n: int):
        super().__init__()
        if n not in (1, 2, 4, 8):
            raise CryoPickerError(f"test-time augmentation takes 1, 2, 4 or 8 flips, not {n}")
        self.net, self.flips = net, self.FLIPS[:n]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acc = None
        for dims in self.flips:
            xi = torch.flip(x, dims) if dims else x
            p = torch.softmax(self.net(xi).float(), dim=1)
            p = torch.flip(p, dims) if dims else p
            acc = p if acc is None else acc + p
        return torch.log((acc / len(self.flips)).clamp_min(1e-12))


def _to_input(blocks: list[np.ndarray], device: torch.device, norm) -> torch.Tensor:
    """A batch of blocks as the network's input on ``device``: blocks still in the file's
    type (``norm`` = (centre, scale)) are sent as they are and normalised there, as
    :func:`.tomogram.normalise` does (a 1-byte or 2-byte map moves 2-4x fewer bytes to a
    GPU, and the GPU does the arithmetic); ``norm`` None: already normalised."""
    x = torch.from_numpy(np.stack(blocks)[:, None]).to(device)
    if norm is not None:
        x = normalise_tensor(x, *norm)
    return x.contiguous(memory_format=torch.channels_last_3d)


def _forward(net, blocks: list[np.ndarray], device: torch.device, bs: int, amp: bool, keep=None,
             norm=None, full: bool = False, channels: tuple[int, ...] | None = None):
    """Arg-max class (uint8) and its probability (uint8, 0..255) of the ``keep`` part
    (spatial slices) of each block, and all class probabilities (float16) if ``full``,
    ``bs`` blocks at a time; the softmax and arg-max run on the device, so only 2 bytes per
    voxel come back from a GPU. Out of memory: halve the batch, and on a GPU at batch 1
    move to the CPU, saying so. Returns ((label, prob, full or None) as numpy arrays, net,
    device, batch size to use from now on)."""
    labs, pqs, fulls = [], [], []
    i = 0
    while i < len(blocks):
        chunk = blocks[i : i + bs]
        try:
            x = _to_input(chunk, device, norm)
            if amp and device.type == "cuda":
                amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                with torch.autocast(device.type, dtype=amp_dtype):
                    logits = net(x)
            else:  # no autocast context at all: a compiled network would recompile inside one
                logits = net(x)
            if keep is not None:
                logits = logits[(slice(None), slice(None), *keep)]
            p = torch.softmax(logits.float(), dim=1)
            pmax, lab = p.max(dim=1)
            labs.append(lab.to(torch.uint8).cpu().numpy())
            pqs.append((pmax * 255.0 + 0.5).to(torch.uint8).cpu().numpy())
            if full:
                fulls.append((p if channels is None else p[:, list(channels)]).half().cpu().numpy())
            i += len(chunk)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            tile = "x".join(str(n) for n in chunk[0].shape)
            if bs > 1:
                bs //= 2
                warnings.warn(f"out of memory on {device.type} with {len(chunk)} tiles of {tile}; "
                              f"going on with batches of {bs}", CryoPickerWarning, stacklevel=3)
            elif device.type != "cpu":
                device = torch.device("cpu")
                net = net.to(device)
                warnings.warn(f"out of GPU memory even for one tile of {tile}; going on on the CPU "
                              "(slower): a smaller tile size fits the GPU", CryoPickerWarning, stacklevel=3)
            else:
                raise CryoPickerError(
                    f"out of memory for one tile of {tile} voxels on the CPU: use a smaller tile "
                    "(PredictConfig.tile / --tile) or close other programs") from None
    out = (np.concatenate(labs), np.concatenate(pqs), np.concatenate(fulls) if full else None)
    return out, net, device, bs


@torch.inference_mode()
def segment(
    tomo: Tomogram,
    net: torch.nn.Module,
    n_classes: int,
    multiple: int,
    config: PredictConfig,
    device: torch.device,
    norm: tuple[float, float],
    progress: Progress | None = None,
    region: tuple[slice, slice, slice] | None = None,
    lowpass: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Overlap-tile segmentation. Returns (label uint8, prob uint8, full prob or None)."""
    progress = ensure(progress)
    data = tomo.data
    if region is not None:
        origin = [r.start or 0 for r in region]
        shape = [(r.stop if r.stop is not None else d) - (r.start or 0) for r, d in zip(region, data.shape)]
    else:
        origin = [0, 0, 0]
        shape = list(data.shape)
    m = config.margin
    tshape = _tile_shape(shape, config.tile, m, multiple)
    starts = [tile_starts(n, t, m) for n, t in zip(shape, tshape)]
    jobs = [(z, y, x) for z in starts[0] for y in starts[1] for x in starts[2]]
    limit = config.max_ram_output if config.max_ram_output is not None else physical_memory() // 4
    on_disk = 2 * int(np.prod(shape)) > limit
    label = scratch_zeros(shape, np.uint8, on_disk, config.scratch_dir)  # tiles skipped as empty stay 0
    conf = scratch_zeros(shape, np.uint8, on_disk, config.scratch_dir)
    chans = tuple(config.keep_channels) if config.keep_channels else None
    full = np.zeros((n_classes + 1 if chans is None else len(chans), *shape), dtype=np.float16) \
        if (config.keep_probability or chans) else None
    if full is not None and (chans is None or chans[0] == 0):
        full[0] = 1.0  # (skipped tiles: background, certain)
    centre, scale = norm
    net.eval()
    bs = step = max(1, int(config.batch_size))  # bs shrinks if the device runs out of memory
    done = 0
    for b0 in range(0, len(jobs), step):
        progress.check()
        batch = jobs[b0 : b0 + step]
        todo, empty = [], []
        for st in batch:
            blk = read_block(data, [o + s - m for o, s in zip(origin, st)], tshape, dtype=None)
            # a constant block (outside the reconstruction, a sparse file's holes) is skipped
            empty.append(config.skip_empty and blk.min() == blk.max() and np.isfinite(blk.flat[0]))
            if empty[-1]:
                continue
            if lowpass > 0:
                blk = normalise(ndimage.gaussian_filter(blk.astype(np.float32, copy=False), lowpass), centre, scale)
            todo.append(blk)
        if todo:
            # only each tile's centre is kept: [m, t - m) along every axis
            kept = tuple(slice(m, t - m) for t in tshape)
            (lab, pq, pfull), net, device, bs = _forward(
                net, todo, device, bs, config.amp, keep=kept, norm=None if lowpass > 0 else (centre, scale),
                full=full is not None, channels=chans)
        ran = -1
        for st, is_empty in zip(batch, empty):
            if is_empty:  # nothing to pick in a constant block: background, certain
                continue
            ran += 1
            dst, src = [], []
            for s, n, t in zip(st, shape, tshape):
                keep = min(t - 2 * m, n - s)
                dst.append(slice(s, s + keep))
                src.append(slice(0, keep))  # p holds the centres only
            label[tuple(dst)] = lab[ran][tuple(src)]
            conf[tuple(dst)] = pq[ran][tuple(src)]
            if full is not None:
                full[(slice(None), *dst)] = pfull[ran][(slice(None), *src)]
        done += len(batch)
        progress.update(done, len(jobs), "inference")
    return label, conf, full


def probability_peaks(full: np.ndarray, channels, names, classes, factor: int, level: float, tomogram) -> Picks:
    """Local maxima (within half a radius, on the working grid) of each class of ``names``'
    probability at or above ``level``, as candidates (working-grid voxels)."""
    parts = []
    for n in names:
        prob = np.asarray(full[list(channels).index(classes.names.index(n) + 1)], np.float32)
        r = max(1, int(round(classes[n].diameter / factor / 4.0)))
        at = (prob >= level) & (prob == ndimage.maximum_filter(prob, size=2 * r + 1))
        zyx = np.argwhere(at).astype(float)
        parts.append(Picks.from_zyx(zyx, class_name=n, score=prob[at], source="predicted", tomogram=tomogram.name,
                                    voxel_size=tomogram.voxel_size))
    return Picks.concat(parts)


def merged_nms_params(checkpoint: Checkpoint, overrides: dict | None = None) -> dict:
    """MP-NMS settings per class: the model's tuned ones, then ``overrides``
    (``{"default": {...}}`` applies to every class, ``{"<class>": {...}}`` to one)."""
    overrides = overrides or {}
    post = checkpoint.postprocess or {}
    out = {"default": dict(overrides.get("default", {}))}
    for name in checkpoint.classes.names:
        out[name] = {**post.get(name, {}), **overrides.get("default", {}), **overrides.get(name, {})}
    return out


def predict_picks(
    tomogram: Tomogram,
    checkpoint: Checkpoint,
    config: PredictConfig | None = None,
    progress: Progress | None = None,
    return_probability: bool = False,
) -> PredictResult:
    """Pick particles in one tomogram with a trained model."""
    config = config or PredictConfig()
    if return_probability:
        config = PredictConfig(**{**config.__dict__, "keep_probability": True})
    progress = ensure(progress)
    device = resolve_device(config.device)
    if checkpoint.voxel_size and tomogram.voxel_size and not math.isclose(
        checkpoint.voxel_size, tomogram.voxel_size, rel_tol=0.05
    ):
        raise CryoPickerError(
            f"{tomogram.path or tomogram.name}: voxel size {tomogram.voxel_size:.3g} A differs from the "
            f"model's {checkpoint.voxel_size:.3g} A; bin or rescale the tomogram to the model's voxel "
            "size, or train a model at this voxel size"
        )
    full_tomogram, factor = tomogram, checkpoint.binning
    mc = checkpoint.model_config
    if mc.subvoxels > 1 and mc.subvoxels != factor:
        raise CryoPickerError(f"the model takes sub-voxels of {mc.subvoxels} but works at bin {factor}: "
                              "its file is inconsistent; train it again")
    if factor > 1:
        tomogram = working_tomogram(tomogram, factor, mc.subvoxels > 1, progress)
    tshape = _tile_shape(tomogram.shape, config.tile, config.margin, mc.multiple)
    n_tiles = math.prod(len(tile_starts(n, t, config.margin)) for n, t in zip(tomogram.shape, tshape))
    bs = max(1, int(config.batch_size))
    # (an ensemble runs uncompiled: the compiled form holds one network)
    key = (compiled.network_key(checkpoint, tshape, bs)
           if config.compile and device.type == "cpu" and not checkpoint.members else None)
    net = None
    if key is not None and compiled.wanted(config.compile, device, key, n_tiles):
        net = compiled.compiled_network(checkpoint, key, (bs, mc.in_channels, *(t * mc.subvoxels for t in tshape)),
                                         progress)
    if net is None:
        net = prepare_for_inference(checkpoint.build(device), device)
    if int(config.tta) > 1:
        net = FlipAverage(net, int(config.tta))
    norm = normalisation_for(tomogram, checkpoint)
    lowpass = float((checkpoint.normalisation or {}).get("lowpass", 0.0) or 0.0)
    templates = {n: t for n, t in (checkpoint.templates or {}).items()
                 if config.template and n in checkpoint.classes.names}
    peaks_of = [n for n in templates if config.template_peaks is not None]
    seg_config = config
    if peaks_of and not config.keep_probability:  # only those classes' probabilities
        seg_config = replace(config, keep_channels=tuple(checkpoint.classes.names.index(n) + 1 for n in peaks_of))
    with cudnn_autotune(device):
        label, conf, full = segment(
            tomogram, net, mc.n_classes, mc.multiple, seg_config, device, norm, progress, lowpass=lowpass
        )
    peak_picks = None
    if peaks_of:
        chans = seg_config.keep_channels or tuple(range(mc.n_classes + 1))
        peak_picks = probability_peaks(full, chans, peaks_of, checkpoint.classes, factor, float(config.template_peaks),
                                       tomogram)
        if seg_config is not config:
            full = None
    if key is not None:
        compiled.note_predicted(key)
    params = merged_nms_params(checkpoint, config.nms)
    default_t = NMSParams().t_lm
    thresholds = {n: float(params[n].get("t_lm", params["default"].get("t_lm", default_t)))
                  for n in checkpoint.classes.names}
    if config.score_floor is not None:
        floor = float(config.score_floor)
        for n, t in thresholds.items():
            params[n] = {**params[n], "t_lm": min(t, floor)}
    for n in templates:  # the network proposes, the template decides
        params[n] = {**params[n], "t_lm": CANDIDATE_FLOOR, "min_fill": 0.0}
    picks = mp_nms(
        label, conf, classes_binned(checkpoint.classes, factor), params or None, tomogram=tomogram.name,
        voxel_size=tomogram.voxel_size, progress=progress,
    )
    if peak_picks is not None and len(peak_picks):
        picks = Picks.concat([picks, peak_picks])
    score_map = ScoreMap(label, conf, factor, tuple(full_tomogram.shape))
    if factor > 1:  # back to the tomogram's own voxels
        picks = picks_from_binned(picks, factor)
        picks.voxel_size = full_tomogram.voxel_size
        full = None if full is None else unbin_map(full, factor, full_tomogram.shape)
        tomogram = full_tomogram
    if templates:
        picks = rescore_picks(picks, tomogram.data, templates, floor=config.score_floor is not None,
                              progress=progress)
        thresholds.update({n: float(t["threshold"]) for n, t in templates.items()})
    fiducials = None
    if config.mask_fiducials and len(picks):
        from .fiducials import find_fiducials, off_fiducials

        fiducials = find_fiducials(tomogram.data, tomogram.voxel_size, progress=progress)
        if len(fiducials):
            picks = picks.subset(off_fiducials(picks.zyx, fiducials))
    return PredictResult(picks=picks, probability=full, fiducials=fiducials, thresholds=thresholds,
                         score_map=score_map)


__all__ = ["PredictConfig", "PredictResult", "ScoreMap", "predict_picks", "segment", "NMSParams"]
