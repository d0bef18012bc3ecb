"""Memory helpers: the machine's RAM, scratch arrays that spill to disk, and a
process-wide allocator setting for long inference runs (glibc only).

The allocator setting:

glibc's malloc serves blocks above its mmap threshold (128 KiB, growing to at most
32 MiB) with a fresh ``mmap`` and returns them to the system on ``free``. A 3D network's
activations on a 128^3 tile are 100+ MiB each, so every layer of every tile maps new
memory and the kernel zero-fills it page by page: on the 2-core benchmark machine about
40 % of the network's time went to page faults. Raising the mmap and trim thresholds
keeps freed blocks in the heap for the next tile (1.67x per tile measured, at the cost of
the process keeping its peak working set, ~0.7 GB, until it exits).

This suits a command-line run that picks and exits; the napari plugin does not call it
(a long-lived GUI process should give memory back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import tempfile

import numpy as np

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done: bool | None = None


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = 2**31 - 1) -> bool:
    """Make glibc keep freed blocks up to ``mmap_threshold`` bytes for reuse.

    Returns True when the setting took effect; False on other platforms or C libraries,
    or when ``CRYOPICKER_MALLOPT=0`` is set in the environment. Safe to call repeatedly.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("CRYOPICKER_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))
    return _done


def physical_memory() -> int:
    """Bytes of RAM of this machine (8 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def scratch_zeros(shape, dtype, on_disk: bool, scratch_dir: str | None = None) -> np.ndarray:
    """A zero array in RAM, or memory-mapped on an unlinked scratch file (freed when the
    array is; pages never written cost neither RAM nor disk)."""
    if not on_disk:
        return np.zeros(shape, dtype=dtype)
    fd, name = tempfile.mkstemp(prefix="cryopicker-", suffix=".scratch", dir=scratch_dir)
    os.close(fd)
    try:
        return np.memmap(name, dtype=dtype, mode="w+", shape=tuple(shape))
    finally:
        os.unlink(name)
