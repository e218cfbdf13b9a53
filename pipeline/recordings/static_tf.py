"""A sensor's mounting offset from a recording's static transforms (`/tf_static`), as tf2 would give it.

ROS stores where a lidar sits on its vehicle as static transforms (`base_link` -> `laser`, often via
intermediate frames such as `base_link` -> `lidar_mount` -> `laser`); a TFMessage plays here as one
Odometry per transform (frame_id = parent, child_frame_id = child). `mounting_offset` walks the tree
from the carrier's frame to the sensor's, either way along each edge, and composes the planar part
(x, y, yaw): the detector places scans in 2D. Frame names are compared without a leading '/' (ROS 1
allowed one). Several static transforms for the same child keep the last, as tf2's latched topic does.
"""

from __future__ import annotations

import math
from collections import deque

from pipeline.errors import ConfigError
from pipeline.recordings.base import Recording
from pipeline.wire.codec import decode
from pipeline.wire.messages import Odometry

__all__ = ["TF_STATIC", "mounting_offset"]

TF_STATIC = "/tf_static"
Pose2 = tuple[float, float, float]


def _compose(a: Pose2, b: Pose2) -> Pose2:
    """Pose `b`, given in the frame of pose `a`, in `a`'s parent frame."""
    c, s = math.cos(a[2]), math.sin(a[2])
    return a[0] + c * b[0] - s * b[1], a[1] + s * b[0] + c * b[1], a[2] + b[2]


def _inverse(a: Pose2) -> Pose2:
    c, s = math.cos(a[2]), math.sin(a[2])
    return -c * a[0] - s * a[1], s * a[0] - c * a[1], -a[2]


def _edges(rec: Recording, topic: str) -> dict[str, dict[str, Pose2]]:
    """frame -> {neighbour: the neighbour's pose in frame}, both ways along each static transform."""
    last: dict[str, tuple[str, Pose2]] = {}   # child -> (parent, child in parent)
    for item in rec.items([topic]):
        msg, _ = decode(item.frames, expect=Odometry)
        assert isinstance(msg, Odometry)
        qx, qy, qz, qw = (float(v) for v in msg.orientation)
        pose = (float(msg.position[0]), float(msg.position[1]),
                math.atan2(2 * (qw * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz)))
        if all(map(math.isfinite, pose)):
            last[msg.child_frame_id.strip("/")] = (msg.frame_id.strip("/"), pose)
    edges: dict[str, dict[str, Pose2]] = {}
    for child, (parent, pose) in last.items():
        edges.setdefault(parent, {})[child] = pose
        edges.setdefault(child, {})[parent] = _inverse(pose)
    return edges


def mounting_offset(rec: Recording, carrier: str, sensor: str, topic: str = TF_STATIC) -> Pose2 | None:
    """(x, y, yaw) of frame `sensor` in frame `carrier` from `topic`'s static transforms; None when the
    recording has no such topic. A ConfigError names both frames and those it knows when no chain of
    static transforms joins them."""
    if topic not in {t.name for t in rec.info().topics}:
        return None
    carrier, sensor = carrier.strip("/"), sensor.strip("/")
    edges = _edges(rec, topic)
    found: dict[str, Pose2] = {carrier: (0.0, 0.0, 0.0)}
    todo = deque([carrier])
    while todo and sensor not in found:
        frame = todo.popleft()
        for nxt, pose in edges.get(frame, {}).items():
            if nxt not in found:
                found[nxt] = _compose(found[frame], pose)
                todo.append(nxt)
    if sensor not in found:
        raise ConfigError(f"{rec.path}: {topic} joins no chain of transforms from {carrier!r} (the pose's "
                          f"child frame) to {sensor!r} (the scan's frame); its frames: "
                          f"{', '.join(sorted(edges)) or 'none'}; give --lidar-offset X,Y,YAW")
    x, y, yaw = found[sensor]
    return x, y, math.remainder(yaw, math.tau)
