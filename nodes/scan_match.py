"""Where the lidar is, from the scan itself: 2D point-to-line ICP against the previous scan.

The detector needs the lidar's pose at every scan. It comes from the carrier's pose topic; when that
topic repeats one pose exactly while the car was moving (a motion-capture system that lost its
markers, an odometry driver that stalled), scans placed with the stale pose would slide through the
map. Aligning each scan with the previous one keeps the pose for the few seconds such an outage lasts.

Point-to-line ICP (Censi 2008): each return is paired with the nearest return of the previous scan
(by brute force: 60 returns against one scan's few hundred cost less than a k-d tree's build) and
pulled onto the line through that return and its neighbours, not onto the return itself: two scans
sample a wall at different places, and point-to-point pairs would hold the walls apart along their
length. Pairs further than a distance that shrinks from step to step are left out,
so moving objects do not pull. Each step solves the linearised 3x3 least-squares problem.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["line_normals", "match_scan"]


def line_normals(points: np.ndarray, max_gap: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals [M, 2] of the returns `points` [N, 2] (in beam order) whose two neighbours lie
    within `max_gap`, and those returns' indices [M]."""
    if len(points) < 3:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    step = points[1:] - points[:-1]
    short = np.einsum("ij,ij->i", step, step) <= max_gap * max_gap
    idx = np.flatnonzero(short[:-1] & short[1:]) + 1
    d = points[idx + 1] - points[idx - 1]
    norm = np.hypot(d[:, 0], d[:, 1])
    ok = norm > 0
    normals = d[:, ::-1] * (np.array([-1.0, 1.0]) / np.where(ok, norm, 1.0)[:, None])   # (-dy, dx) / |d|
    return (normals, idx) if ok.all() else (normals[ok], idx[ok])


def match_scan(points: np.ndarray, reference: np.ndarray, guess: tuple[float, float, float],
               max_dist: float = 0.3, iterations: int = 5, min_pairs: int = 20,
               max_points: int = 60) -> tuple[float, float, float] | None:
    """The pose (x, y, yaw) that places `points` [N, 2] (sensor frame) onto `reference` [M, 2] (map
    frame, in beam order), starting from `guess`; None when too few points pair up, or the answer lies
    further from the guess than a scan's motion can (`2 max_dist`, half a radian)."""
    normals, ref_idx = line_normals(reference)
    if len(points) < min_pairs or len(ref_idx) < min_pairs:
        return None
    points = points[::-(-len(points) // max_points)]   # every k-th return: enough to align, and cheap
    # all about the guessed lidar position: no cancellation in squared distances far from the map's origin
    gx, gy, gyaw = guess
    ref = reference[ref_idx] - (gx, gy)
    # in homogeneous coordinates (p, 1): (p, 1) . line = n . (p - q), the point-to-line residual of each
    # return q, and (p, 1) @ near = |p - q|^2 - |p|^2 for every q
    line = np.column_stack([normals, -np.einsum("ij,ij->i", normals, ref)])             # [M, 3]
    near = np.concatenate([-2 * ref.T, np.einsum("ij,ij->i", ref, ref)[None]])          # [3, M]
    homogeneous = np.column_stack([points, np.ones(len(points))])
    x, y, yaw = 0.0, 0.0, gyaw
    dist = max_dist
    for _ in range(iterations):
        c, s = math.cos(yaw), math.sin(yaw)
        placed = homogeneous @ np.array([[c, s, 0.0], [-s, c, 0.0], [x, y, 1.0]])
        d2 = placed @ near
        j = d2.argmin(axis=1)
        ok = d2.min(axis=1) + np.einsum("ij,ij->i", placed, placed) <= dist * dist + 1   # |(p, 1)|^2 = |p|^2 + 1
        if ok.sum() < min_pairs:
            return None
        p, jac = placed[ok], line[j[ok]]
        residual = np.einsum("ij,ij->i", jac, p)
        # rows: d(residual)/d(tx), d/d(ty), d/d(yaw about the guess)
        jac[:, 2] = jac[:, 1] * p[:, 0] - jac[:, 0] * p[:, 1]
        (a00, a01, a02), (_, a11, a12), (_, _, a22) = (jac.T @ jac).tolist()
        b0, b1, b2 = (-residual @ jac).tolist()
        # the 3x3 normal equations by Cramer's rule: numpy's solve costs more than the whole rest
        c00, c01, c02 = a11 * a22 - a12 * a12, a02 * a12 - a01 * a22, a01 * a12 - a02 * a11
        det = a00 * c00 + a01 * c01 + a02 * c02
        if not abs(det) > 1e-12 * (a00 * a11 * a22):   # all pairs on one line: the pose along it is unknown
            return None
        dx = (b0 * c00 + b1 * c01 + b2 * c02) / det
        dy = (b0 * c01 + b1 * (a00 * a22 - a02 * a02) + b2 * (a01 * a02 - a00 * a12)) / det
        dyaw = (b0 * c02 + b1 * (a01 * a02 - a00 * a12) + b2 * (a00 * a11 - a01 * a01)) / det
        cd, sd = math.cos(dyaw), math.sin(dyaw)
        x, y = cd * x - sd * y + dx, sd * x + cd * y + dy
        yaw += dyaw
        dist = max(0.05, dist * 0.7)
        if abs(dx) < 1e-3 and abs(dy) < 1e-3 and abs(dyaw) < 1e-3:   # 1 mm, 1 mrad: a tenth of range noise
            break
    if not (math.isfinite(x + y + yaw) and math.hypot(x, y) <= 2 * max_dist
            and abs(math.remainder(yaw - gyaw, 2 * math.pi)) <= 0.5):
        return None   # a degenerate scene (one wall, one box) let it slide: not a pose to trust
    return gx + x, gy + y, yaw
