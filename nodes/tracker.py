"""Detections in, confirmed tracks out: the multi-object tracker in front of the predictor.

The filtering, assignment and track life cycle live in `nodes.mot` (`TrackSet`, a constant-velocity
Kalman filter per track, Hungarian assignment from scipy); this node checks its input and publishes.
Each detections message advances the tracks to its stamp: a message whose stamp is not after the
previous one is dropped (`drops.out_of_order`) unless it is more than `restart_s` back, which starts
afresh (`restarts`: a replay that loops), and rows with a non-finite or absurd centre or size are
dropped (`drops.rows`), so one bad row never reaches a filter; rows beyond `max_detections` are
dropped too (`drops.too_many`: the gate costs tracks times rows).

Outputs, for every detections message, stamped with it: `tracks` (Tracks: confirmed tracks' ids,
centres, velocities and kinds, what the predictor consumes) and `boxes` (Detections: the same tracks
with their ids and smoothed length, width and heading; heading along the velocity once moving).

```yaml
  tracker:
    run: nodes.tracker:Tracker
    inputs: {detections: detector/detections}
```
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated

import numpy as np
from msgspec import Meta

from nodes.mot import TrackerParams, TrackSet
from nodes.plausible import plausible_rows
from pipeline.runtime.node import Node
from pipeline.wire.messages import Detections, Tracks

__all__ = ["Tracker"]


class Tracker(Node):
    """Detections on `detections` in, Tracks on `tracks` and their boxes on `boxes` out."""

    class Params(TrackerParams):
        restart_s: Annotated[float, Meta(gt=0)] = 1.0          # a stamp this far back starts afresh
        max_abs_xy: Annotated[float, Meta(gt=0, le=1e9)] = 1e6  # |x|, |y| of an accepted centre (m)
        max_size: Annotated[float, Meta(gt=0)] = 100.0          # length or width of an accepted box (m)
        max_detections: Annotated[int, Meta(ge=1)] = 1024       # rows used per message (the gate is tracks x rows)

    params: Params
    inputs = {"detections": Detections}
    outputs = {"tracks": Tracks, "boxes": Detections}

    def setup(self) -> None:
        self.tracks = TrackSet(self.params)
        self.counts: Counter[str] = Counter()
        self.every(1.0, self._update_diagnostics)

    def on_detections(self, msg: Detections) -> None:
        p = self.params
        last = self.tracks.stamp_ns
        if last is not None and msg.stamp_ns <= last:
            if last - msg.stamp_ns <= p.restart_s * 1e9:
                self.counts["drops.out_of_order"] += 1
                return
            self.tracks.clear()
            self.counts["restarts"] += 1
        ok = (plausible_rows(msg.xy, p.max_abs_xy) & (msg.length >= 0) & (msg.length <= p.max_size)
              & (msg.width >= 0) & (msg.width <= p.max_size) & np.isfinite(msg.heading))   # NaN compares False
        self.counts["drops.rows"] += int((~ok).sum())
        rows = np.flatnonzero(ok)
        self.counts["drops.too_many"] += max(len(rows) - p.max_detections, 0)
        self.counts["drops.capacity"] += self.tracks.step(msg.stamp_ns, msg, rows[:p.max_detections])
        self._publish(msg)

    def _publish(self, msg: Detections) -> None:
        t = self.tracks
        i = t.published()
        ids, xy = t.ids[i], t.x[i, :2]
        self.publish("tracks", Tracks(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, ids=ids, xy=xy,
                                      vxy=t.x[i, 2:], kind=t.kind[i]))
        self.publish("boxes", Detections(stamp_ns=msg.stamp_ns, frame_id=msg.frame_id, xy=xy, kind=t.kind[i],
                                         score=np.ones(len(i)), ids=ids, length=t.size[i, 0], width=t.size[i, 1],
                                         heading=t.box_heading(i), observed=t.observed[i]))

    def _update_diagnostics(self) -> None:
        self.diagnostics.update({k: float(v) for k, v in self.counts.items()})
        self.diagnostics["tracks"] = float(len(self.tracks))
        self.diagnostics["confirmed"] = float(len(self.tracks.published()))
