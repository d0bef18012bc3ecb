"""Compiled networks for CPU inference, built once per machine and kept on disk.

On the CPU, inductor with frozen weights runs the network ~1.3x faster per tile than the
eager path (`model.prepare_for_inference`): it fuses the ELUs and adds into its own loops
and packs the convolution weights for oneDNN (benchmarks/README.md, session 5). Freezing
makes the just-in-time ``torch.compile`` uncacheable (~22 s in every process), so the
network is compiled ahead of time instead (``torch.export`` + AOTInductor) into a package
of a few MB in the user's cache, keyed by the weights, the tile shape, the torch version
and the CPU's vector instructions. Building takes about a minute once; loading it, a few
seconds. A build is checked against the eager network before it is kept; anything that
goes wrong (no C++ compiler, an old torch, a damaged file) falls back to the eager path
with one warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import warnings
from pathlib import Path

import torch

from .atomic import atomic_output
from .errors import CryoPickerWarning
from .model import Checkpoint, fold_batchnorm, prepare_for_inference
from .progress import Progress, ensure

#: a tomogram with at least this many tiles is worth building a compiled network for
COMPILE_MIN_TILES = 96
#: ... and loading a built one (~3.5 s) for: each tile saves ~0.25 s on 2 cores
LOAD_MIN_TILES = 16
_LOADED: dict[str, torch.nn.Module | None] = {}  # key -> network (None: unusable, eager)
_PREDICTED: dict[str, int] = {}                  # key -> tomograms predicted in this process
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``$CRYOPICKER_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/napari-cryopicker/compiled``."""
    env = os.environ.get("CRYOPICKER_COMPILE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "napari-cryopicker" / "compiled"


def network_key(checkpoint: Checkpoint, tile_shape, batch: int) -> str:
    """What a compiled network depends on: the architecture and weights, the input shape,
    the torch version and the CPU's vector instructions (a package built for AVX-512 must
    not be loaded on an AVX2 machine sharing the cache)."""
    h = hashlib.sha1(repr(sorted(checkpoint.model.items())).encode())
    for name, t in sorted(checkpoint.state_dict.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(repr((tuple(tile_shape), int(batch), torch.__version__, torch.backends.cpu.get_cpu_capability())).encode())
    return h.hexdigest()[:32]


def package_path(key: str) -> Path:
    return cache_dir() / f"{key}.pt2"


def wanted(setting, device: torch.device, key: str, n_tiles: int) -> bool:
    """Whether to use a compiled network (only on the CPU; a GPU uses cuDNN).

    ``setting``: False, True, or ``"auto"``: when this process has it loaded already; when a
    package for ``key`` is built and the tomogram has at least :data:`LOAD_MIN_TILES`
    tiles (loading costs a few seconds); or when building one pays back within this run:
    a tomogram of at least :data:`COMPILE_MIN_TILES` tiles, or the second tomogram a
    process picks with this model and tile shape (a batch). ``CRYOPICKER_COMPILE=0``
    turns it off whatever the setting."""
    if device.type != "cpu" or not setting or os.environ.get("CRYOPICKER_COMPILE", "1") == "0":
        return False
    if key in _LOADED:
        return _LOADED[key] is not None
    if setting == "auto":
        if n_tiles >= COMPILE_MIN_TILES or _PREDICTED.get(key, 0) >= 1:
            return True
        return n_tiles >= LOAD_MIN_TILES and package_path(key).exists()
    return True


def note_predicted(key: str) -> None:
    _PREDICTED[key] = _PREDICTED.get(key, 0) + 1


def _build(net: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    """Export ``net`` for inputs of ``shape`` and compile it ahead of time, weights frozen,
    into the package ``path`` (written under another name, then renamed: atomic)."""
    import torch._inductor  # heavy: only where a package is built or loaded

    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(shape).contiguous(memory_format=torch.channels_last_3d)
    with atomic_output(path, suffix=".pt2") as tmp:
        with torch.no_grad():
            exported = torch.export.export(net, (x,))
            torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp),
                                                     inductor_configs={"freezing": True})
        os.chmod(tmp, 0o644)  # readable by everyone sharing the cache, whatever the umask


class _Runner(torch.nn.Module):
    """A loaded package as a module. It takes exactly the batch it was built for: a
    shorter last batch is padded with empty tiles, and their output dropped."""

    def __init__(self, runner, batch: int):
        super().__init__()
        self.runner, self.batch = runner, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n < self.batch:
            x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))]).contiguous(
                memory_format=torch.channels_last_3d)
        return self.runner(x)[:n]


def _load(path: Path, batch: int) -> torch.nn.Module:
    import torch._inductor

    return _Runner(torch._inductor.aoti_load_package(str(path)), batch)


@contextlib.contextmanager
def _build_lock(path: Path):
    """Yields True when this process may build ``path`` (another process building the same
    package: False, and the caller goes on without it for now)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _check(net, checkpoint: Checkpoint, shape) -> None:
    with torch.inference_mode():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).contiguous(
            memory_format=torch.channels_last_3d)
        got, want = net(x), prepare_for_inference(checkpoint.build("cpu"), "cpu")(x)
    err = float((got - want).abs().max())
    if not err <= 1e-3 * max(1.0, float(want.abs().max())):
        raise RuntimeError(f"the compiled network differs from the plain one by {err:.3g}")


def compiled_network(checkpoint: Checkpoint, key: str, shape: tuple[int, ...],
                     progress: Progress | None = None) -> torch.nn.Module | None:
    """The compiled network for ``key`` and inputs of ``shape`` (batch, channels, z, y, x):
    loaded from the cache, else built (and checked against the eager network) and cached.
    None when it cannot be had: the caller runs the eager network."""
    progress = ensure(progress)
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
        path = package_path(key)
        net = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if path.exists():
                    try:
                        net = _load(path, shape[0])
                    except Exception:  # damaged, or from an incompatible build: build it again
                        with contextlib.suppress(OSError):
                            path.unlink()
                if net is None:
                    with _build_lock(path) as mine:
                        if not mine:  # another process is building it: eager this time
                            return None
                        progress.update(0, 1, f"compiling the network for this CPU (once; kept in {path.parent})")
                        _build(fold_batchnorm(checkpoint.build("cpu")).to(memory_format=torch.channels_last_3d),
                               shape, path)
                        net = _load(path, shape[0])
                        try:
                            _check(net, checkpoint, shape)
                        except Exception:
                            with contextlib.suppress(OSError):
                                path.unlink()
                            raise
        except Exception as e:  # no C++ compiler, an unsupported torch, a wrong result
            what = " ".join(str(e).split())[:300] or type(e).__name__
            warnings.warn(f"cannot compile the network here ({what}); predicting without compiling",
                          CryoPickerWarning, stacklevel=3)
            net = None
        _LOADED[key] = net
        return net
