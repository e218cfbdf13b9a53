"""The lidar's pose at every beam of a scan, from the carrier's pose topic and the mounting offset.

Poses are interpolated at each beam's time (`nodes.pose_buffer`), never extrapolated, and composed
with the offset (x, y, yaw of the lidar in the carrier's frame). A pose that repeats the previous one
exactly (position and quaternion, bit for bit) right after the carrier was moving is no car that
stopped dead but a stale source: a motion-capture system that lost its markers, a stalled driver.
From the last changing pose on, each scan is then placed by matching it to the previous one
(`nodes.scan_match`), one pose for the whole scan, until the source moves again. A pose repeated
after the carrier stopped (a simulator's parked car) is taken as it is, as is the repeated pose
wherever matching fails (too few returns, as on an open road).
"""

from __future__ import annotations

import math

import numpy as np

from nodes.pose_buffer import PoseBuffer
from nodes.scan_match import match_scan
from pipeline.wire.messages import LaserScan

__all__ = ["MOVING_MPS", "LidarPose"]

#: a pose repeated after the carrier moved at least this fast (m/s) is stale; after it stopped, it is still
MOVING_MPS = 0.1


class LidarPose:
    """The carrier's recent poses and what is needed to place scans past them; see the module docstring."""

    def __init__(self, offset: tuple[float, float, float], max_gap_s: float, ego_radius: float) -> None:
        self.offset = offset
        self.ego_radius = ego_radius
        self.poses = PoseBuffer(keep_s=1.0, max_gap_s=max_gap_s)
        self.clear()

    def clear(self) -> None:
        self.poses.clear()
        self.last: tuple[float, ...] = ()
        self.frozen_ns: int | None = None    # newest stamp of a pose that repeated the one before
        self.previous: tuple[np.ndarray, np.ndarray] | None = None   # last scan's lidar pose, points
        self.trail: list[tuple[int, tuple[float, float, float]]] = []  # the last two scans' stamps, poses

    @property
    def newest_ns(self) -> int | None:
        """The newest stamp the carrier's pose is known at (a repeated pose counts)."""
        newest = self.poses.newest_ns
        return newest if newest is None or self.frozen_ns is None else max(newest, self.frozen_ns)

    def add(self, stamp_ns: int, pose: tuple[float, ...]) -> bool:
        """Add the carrier's pose (x, y, qx, qy, qz, qw: finite, stamped after the newest); True if
        it repeats the previous one."""
        if pose == self.last:
            self.frozen_ns = stamp_ns
            return True
        self.last, self.frozen_ns = pose, None
        x, y, qx, qy, qz, qw = pose
        self.poses.add(stamp_ns, x, y, math.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz)))
        return False

    def at(self, scan: LaserScan, idx: np.ndarray, angles: np.ndarray) -> tuple[np.ndarray | None, bool]:
        """The lidar's pose (x, y, yaw) [N, 3] at each beam `idx` (angles `angles`) of `scan`, or None;
        and whether it came from scan matching (the pose topic repeating itself)."""
        end = scan.stamp_ns + int(len(scan.ranges) * scan.time_increment * 1e9)
        if end <= (self.poses.newest_ns or 0):
            carrier = self.poses.at(scan.stamp_ns + (idx * scan.time_increment * 1e9).astype(np.int64))
            if carrier is None:
                return None, False
            ox, oy, oyaw = self.offset
            c, s = np.cos(carrier[:, 2]), np.sin(carrier[:, 2])
            carrier[:, 0] += c * ox - s * oy
            carrier[:, 1] += s * ox + c * oy
            carrier[:, 2] += oyaw
            return carrier, False
        pose = None
        if self.previous is not None and self.poses.speed() >= MOVING_MPS:
            sensor, points = self.previous
            r = scan.ranges[idx].astype(np.float64)
            local = r[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
            pose = match_scan(local[r > self.ego_radius], points, self._guess(scan.stamp_ns))
        if pose is None:   # standing still, or nothing to match (an open road): the repeated pose it is
            last = self.at_stamp(self.poses.newest_ns or 0)
            return (None if last is None else np.tile(last, (len(idx), 1))), False
        out = np.empty((len(idx), 3))
        out[:] = pose
        return out, True

    def at_stamp(self, stamp_ns: int) -> np.ndarray | None:
        """The lidar's pose (x, y, yaw) at `stamp_ns` (a 3D cloud, placed as one; past the last pose
        that changed, that pose), or None."""
        newest = self.poses.newest_ns
        if newest is not None and self.frozen_ns is not None and newest < stamp_ns <= self.frozen_ns:
            stamp_ns = newest
        carrier = self.poses.at(np.array([stamp_ns], np.int64))
        if carrier is None:
            return None
        x, y, yaw = carrier[0]
        ox, oy, oyaw = self.offset
        return np.array([x + math.cos(yaw) * ox - math.sin(yaw) * oy, y + math.sin(yaw) * ox + math.cos(yaw) * oy,
                         yaw + oyaw])

    def _guess(self, stamp_ns: int) -> tuple[float, float, float]:
        """Where the lidar should be at `stamp_ns` if it kept the motion of the last two scans (a good
        start makes the match converge in a few steps)."""
        (t1, p1), (t0, p0) = self.trail[-1], self.trail[0]
        k = (stamp_ns - t1) / (t1 - t0) if 0 < t1 - t0 < 5e8 else 0.0
        return p1[0] + k * (p1[0] - p0[0]), p1[1] + k * (p1[1] - p0[1]), p1[2] + k * (p1[2] - p0[2])

    def remember(self, stamp_ns: int, sensor: np.ndarray, points: np.ndarray) -> None:
        """The last placed scan: its lidar poses and its returns in the map (what the next is matched to)."""
        self.previous = (sensor, points)
        self.trail = [*self.trail[-1:], (stamp_ns, (float(sensor[-1, 0]), float(sensor[-1, 1]), float(sensor[-1, 2])))]
