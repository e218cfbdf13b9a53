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

# Detections.observed by the sides seen (length + 2 width): a box with a side seen has a heading
_OBSERVED = np.array([0, Detections.OBSERVED_LENGTH, Detections.OBSERVED_WIDTH,
                      Detections.OBSERVED_LENGTH | Detections.OBSERVED_WIDTH], np.uint8)
_OBSERVED[1:] |= Detections.OBSERVED_HEADING


class Boxes(NamedTuple):
    xy: np.ndarray        # [K, 2] centre
    length: np.ndarray    # [K] along heading
    width: np.ndarray
    heading: np.ndarray   # [K] in [0, pi)
    observed: np.ndarray  # [K] Detections.OBSERVED_* bits


class SizeMemory:
    """Sizes of recently fully seen objects, by where they were last seen: `capacity` slots (a handful
    are live), a new entry taking the one seen longest ago."""

    def __init__(self, radius_m: float, keep_s: float, capacity: int = 32) -> None:
        self.radius = radius_m
        self.keep_s = keep_s
        self.xy = np.zeros((capacity, 2))
        self.dims = np.zeros((capacity, 2))   # length, width
        self.t = np.full(capacity, -np.inf)   # when last seen; -inf: free

    def clear(self) -> None:
        self.t[:] = -np.inf

    def lookup(self, xy: np.ndarray, t_s: float, prior: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
        """For each point of `xy` [K, 2]: the index of the nearest entry seen within `keep_s` and the
        radius, or -1; and the length and width [K, 2] to assume there, never below `prior`."""
        d2 = ((xy[:, None, :] - self.xy[None, :, :]) ** 2).sum(axis=2)
        d2[:, self.t < t_s - self.keep_s] = np.inf
        best = d2.argmin(axis=1)
        hit = d2.min(axis=1) <= self.radius ** 2
        return np.where(hit, best, -1), np.maximum(np.where(hit[:, None], self.dims[best], 0.0), prior)

    def update(self, idx: np.ndarray, xy: np.ndarray, dims: np.ndarray, full: np.ndarray, t_s: float) -> None:
        """Move matched entries `idx` (>= 0) to `xy`; store the sizes of `full` (both sides seen) boxes."""
        hit = idx >= 0
        if hit.any():
            self.xy[idx[hit]] = xy[hit]
            self.t[idx[hit]] = t_s
            grow = hit & full
            if grow.any():
                upd, seen = idx[grow], dims[grow]
                old = self.dims[upd]
                # the upper envelope of what was seen: a side fading out at a grazing angle only shortens it
                self.dims[upd] = old + np.where(seen > old, 0.3, 0.05) * (seen - old)
        new = np.flatnonzero(full & ~hit)[-len(self.t):]
        if len(new):
            slots = np.argsort(self.t)[:len(new)]
            self.xy[slots], self.dims[slots], self.t[slots] = xy[new], dims[new], t_s


def boxes(rect: Rectangles, sensor_xy: np.ndarray, min_side: float, prior: tuple[float, float],
          memory: SizeMemory, t_s: float) -> Boxes:
    """The boxes of fitted rectangles seen from `sensor_xy` [K, 2]; see the module docstring."""
    c, s = np.cos(rect.theta), np.sin(rect.theta)
    rot = np.array([c, -s, s, c]).T.reshape(-1, 2, 2)   # per box: map (x, y) @ rot -> box axes
    sensor = ((sensor_xy - rect.origin)[:, :, None] * rot).sum(axis=1)
    spread = rect.hi - rect.lo
    seen = spread >= min_side                                   # [K, 2] per axis
    idx, ref = memory.lookup(rect.origin, t_s, prior)
    # the length lies along the first axis if that side is the longer of two seen, or a lone side
    # longer than the width could be
    lone = seen[:, 0] != seen[:, 1]
    lone_is_length = np.where(seen[:, 0], spread[:, 0], spread[:, 1]) > 1.25 * ref[:, 1]
    along = np.where(lone, seen[:, 0] == lone_is_length, spread[:, 0] >= spread[:, 1])[:, None]
    dims = np.maximum(spread, np.where(along, ref, ref[:, ::-1]))
    # the end of each extent nearer the sensor is where the object starts; the rest lies behind it
    centre = np.where(sensor <= (rect.lo + rect.hi) / 2, rect.lo + dims / 2, rect.hi - dims / 2)
    xy = rect.origin + (rot * centre[:, None, :]).sum(axis=2)   # box axes -> map
    lw = np.where(along, dims, dims[:, ::-1])
    seen_lw = np.where(along, seen, seen[:, ::-1])
    heading = np.mod(rect.theta + np.where(along[:, 0], 0.0, np.pi / 2), np.pi)
    observed = _OBSERVED[seen_lw[:, 0] + 2 * seen_lw[:, 1]]
    memory.update(idx, xy, np.where(along, spread, spread[:, ::-1]), seen.all(axis=1), t_s)
    return Boxes(xy, lw[:, 0], lw[:, 1], heading, observed)
