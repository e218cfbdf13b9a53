"""Where the lidar is, from the scan itself: 2D point-to-line ICP against the previous scan.

The detector needs the lidar's pose at every scan. It comes from the carrier's pose topic; when that
topic repeats one pose exactly while the car was moving (a motion-capture system that lost its
markers, an odometry driver that stalled), scans placed with the stale pose would slide through the
map. Aligning each scan with the previous one keeps the pose for the few seconds such an outage lasts.

Point-to-line ICP (Censi 2008): each return is paired with the nearest return of the previous scan
(a k-d tree) and pulled onto the line through that return and its neighbours, not onto the return
itself: two scans sample a wall at different places, and point-to-point pairs would hold the walls
apart along their length. Pairs further than a distance that shrinks from step to step are left out,
so moving objects do not pull. Each step solves the linearised 3x3 least-squares problem.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["line_normals", "match_scan"]


def line_normals(points: np.ndarray, max_gap: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals [M, 2] of the returns `points` [N, 2] (in beam order) whose two neighbours lie
    within `max_gap`, and those returns' indices [M]."""
    if len(points) < 3:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    d = points[2:] - points[:-2]
    near = (np.hypot(*(points[1:-1] - points[:-2]).T) <= max_gap) & (np.hypot(*(points[2:] - points[1:-1]).T) <= max_gap)
    idx = np.flatnonzero(near) + 1
    n = np.stack([-d[near, 1], d[near, 0]], axis=1)
    norm = np.hypot(n[:, 0], n[:, 1])
    ok = norm > 0
    return n[ok] / norm[ok, None], idx[ok]


def match_scan(points: np.ndarray, reference: np.ndarray, guess: tuple[float, float, float],
               max_dist: float = 0.3, iterations: int = 8, min_pairs: int = 20,
               max_points: int = 60) -> tuple[float, float, float] | None:
    """The pose (x, y, yaw) that places `points` [N, 2] (sensor frame) onto `reference` [M, 2] (map
    frame, in beam order), starting from `guess`; None when too few points pair up, or the answer lies
    further from the guess than a scan's motion can (`2 max_dist`, half a radian)."""
    normals, ref_idx = line_normals(reference)
    if len(points) < min_pairs or len(ref_idx) < min_pairs:
        return None
    points = points[::-(-len(points) // max_points)]   # every k-th return: enough to align, and cheap
    ref = reference[ref_idx]
    tree = cKDTree(ref)
    x, y, yaw = guess
    dist = max_dist
    placed = np.empty_like(points)
    for _ in range(iterations):
        c, s = np.cos(yaw), np.sin(yaw)
        placed[:, 0] = c * points[:, 0] - s * points[:, 1] + x
        placed[:, 1] = s * points[:, 0] + c * points[:, 1] + y
        d, j = tree.query(placed, distance_upper_bound=dist)
        ok = d <= dist * 0.999   # misses come back as inf
        if ok.sum() < min_pairs:
            return None
        p, q, n = placed[ok], ref[j[ok]], normals[j[ok]]
        centre = p.mean(axis=0)
        # rows: d(residual)/d(tx), d/d(ty), d/d(yaw about the centre); residual = n . (p - q)
        rows = np.vstack([n.T, n[:, 1] * (p[:, 0] - centre[0]) - n[:, 0] * (p[:, 1] - centre[1])])
        b = -(n[:, 0] * (p[:, 0] - q[:, 0]) + n[:, 1] * (p[:, 1] - q[:, 1]))
        try:
            dx, dy, dyaw = np.linalg.solve(rows @ rows.T, rows @ b)
        except np.linalg.LinAlgError:   # all pairs on one line: the pose along it is unknown
            return None
        cd, sd = np.cos(dyaw), np.sin(dyaw)
        ox, oy = x - centre[0], y - centre[1]
        x, y = centre[0] + cd * ox - sd * oy + dx, centre[1] + sd * ox + cd * oy + dy
        yaw += dyaw
        dist = max(0.05, dist * 0.7)
        if abs(dx) < 5e-4 and abs(dy) < 5e-4 and abs(dyaw) < 5e-4:
            break
    gx, gy, gyaw = guess
    if not (np.isfinite([x, y, yaw]).all() and math.hypot(x - gx, y - gy) <= 2 * max_dist
            and abs(math.remainder(yaw - gyaw, 2 * math.pi)) <= 0.5):
        return None   # a degenerate scene (one wall, one box) let it slide: not a pose to trust
    return float(x), float(y), float(yaw)
