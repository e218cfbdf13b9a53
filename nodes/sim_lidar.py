"""The simulator's 2D lidar: the static roadside scene, and ray casting against boxes and circles.

A scene is two arrays: oriented boxes `float64[B, 5]` (centre x, y, yaw, half length, half width:
vehicles, walls, parked things) and circles `float64[C, 3]` (centre x, y, radius: pedestrians,
posts). `cast` pairs each shape within `range_max` with the beams that can reach its bounding
circle, intersects all pairs at once (slab test for boxes, the quadratic for circles) and keeps the
nearest hit per beam, which is occlusion. Pairs rather than a beams x shapes grid: a car 20 m away
spans 14 of 360 beams, and grids of 100+ kB arrays cost page faults on every allocation. A beam
from inside a shape does not hit it, so the lidar never sees the vehicle that carries it.

`SimLidar` turns hits into a ROS-style scan (REP 117): +inf where nothing is within `range_max`,
NaN for a dropout (a beam that returned nothing although something was there), -inf below
`range_min`, Gaussian range noise on the rest. All beams are cast from one pose: the motion of the
vehicle during a sweep is not simulated, so a scan's `time_increment` is 0.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["SimLidar", "cast", "returns_on", "roadside"]


def cast(origin: tuple[float, float], angle_min: float, angle_increment: float, beams: int, boxes: np.ndarray,
         circles: np.ndarray, range_max: float) -> np.ndarray:
    """Range (m) of the nearest hit along each beam `angle_min + i * angle_increment` (rad, world
    frame) from `origin`, +inf where no shape is hit within `range_max`. float64[beams]."""
    px, py = origin
    angles = angle_min + angle_increment * np.arange(beams)
    u, v = np.cos(angles), np.sin(angles)
    best = np.full(beams, np.inf)
    fan = (angle_min, angle_increment, beams, range_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        beam, k = _fan(origin, boxes[:, :2], np.hypot(boxes[:, 3], boxes[:, 4]), *fan)
        c, s = np.cos(boxes[:, 2]), np.sin(boxes[:, 2])
        ox = (c * (px - boxes[:, 0]) + s * (py - boxes[:, 1]))[k]  # the origin in each box's frame
        oy = (c * (py - boxes[:, 1]) - s * (px - boxes[:, 0]))[k]
        c, s, bu, bv = c[k], s[k], u[beam], v[beam]
        ix, iy = 1.0 / (bu * c + bv * s), 1.0 / (bv * c - bu * s)  # the beam's direction in the box's frame
        tx1, tx2 = (-boxes[k, 3] - ox) * ix, (boxes[k, 3] - ox) * ix  # where it crosses each slab's sides
        ty1, ty2 = (-boxes[k, 4] - oy) * iy, (boxes[k, 4] - oy) * iy
        near = np.maximum(np.minimum(tx1, tx2), np.minimum(ty1, ty2))
        far = np.minimum(np.maximum(tx1, tx2), np.maximum(ty1, ty2))
        np.minimum.at(best, beam, np.where((near <= far) & (near > 0), near, np.inf))  # NaN: no hit
        beam, k = _fan(origin, circles[:, :2], circles[:, 2], *fan)
        wx, wy, r = circles[k, 0] - px, circles[k, 1] - py, circles[k, 2]
        b = u[beam] * wx + v[beam] * wy
        outside = wx * wx + wy * wy - r * r
        t = b - np.sqrt(b * b - outside)  # NaN where the beam misses
        np.minimum.at(best, beam, np.where((t > 0) & (outside > 0), t, np.inf))
    best[best > range_max] = np.inf
    return best


def returns_on(ranges: np.ndarray, pose: tuple[float, float, float], angle_min: float, angle_increment: float,
               boxes: np.ndarray, circles: np.ndarray, margin: float) -> np.ndarray:
    """How many returns of a scan (`ranges` from `pose`, beams from `angle_min` in the lidar's frame) lie
    on each shape, boxes then circles, grown by `margin` (the range noise): int64[B + C]. A shape the
    scan put no return on is one the lidar could not see (hidden, or too thin between two beams)."""
    x, y, yaw = pose
    hit = np.flatnonzero(np.isfinite(ranges))
    a = angle_min + yaw + angle_increment * hit
    px, py = x + ranges[hit] * np.cos(a), y + ranges[hit] * np.sin(a)
    dx, dy = px[None, :] - boxes[:, 0:1], py[None, :] - boxes[:, 1:2]       # [B, N]
    c, s = np.cos(boxes[:, 2:3]), np.sin(boxes[:, 2:3])
    on_box = ((np.abs(c * dx + s * dy) <= boxes[:, 3:4] + margin)
              & (np.abs(c * dy - s * dx) <= boxes[:, 4:5] + margin)).sum(axis=1)
    on_circle = (np.hypot(px[None, :] - circles[:, 0:1], py[None, :] - circles[:, 1:2])
                 <= circles[:, 2:3] + margin).sum(axis=1)
    return np.concatenate([on_box, on_circle]).astype(np.int64)


def _fan(origin: tuple[float, float], centres: np.ndarray, radius: np.ndarray, angle_min: float,
         angle_increment: float, beams: int, range_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(beam, shape) index pairs: every shape within range with each beam that can reach its bounding
    circle (all beams from inside it). Testing pairs, not beams x shapes, keeps arrays small."""
    dx, dy = centres[:, 0] - origin[0], centres[:, 1] - origin[1]
    d = np.hypot(dx, dy)
    shape = np.flatnonzero(d - radius < range_max)
    d, radius = d[shape], radius[shape]
    half = np.where(d > radius, np.arcsin(np.minimum(radius / d, 1.0)), np.pi) / angle_increment
    mid = (np.arctan2(dy[shape], dx[shape]) - angle_min) / angle_increment
    first = np.ceil(mid - half).astype(np.int64)
    count = np.minimum(np.floor(mid + half).astype(np.int64) - first + 1, beams)
    start = np.cumsum(count) - count
    shape, first, start = np.repeat(shape, count), np.repeat(first, count), np.repeat(start, count)
    return (first + np.arange(len(shape)) - start) % beams, shape


def roadside(length_m: float, kerb_y: float, wall_y: float, crossings: np.ndarray,
             rng: np.random.Generator, opening: tuple[float, float] = (np.inf, np.inf)) -> tuple[np.ndarray, np.ndarray]:
    """Static (boxes, circles) along both sides of a straight road on the x axis: walls at
    +-`wall_y` with gaps (driveways), posts at +-`kerb_y` every 15 m but not on a crossing, and
    parked boxes (cars, trailers, kiosks) against the walls. Beyond the road's ends by 60 m. Nothing
    stands in `opening` (x0, x1), where a cross street meets the road: walls are cut short there."""
    boxes: list[list[float]] = []
    posts: list[list[float]] = []
    x0, x1 = opening
    for side in (-1.0, 1.0):
        x = -60.0
        while x < length_m + 60.0:
            seg = rng.uniform(20.0, 50.0)
            for a, b in ((x, min(x + seg, x0)), (max(x, x1), x + seg)):   # the wall's parts outside the opening
                if b - a > 0.5:
                    boxes.append([(a + b) / 2, side * (wall_y + 0.2), 0.0, (b - a) / 2, 0.2])
            x += seg + rng.uniform(3.0, 8.0)
        for px in np.arange(-60.0, length_m + 60.0, 15.0) + rng.uniform(0.0, 15.0):
            if np.abs(crossings - px).min() > 4.0 and not x0 - 1.0 < px < x1 + 1.0:
                posts.append([px, side * kerb_y, 0.15])
        for px in np.arange(-60.0, length_m + 60.0, 30.0) + rng.uniform(0.0, 30.0):
            half_l, half_w = rng.uniform(1.0, 2.5), rng.uniform(0.6, 0.9)
            cx = px + rng.uniform(-5.0, 5.0)
            if not x0 - half_l < cx < x1 + half_l:
                boxes.append([cx, side * (wall_y - 0.1 - half_w), 0.0, half_l, half_w])
    return np.array(boxes).reshape(-1, 5), np.array(posts).reshape(-1, 3)


class SimLidar:
    """A 2D lidar of `beams` beams over a full turn, starting at -pi in its own frame."""

    def __init__(self, beams: int, range_min: float, range_max: float, noise_m: float, dropout: float,
                 rng: np.random.Generator) -> None:
        self.range_min, self.range_max = range_min, range_max
        self.noise_m, self.dropout = noise_m, dropout
        self.rng = rng
        self.angle_min = -math.pi
        self.angle_increment = 2 * math.pi / beams
        self.beams = beams

    def scan(self, pose: tuple[float, float, float], boxes: np.ndarray, circles: np.ndarray) -> np.ndarray:
        """float32 ranges seen from `pose` (x, y, yaw of the lidar in the world)."""
        x, y, yaw = pose
        r = cast((x, y), self.angle_min + yaw, self.angle_increment, self.beams, boxes, circles,
                 self.range_max)
        # Both draws cover every beam, so the generator's state depends on the beam count only.
        noise = self.rng.normal(0.0, self.noise_m, len(r)) if self.noise_m > 0 else 0.0
        lost = self.rng.random(len(r)) < self.dropout
        hit = np.isfinite(r)
        r = np.where(hit, r + noise, r)
        r[hit & (r > self.range_max)] = np.inf
        r[hit & (r < self.range_min)] = -np.inf
        r[hit & lost] = np.nan
        return r.astype(np.float32)
