"""From fitted rectangles to object boxes: which sides were seen, the centre, length, width, heading.

A lidar sees a car from outside: two sides (an L) or one. A side whose points spread less than
`min_side` was not seen. Each dimension of the box is the largest of the points' extent, the prior
size (the smallest vehicle expected) and the same object's earlier two-sided fits (`SizeMemory`):
the box starts at the end of the points nearer the sensor and extends away from it. So the centre
is the same point of the car whether a scan sees two sides, one, or part of one (the far ends of an
L fade out at grazing angles). A lone side is the length if it is a quarter longer than the known
width (a car seen end on shows its width; one seen from the side, often only part of its length).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from nodes.scan_geometry import Rectangles
from pipeline.wire.messages import Detections

__all__ = ["Boxes", "SizeMemory", "boxes"]


class Boxes(NamedTuple):
    xy: np.ndarray        # [K, 2] centre
    length: np.ndarray    # [K] along heading
    width: np.ndarray
    heading: np.ndarray   # [K] in [0, pi)
    observed: np.ndarray  # [K] Detections.OBSERVED_* bits


class SizeMemory:
    """Sizes of recently fully seen objects, by where they were last seen (a handful of entries)."""

    def __init__(self, radius_m: float, keep_s: float, capacity: int = 32) -> None:
        self.radius = radius_m
        self.keep_s = keep_s
        self.capacity = capacity
        self.xy = np.zeros((0, 2))
        self.dims = np.zeros((0, 2))   # length, width
        self.t = np.zeros(0)

    def clear(self) -> None:
        self.__init__(self.radius, self.keep_s, self.capacity)  # type: ignore[misc]

    def lookup(self, xy: np.ndarray, t_s: float) -> np.ndarray:
        """Index of the nearest live entry within the radius of each point of `xy` [K, 2], or -1."""
        if len(self.t) == 0 or len(xy) == 0:
            return np.full(len(xy), -1)
        live = self.t >= t_s - self.keep_s
        if not live.all():
            self.xy, self.dims, self.t = self.xy[live], self.dims[live], self.t[live]
            if len(self.t) == 0:
                return np.full(len(xy), -1)
        d2 = ((xy[:, None, :] - self.xy[None, :, :]) ** 2).sum(axis=2)
        best = np.argmin(d2, axis=1)
        return np.where(d2[np.arange(len(xy)), best] <= self.radius ** 2, best, -1)

    def reference(self, idx: np.ndarray, prior: tuple[float, float]) -> np.ndarray:
        """Length and width [K, 2] to assume for boxes matched to entries `idx`: never below `prior`."""
        ref = np.empty((len(idx), 2))
        ref[:] = prior
        hit = idx >= 0
        if hit.any():
            ref[hit] = np.maximum(self.dims[idx[hit]], ref[hit])
        return ref

    def update(self, idx: np.ndarray, xy: np.ndarray, dims: np.ndarray, full: np.ndarray, t_s: float) -> None:
        """Move matched entries `idx` (>= 0) to `xy`; store the sizes of `full` (both sides seen) boxes."""
        hit = idx >= 0
        if not (hit.any() or full.any()):
            return
        self.xy[idx[hit]] = xy[hit]
        self.t[idx[hit]] = t_s
        upd = hit & full
        old = self.dims[idx[upd]]
        # the upper envelope of what was seen: a side fading out at a grazing angle only shortens it
        self.dims[idx[upd]] = old + np.where(dims[upd] > old, 0.3, 0.05) * (dims[upd] - old)
        new = ~hit & full
        if new.any():
            self.xy = np.concatenate([self.xy, xy[new]])[-self.capacity:]
            self.dims = np.concatenate([self.dims, dims[new]])[-self.capacity:]
            self.t = np.concatenate([self.t, np.full(int(new.sum()), t_s)])[-self.capacity:]


def boxes(rect: Rectangles, sensor_xy: np.ndarray, min_side: float, prior: tuple[float, float],
          memory: SizeMemory, t_s: float) -> Boxes:
    """The boxes of fitted rectangles seen from `sensor_xy` [K, 2]; see the module docstring."""
    c, s = np.cos(rect.theta), np.sin(rect.theta)
    rel = sensor_xy - rect.origin
    sensor = np.empty_like(rel)
    sensor[:, 0], sensor[:, 1] = rel[:, 0] * c + rel[:, 1] * s, rel[:, 1] * c - rel[:, 0] * s
    spread = rect.hi - rect.lo
    seen = spread >= min_side                                   # [K, 2] per axis
    idx = memory.lookup(rect.origin, t_s)
    ref = memory.reference(idx, prior)
    # the length lies along the first axis if that side is the longer of two seen, or a lone side
    # longer than the width could be
    lone = seen[:, 0] != seen[:, 1]
    lone_is_length = np.where(seen[:, 0], spread[:, 0], spread[:, 1]) > 1.25 * ref[:, 1]
    along = np.where(lone, seen[:, 0] == lone_is_length, spread[:, 0] >= spread[:, 1])[:, None]
    dims = np.maximum(spread, np.where(along, ref, ref[:, ::-1]))
    # the end of each extent nearer the sensor is where the object starts; the rest lies behind it
    centre = np.where(sensor <= (rect.lo + rect.hi) / 2, rect.lo + dims / 2, rect.hi - dims / 2)
    xy = rect.origin.copy()
    xy[:, 0] += centre[:, 0] * c - centre[:, 1] * s
    xy[:, 1] += centre[:, 0] * s + centre[:, 1] * c
    lw = np.where(along, dims, dims[:, ::-1])
    seen_lw = np.where(along, seen, seen[:, ::-1])
    heading = np.mod(rect.theta + np.where(along[:, 0], 0.0, np.pi / 2), np.pi)
    observed = (seen_lw[:, 0] * Detections.OBSERVED_LENGTH + seen_lw[:, 1] * Detections.OBSERVED_WIDTH
                + seen.any(axis=1) * Detections.OBSERVED_HEADING).astype(np.uint8)
    memory.update(idx, xy, np.where(along, spread, spread[:, ::-1]), seen.all(axis=1), t_s)
    return Boxes(xy, lw[:, 0], lw[:, 1], heading, observed)
