"""Peak memory of this process, split into anonymous and file-backed pages.

``ru_maxrss`` counts every resident page, including the pages of a memory-mapped
tomogram that the kernel may drop at any time (they are page cache). A background thread
samples ``/proc/self/status`` (every ``interval`` s) for the peak of ``RssAnon`` — the
memory the process really owns (numpy arrays, torch tensors, Python objects).
"""

from __future__ import annotations

import threading
import time


def _status() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = float(v.split()[0]) / 1024.0  # kB -> MiB
    except OSError:
        pass
    return out


class MemWatch:
    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak: dict[str, float] = {}
        self.phase = "main"  # samples are also attributed to the phase running when taken
        self.phase_peak: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> dict[str, float]:
        s = _status()
        ph = self.phase_peak.setdefault(self.phase, {})
        for k, v in s.items():
            if v > self.peak.get(k, 0.0):
                self.peak[k] = v
            if v > ph.get(k, 0.0):
                ph[k] = v
        return s

    def start(self) -> MemWatch:
        self._t.start()
        return self

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._t.join()
        self.sample()
        return dict(self.peak)
