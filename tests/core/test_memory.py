"""keep_freed_memory: freed tile-sized blocks are reused instead of faulting in fresh pages."""

import json
import subprocess
import sys

import pytest

CHILD = r"""
import json, resource, sys
import numpy as np
from napari_cryopicker.core.memory import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "on" else False
again = keep_freed_memory() if sys.argv[1] == "on" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
r0 = rss()
a = np.ones(64 << 20, np.uint8); del a          # one 64 MiB block, freed
kept = rss() - r0
f0 = faults()
for _ in range(10):                             # what each tile's activations do
    a = np.ones(64 << 20, np.uint8); del a
print(json.dumps({"ok": ok, "again": again, "faults": faults() - f0, "kept_mb": kept / 2**20}))
"""


def _run(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting")
def test_freed_blocks_are_reused_without_page_faults():
    on, off = _run("on"), _run("off")
    if not on["ok"]:
        pytest.skip("this C library has no mallopt")
    assert on["again"] is True  # idempotent
    # without the setting the freed block goes back to the system and every new block
    # faults its pages in again; with it the block stays in the heap and is reused
    assert off["kept_mb"] < 16 and on["kept_mb"] > 60
    assert off["faults"] > 1000
    assert on["faults"] < off["faults"] / 10


def test_can_be_switched_off_by_environment(monkeypatch):
    from napari_cryopicker.core import memory

    monkeypatch.setattr(memory, "_done", None)
    monkeypatch.setenv("CRYOPICKER_MALLOPT", "0")
    assert memory.keep_freed_memory() is False
    monkeypatch.setattr(memory, "_done", None)
