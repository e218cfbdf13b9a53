"""Per-agent recurrent state in preallocated arrays: agent id -> slot, for one model.

Preallocated because a live graph sees agents come and go for hours: a fixed table of `capacity`
slots keeps the resident size flat and lets the node gather/scatter a whole batch with one
fancy-indexing operation each way, where growing arrays (or one per agent) would allocate per agent.

A slot holds the recurrent state (h, c), the agent's position history resampled to the model period
(`hist[slot, -1]` = newest sample, as `export.runtime.features` expects), how many samples it has
(`n_obs`, not capped), the last raw observation (`last_t`, `last_xy`: the left end of the next
interpolation) and the grid index of its last sample (`last_k`, `NEVER` until the first).
`arrays`/`restore` move the rows in use to and from a saved file (`nodes.state_file`).

id -> slot is a sorted array of the ids in use, searched with one `np.searchsorted` per message
rather than a dict lookup per agent; it changes only when agents come or go.

A table is at most `MAX_TABLE_BYTES`, checked (`check_size`) before anything is allocated: capacity,
state and history sizes come from a launch file and a model file, and their product must fail with
its factors named, not in numpy or by swapping.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MAX_TABLE_BYTES", "NEVER", "AgentTable", "check_size"]

NEVER = np.iinfo(np.int64).max
"""`last_k` of an agent not sampled yet: `last_k < k - 1` (it missed ticks) never holds for it."""

_ARRAYS = ("ids", "state", "hist", "n_obs", "last_t", "last_xy", "last_k")
MAX_TABLE_BYTES = 1 << 30
"""Per table (one model): with the shipped models' 1.2 to 1.3 kB per agent, over 800 000 agents."""
_SLOT_BYTES = 7 * 8  # ids, n_obs, last_t, last_xy (2), last_k and the free-slot stack: int64/float64 each


def check_size(capacity: int, n_state: int, layers: int, hidden: int, hist_len: int) -> int:
    """The bytes of a table of this shape; ValueError naming each factor if over `MAX_TABLE_BYTES`."""
    per_agent = n_state * layers * hidden * 4 + hist_len * 2 * 8 + _SLOT_BYTES
    total = capacity * per_agent
    if total > MAX_TABLE_BYTES:
        raise ValueError(f"state table: expected at most {_size(MAX_TABLE_BYTES)} per model, found capacity "
                         f"{capacity} x {per_agent} bytes per agent (state {n_state} x {layers} x {hidden} "
                         f"float32, history {hist_len} x 2 float64) = {_size(total)}")
    return total


def _size(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while n >= 1024 and len(units) > 1:
        n /= 1024
        units.pop(0)
    return f"{n:.3g} {units[0]}"


class AgentTable:
    """`capacity` slots; `slots_for(ids)` finds or allocates, `free(slots)` releases."""

    def __init__(self, capacity: int, n_state: int, layers: int, hidden: int, hist_len: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1, got {capacity}")
        check_size(capacity, n_state, layers, hidden, hist_len)
        self.capacity = capacity
        self._shape = (n_state, layers, hidden, hist_len)
        self.clear()

    def clear(self) -> None:
        """Forget every agent: the table is as new."""
        n_state, layers, hidden, hist_len = self._shape
        capacity = self.capacity
        self.ids = np.full(capacity, -1, np.int64)            # -1: free slot
        self.state = np.zeros((n_state, layers, capacity, hidden), np.float32)
        self.hist = np.zeros((capacity, hist_len, 2), np.float64)
        self.n_obs = np.zeros(capacity, np.int64)
        self.last_t = np.zeros(capacity, np.int64)            # stamp of the last raw observation
        self.last_xy = np.zeros((capacity, 2), np.float64)
        self.last_k = np.full(capacity, NEVER, np.int64)      # grid index of the last sample
        self._keys = np.zeros(0, np.int64)                    # ids in use, ascending
        self._key_slot = np.zeros(0, np.int64)                # the slot of each
        self._free = np.arange(capacity - 1, -1, -1)          # a stack (top = end): low slots are reused first
        self._n_free = capacity

    def __len__(self) -> int:
        return len(self._keys)

    def active(self) -> np.ndarray:
        """Slots in use, ascending."""
        return np.flatnonzero(self.ids >= 0)

    def slots_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot per id, is_new per id) for distinct ids; slot -1 (a new id) where the table is full."""
        keys = self._keys
        if len(keys):
            at = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
            slots, new = self._key_slot[at], keys[at] != ids
        else:
            slots, new = np.full(len(ids), -1, np.int64), np.ones(len(ids), bool)
        if new.any():
            self._add(ids, slots, new)
        return slots, new

    def _add(self, ids: np.ndarray, slots: np.ndarray, new: np.ndarray) -> None:
        """Give the new ids free slots (in place in `slots`); those beyond capacity get -1."""
        rows = np.flatnonzero(new)
        n = min(len(rows), self._n_free)
        got = self._free[self._n_free - n: self._n_free][::-1]
        self._n_free -= n
        slots[rows[:n]] = got
        slots[rows[n:]] = -1
        self.ids[got] = ids[rows[:n]]
        self._index()
        self.reset(got)

    def _index(self) -> None:
        used = self.active()
        order = np.argsort(self.ids[used])
        self._keys, self._key_slot = self.ids[used][order], used[order]

    def reset(self, slots: np.ndarray) -> None:
        """Start these agents afresh (zero state, no history), keeping their slots."""
        self.state[:, :, slots] = 0.0
        self.n_obs[slots] = 0
        self.last_k[slots] = NEVER

    def free(self, slots: np.ndarray) -> None:
        self.ids[slots] = -1
        self._free[self._n_free: self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        self._index()
        self.reset(slots)

    # -- persistence ---------------------------------------------------------------------------
    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """The rows of the slots in use (a periodic save writes KBs, not the whole table)."""
        used = self.active()
        out = {f"{prefix}slots": used}
        for name in _ARRAYS:
            a = getattr(self, name)
            out[f"{prefix}{name}"] = a[:, :, used] if name == "state" else a[used]
        return out

    def restore(self, data: Any, prefix: str) -> None:
        """Load rows written by `arrays()` into the same slots; raise ValueError if they do not fit."""
        used = np.asarray(data[f"{prefix}slots"])
        if used.dtype != np.int64 or used.ndim != 1 or (len(used) and (used.min() < 0 or used.max() >= self.capacity)):
            raise ValueError(f"saved {prefix}slots do not fit a table of {self.capacity} slots")
        rows = {}
        for name in _ARRAYS:
            key, mine = f"{prefix}{name}", getattr(self, name)
            if key not in data:
                raise ValueError(f"saved state has no array {key!r}")
            value = data[key]
            want = mine[:, :, used].shape if name == "state" else mine[used].shape
            if value.shape != want or value.dtype != mine.dtype:
                raise ValueError(f"saved array {key!r} is {value.dtype}{list(value.shape)}, "
                                 f"expected {mine.dtype}{list(want)}")
            rows[name] = value
        if len(np.unique(used)) != len(used):
            raise ValueError(f"saved {prefix}slots repeat a slot")
        if np.any(rows["ids"] < 0) or len(np.unique(rows["ids"])) != len(used):
            raise ValueError(f"saved {prefix}ids are not distinct agent ids")
        for name, value in rows.items():
            if name == "state":
                self.state[:, :, used] = value
            else:
                getattr(self, name)[used] = value
        self._index()
        free = np.flatnonzero(self.ids < 0)[::-1]
        self._free[: len(free)], self._n_free = free, len(free)

