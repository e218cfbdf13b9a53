"""Latency samples shared between a benchmark receiver process and the harness."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["Results"]


class Results:
    """A file of int64 `[count, (latency_ns, nbytes) * cap]`, mapped by a receiver (writer) and
    by the harness (reader). The receiver writes the entry, then the count, so a reader that sees
    `count` sees every entry below it (x86 stores are not reordered with each other)."""

    def __init__(self, path: str | Path, cap: int = 0) -> None:
        if cap:
            np.zeros(1 + 2 * cap, dtype=np.int64).tofile(str(path))
        self.a = np.memmap(str(path), dtype=np.int64, mode="r+")
        self.cap = (len(self.a) - 1) // 2

    @property
    def count(self) -> int:
        return int(self.a[0])

    def add(self, latency_ns: int, nbytes: int) -> None:
        c = int(self.a[0])
        if c < self.cap:
            self.a[1 + 2 * c] = latency_ns
            self.a[2 + 2 * c] = nbytes
            self.a[0] = c + 1

    def entries(self) -> np.ndarray:
        return np.array(self.a[1:1 + 2 * self.count]).reshape(-1, 2)
