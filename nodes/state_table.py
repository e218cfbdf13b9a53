"""Per-agent recurrent state in preallocated arrays: agent id -> slot, for one model.

Why preallocated: a live graph sees agents come and go for hours. Growing and shrinking arrays (or one
small array per agent) fragments memory and costs an allocation per agent per message; a fixed table of
`capacity` slots keeps the resident size flat and lets the node gather/scatter a whole batch with one
fancy-indexing operation each way.

A slot holds the LSTM state (h, c), the agent's position history resampled to the model period
(`hist[slot, -1]` = newest sample, as `export.features` expects), how many samples it has (`n_obs`, not
capped), the last raw observation (`last_t`, `last_xy`: the left end of the next interpolation) and the
grid index of its last sample (`last_k`). `arrays`/`restore` move the rows in use to and from one `.npz`
(no pickle), written by `save_npz` with an atomic replace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AgentTable", "save_npz"]

_ARRAYS = ("ids", "kind", "state", "hist", "n_obs", "last_t", "last_xy", "last_k", "first_k")


class AgentTable:
    """`capacity` slots; `slots_for(ids)` finds or allocates, `free(slots)` releases."""

    def __init__(self, capacity: int, n_state: int, layers: int, hidden: int, hist_len: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected >= 1, got {capacity}")
        self.capacity = capacity
        self.ids = np.full(capacity, -1, np.int64)            # -1: free slot
        self.kind = np.zeros(capacity, np.uint8)
        self.state = np.zeros((n_state, layers, capacity, hidden), np.float32)
        self.hist = np.zeros((capacity, hist_len, 2), np.float64)
        self.n_obs = np.zeros(capacity, np.int64)
        self.last_t = np.zeros(capacity, np.int64)            # stamp of the last raw observation
        self.last_xy = np.zeros((capacity, 2), np.float64)
        self.last_k = np.zeros(capacity, np.int64)            # grid index of the last sample
        self.first_k = np.zeros(capacity, np.int64)           # grid index of the first sample
        self._slot: dict[int, int] = {}
        self._free = list(range(capacity - 1, -1, -1))       # a stack: low slots are reused first

    def __len__(self) -> int:
        return len(self._slot)

    def active(self) -> np.ndarray:
        """Slots in use, ascending."""
        return np.flatnonzero(self.ids >= 0)

    def slots_for(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot per id, is_new per id); slot -1 where the table is full."""
        slots = np.empty(len(ids), np.int64)
        new = np.zeros(len(ids), bool)
        get = self._slot.get
        for i, agent in enumerate(ids.tolist()):  # a dict lookup per agent: ~50 ns each
            s = get(agent)
            if s is None:
                if not self._free:
                    slots[i] = -1
                    continue
                s = self._free.pop()
                self._slot[agent] = s
                self.ids[s] = agent
                new[i] = True
            slots[i] = s
        if new.any():
            self.reset(slots[new])
        return slots, new

    def reset(self, slots: np.ndarray) -> None:
        """Start these agents afresh (zero state, no history), keeping their slots."""
        self.state[:, :, slots] = 0.0
        self.n_obs[slots] = 0

    def free(self, slots: np.ndarray) -> None:
        for s in slots.tolist():
            del self._slot[int(self.ids[s])]
            self.ids[s] = -1
            self._free.append(s)
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
        if np.any(rows["ids"] < 0) or len(np.unique(rows["ids"])) != len(used):
            raise ValueError(f"saved {prefix}ids are not distinct agent ids")
        for name, value in rows.items():
            if name == "state":
                self.state[:, :, used] = value
            else:
                getattr(self, name)[used] = value
        self._slot = {int(a): int(s) for a, s in zip(rows["ids"].tolist(), used.tolist(), strict=True)}
        self._free = [s for s in range(self.capacity - 1, -1, -1) if self.ids[s] < 0]


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic write: a reader (or a respawned node) sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)  # type: ignore[arg-type]  # numpy's stub types the first kwarg as allow_pickle
    tmp.replace(path)
