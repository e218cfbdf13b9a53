"""What a node's work costs, for its diagnostics: latency percentiles, CPU per message, memory.

The runtime already counts messages and callback latency for every node; this is for a node that
also times parts of its callback (a model step) or reports its process's CPU time and resident size.
"""

from __future__ import annotations

import os
import time
from collections import deque

import numpy as np

__all__ = ["Timing"]


class Timing:
    """Windows of the last `window` durations per name (in µs), and the callbacks' CPU time."""

    def __init__(self, *names: str, window: int = 1024) -> None:
        self.windows: dict[str, deque[float]] = {name: deque(maxlen=window) for name in names}
        self._cpu_s, self._n_msgs = 0.0, 0

    def add(self, name: str, since: float) -> None:
        """Record the wall time from `since` (a `time.perf_counter()`) to now under `name`."""
        self.windows[name].append((time.perf_counter() - since) * 1e6)

    def message(self, name: str, since: float, cpu_since: float) -> None:
        """One message handled: its wall time from `since` under `name`, its CPU time from `cpu_since`
        (a `time.process_time()`)."""
        self._cpu_s += time.process_time() - cpu_since
        self._n_msgs += 1
        self.add(name, since)

    def report(self, d: dict[str, float]) -> None:
        """Write `NAME_p50_us`/`NAME_p99_us`, `cpu_us_per_msg` (since the last report), the whole
        process's `cpu_s` (runtime included: benchmarks diff it) and `rss_mb` into `d`."""
        for name, window in self.windows.items():
            if window:
                p50, p99 = np.percentile(np.fromiter(window, float), [50, 99])
                d[f"{name}_p50_us"], d[f"{name}_p99_us"] = float(p50), float(p99)
        if self._n_msgs:
            d["cpu_us_per_msg"] = self._cpu_s / self._n_msgs * 1e6
            self._cpu_s, self._n_msgs = 0.0, 0
        d["cpu_s"] = time.process_time()
        d["rss_mb"] = _rss_mb()


def _rss_mb() -> float:
    """This process's resident memory in MiB (NaN where /proc is not there)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")
