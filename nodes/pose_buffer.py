"""Recent poses of a vehicle (x, y, yaw by stamp) and the pose at any time between two of them.

A scan is placed in the map with the carrier's pose at each beam's time, interpolated between the
two poses around it (yaw unwrapped first, so a turn through +-pi interpolates the short way). A time
outside the buffer, or between two poses further apart than `max_gap_s`, has no pose: the caller
drops the scan rather than guess, which is why this never extrapolates.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

__all__ = ["PoseBuffer"]


class PoseBuffer:
    """Poses within `keep_s` of the newest, in stamp order; see the module docstring."""

    def __init__(self, keep_s: float, max_gap_s: float) -> None:
        self.keep_ns = int(keep_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self._t: list[int] = []
        self._rows: list[tuple[float, float, float]] = []

    def __len__(self) -> int:
        return len(self._t)

    def clear(self) -> None:
        self._t.clear()
        self._rows.clear()

    @property
    def newest_ns(self) -> int | None:
        return self._t[-1] if self._t else None

    def speed(self) -> float:
        """Speed (m/s) between the two newest poses; 0 with fewer."""
        if len(self._t) < 2:
            return 0.0
        (x0, y0, _), (x1, y1, _) = self._rows[-2], self._rows[-1]
        return math.hypot(x1 - x0, y1 - y0) / max((self._t[-1] - self._t[-2]) * 1e-9, 1e-9)

    def add(self, t_ns: int, x: float, y: float, yaw: float) -> None:
        """Append a pose newer than the newest (the caller checks the order)."""
        if self._rows:
            prev = self._rows[-1][2]
            yaw = prev + math.remainder(yaw - prev, 2 * math.pi)  # unwrapped
        self._t.append(t_ns)
        self._rows.append((x, y, yaw))
        if self._t[0] < t_ns - 2 * self.keep_ns:  # trimmed in batches: a list drops its head in O(n)
            cut = bisect.bisect_left(self._t, t_ns - self.keep_ns)
            del self._t[:cut], self._rows[:cut]

    def at(self, t_ns: np.ndarray) -> np.ndarray | None:
        """Poses [N, 3] (x, y, yaw) at sorted times `t_ns` [N], or None if one of them has none."""
        first, last = int(t_ns[0]), int(t_ns[-1])
        lo = bisect.bisect_right(self._t, first) - 1
        hi = bisect.bisect_left(self._t, last)
        if lo < 0 or hi >= len(self._t):
            return None
        t = np.array(self._t[lo:hi + 1], np.int64)
        if len(t) > 1 and (t[1:] - t[:-1]).max() > self.max_gap_ns:
            return None
        rows = np.array(self._rows[lo:hi + 1])
        at = (t_ns - t[0]).astype(np.float64)   # relative, so float64 keeps nanoseconds
        t = (t - t[0]).astype(np.float64)
        out = np.empty((len(at), 3))
        for k in range(3):
            out[:, k] = np.interp(at, t, rows[:, k])
        return out
