"""Resample agents' observations onto one model's time grid, as training resamples a recording.

A model sees positions on a grid t_k = t0 + k*dt, as `models.datasets.to_grid` makes them: linear
interpolation between the two observations around each tick, never extrapolation. t0 is the first
stamp holding one of the model's agents, minus `lag_s`. A message stamped s closes every tick
t_k <= s: an agent's position at t_k is interpolated between its previous observation and this
one, and an agent first seen at s joins at the first tick t_k >= s. A message normally closes at
most one tick; one that comes slower than the model period (or after a lost message) closes
several. Only the stamps matter, so replaying a recording reproduces a live run exactly.

The lag keeps the ticks a little behind the stamps, so a live source whose stamps jitter by up to
`lag_s` still closes one tick per message instead of sometimes none and then two. With `lag_s: 0`
and a source at an exact rate the samples are `to_grid`'s, bit for bit (tests/test_predictor.py).

An agent whose previous observation is more than `max_gap_steps` periods old starts afresh (to_grid
splits such tracks); a tick missed within that limit is filled into its history by interpolation
when it comes back, but its state does not step for it (offline parity holds for complete tracks).
Agents unseen for `ttl_s` are evicted (a reused id then starts fresh).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from nodes.state_table import AgentTable

__all__ = ["Grid", "Sample"]


class Sample(NamedTuple):
    """The agents sampled at tick `k` (time `t_ns`), in the message's order."""

    k: int
    t_ns: int
    slots: np.ndarray
    ids: np.ndarray
    kind: np.ndarray
    hist: np.ndarray   # [N, hist_len, 2] positions at the last ticks, newest last
    n_obs: np.ndarray  # samples each agent has, this one included (not capped)


class Grid:
    """One model's sample grid and the table of its agents."""

    def __init__(self, table: AgentTable, dt_ns: int, max_gap_steps: float) -> None:
        self.table = table
        self.dt_ns = dt_ns
        # a gap resets an agent when s - last_t > max_gap_steps * dt_ns, i.e. (integers) > this:
        self.max_gap_ns = math.floor(max_gap_steps * dt_ns)
        self.t0: int | None = None
        self.k_next = 0
        self._next_evict = 0  # stamp of the next eviction scan

    def clear(self) -> None:
        """Forget every agent and the grid: the next message starts a new one."""
        self.table.clear()
        self.t0, self.k_next = None, 0

    def evict(self, s: int, ttl_ns: float) -> int:
        """Free the agents unseen for `ttl_ns` at stamp `s`; return how many. The table is scanned
        every ttl_ns/8 of stamp time, as a scan is not free."""
        if s < self._next_evict:
            return 0
        self._next_evict = s + int(ttl_ns / 8)
        tab = self.table
        act = tab.active()
        gone = act[s - tab.last_t[act] > ttl_ns]
        if len(gone):
            tab.free(gone)
        return len(gone)

    def samples(self, s: int, ids: np.ndarray, xy: np.ndarray, kind: np.ndarray, lag_ns: int,
                bridging: bool, counts: Counter[str]) -> Iterator[Sample]:
        """Ingest one message's agents (distinct ids, float64 positions) and yield a Sample for every
        tick it closes, in order. `bridging`: no agent is reset for its gap (the first message after
        a restore steps through the downtime instead). Drops and resets are added to `counts`."""
        tab = self.table
        if len(ids) == 0:
            return
        slots, new = tab.slots_for(ids)
        fresh = bool(new.any())  # most messages bring no new agent: skip the masks that follow
        if fresh and (full := slots < 0).any():
            counts["drops.capacity"] += int(full.sum())
            slots, new, ids, xy, kind = slots[~full], new[~full], ids[~full], xy[~full], kind[~full]
            fresh = bool(new.any())
        gap = tab.last_t[slots] < s - self.max_gap_ns  # (a new agent's last_t is stale: excluded below)
        if not bridging and gap.any():
            gap &= ~new
            if gap.any():
                tab.reset(slots[gap])
                counts["resets"] += int(gap.sum())
                new |= gap
                fresh = True
        if self.t0 is None:
            self.t0 = s - lag_ns
        k_last = (s - self.t0) // self.dt_ns
        # only old agents can be sampled before the last tick: after an idle hour, skip its ticks at once
        all_new = bool(new.all()) if fresh else len(slots) == 0
        k_first = max(self.k_next, k_last) if all_new else self.k_next
        for k in range(k_first, k_last + 1):
            t_k = self.t0 + k * self.dt_ns
            if t_k >= s or not fresh:
                if len(slots):
                    yield self._sample(k, t_k, s, slots, xy, ids, kind, new if fresh else None)
            elif not all_new:  # a new agent joins at the first tick not before it appeared
                old = ~new
                yield self._sample(k, t_k, s, slots[old], xy[old], ids[old], kind[old], None)
        self.k_next = max(self.k_next, k_last + 1)
        tab.last_t[slots], tab.last_xy[slots] = s, xy

    def _sample(self, k: int, t_k: int, s: int, slots: np.ndarray, xy: np.ndarray, ids: np.ndarray,
                kind: np.ndarray, new: np.ndarray | None) -> Sample:
        """Sample the agents in `slots` at tick k into their history. new: which agents have no
        previous observation (None: none); they are sampled at their observation itself."""
        tab = self.table
        prev_t, prev_xy, last_k = tab.last_t[slots], tab.last_xy[slots], tab.last_k[slots]
        for j in np.flatnonzero(last_k < k - 1).tolist():  # absent from earlier ticks (within the gap limit;
            for kk in range(int(last_k[j]) + 1, k):         # not sampled yet: NEVER): fill the history only
                pos = _interp(prev_t[j:j + 1], prev_xy[j:j + 1], s, xy[j:j + 1], t_k - (k - kk) * self.dt_ns, None)
                tab.hist[slots[j]] = np.concatenate((tab.hist[slots[j], 1:], pos))
                tab.n_obs[slots[j]] += 1
        hist = np.concatenate((tab.hist[slots, 1:], _interp(prev_t, prev_xy, s, xy, t_k, new)[:, None]), axis=1)
        count = tab.n_obs[slots] + 1
        tab.hist[slots], tab.n_obs[slots], tab.last_k[slots] = hist, count, k
        return Sample(k, t_k, slots, ids, kind, hist, count)


def _interp(prev_t: np.ndarray, prev_xy: np.ndarray, s: int, xy: np.ndarray, t: int,
           new: np.ndarray | None) -> np.ndarray:
    """Positions at time t between the previous observation and this one (at stamp s), never
    extrapolated; the `new` agents' (no previous observation) are this one."""
    if (prev_t == prev_t[0]).all():  # usually all were last seen in one message: one weight, fewer calls
        w0 = min(max(float(t - int(prev_t[0])) / float(max(s - int(prev_t[0]), 1)), 0.0), 1.0)  # as numpy's
        pos = xy if w0 >= 1.0 else prev_xy + w0 * (xy - prev_xy)
        return pos if new is None else np.where(new[:, None], xy, pos)
    w = np.minimum(np.maximum((t - prev_t) / np.maximum(s - prev_t, 1), 0.0), 1.0)
    at_xy = w >= 1.0 if new is None else (w >= 1.0) | new
    return np.where(at_xy[:, None], xy, prev_xy + w[:, None] * (xy - prev_xy))
