"""Periodic timers on a node's clock, with absolute deadlines so they do not drift."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

__all__ = ["Timers"]


class Timers:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def add(self, now_ns: int, period_s: float, fn: Callable[[], None]) -> None:
        period = max(1, int(period_s * 1e9))
        heapq.heappush(self._heap, (now_ns + period, next(self._order), period, fn))

    def next_due_ns(self) -> int | None:
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ns: int) -> list[Callable[[], None]]:
        """Timers due at `now_ns`, each rescheduled one period after its last deadline; ticks
        missed by more than a period are skipped (a stalled node does not fire a burst)."""
        due = []
        while self._heap and self._heap[0][0] <= now_ns:
            when, order, period, fn = heapq.heappop(self._heap)
            nxt = when + period
            if nxt <= now_ns:
                nxt = now_ns + period - (now_ns - when) % period
            heapq.heappush(self._heap, (nxt, order, period, fn))
            due.append(fn)
        return due
