"""Per-node counters and callback latency, turned into `Diagnostics` values once a second."""

from __future__ import annotations

from collections import Counter, deque

import numpy as np

__all__ = ["NodeStats"]


class NodeStats:
    """Counters keyed like `in.tracks`, `drops.tracks`, `decode_errors.bad_dtype`, `out.predictions`,
    `gaps.tracks` (messages lost upstream, by seq) and `seq_jumps.tracks` (seq jumps too large to be
    losses, counted once each), plus a window of callback durations for percentiles (bounded memory)."""

    def __init__(self, window: int = 2048) -> None:
        self.counts: Counter[str] = Counter()
        self._cb_us: deque[float] = deque(maxlen=window)

    def callback_done(self, seconds: float) -> None:
        self._cb_us.append(seconds * 1e6)

    def values(self, extra: dict[str, float]) -> dict[str, float]:
        out = {k: float(v) for k, v in self.counts.items()}
        if self._cb_us:
            p50, p99 = np.percentile(np.fromiter(self._cb_us, float), [50, 99])
            out["callback_p50_us"], out["callback_p99_us"] = float(p50), float(p99)
        out.update({k: float(v) for k, v in extra.items()})
        return out
