"""The JSON forms of drivecast messages for Foxglove (`foxglove.SceneUpdate`, `foxglove.LaserScan`,
`foxglove.PoseInFrame`, `foxglove.LocationFix`, and a plain `drivecast.Imu`): what
`pipeline.recordings.foxglove` writes for every schema that is not an image or a point cloud. Minimal
`jsonschema` schemas: Foxglove picks the renderer by schema name. An empty `frame_id` becomes
`world`, so that the 3D panel has a frame.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from pipeline.wire.messages import Detections, GnssFix, Imu, LaserScan, Message, Odometry, Predictions, Tracks

__all__ = ["JSON", "frame"]

_DEFAULT_FRAME = "world"
_IDENTITY = {"position": {"x": 0.0, "y": 0.0, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}
# agent kind -> RGBA (unknown, vehicle, pedestrian, cyclist)
_SPHERE = {"x": 0.5, "y": 0.5, "z": 0.5}
_COLORS = [(0.6, 0.6, 0.6), (0.2, 0.5, 1.0), (1.0, 0.6, 0.1), (0.3, 0.8, 0.3)]


def _time(ns: int) -> dict[str, int]:
    return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}


def frame(msg: Message) -> str:
    return msg.frame_id or _DEFAULT_FRAME


def _color(kind: int, a: float = 1.0) -> dict[str, float]:
    r, g, b = _COLORS[kind] if 0 <= kind < len(_COLORS) else _COLORS[0]
    return {"r": r, "g": g, "b": b, "a": a}


def _entity(msg: Message, entity_id: str, **prims: list[Any]) -> dict[str, Any]:
    e: dict[str, Any] = {"timestamp": _time(msg.stamp_ns), "frame_id": frame(msg), "id": entity_id,
                         "lifetime": {"sec": 0, "nsec": 0}, "frame_locked": False, "metadata": []}
    for k in ("arrows", "cubes", "spheres", "cylinders", "lines", "triangles", "texts", "models"):
        e[k] = prims.get(k, [])
    return e


def _tracks(msg: Tracks, topic: str) -> dict[str, Any]:
    spheres, texts, arrows = [], [], []
    q0 = _IDENTITY["orientation"]
    speed = np.hypot(msg.vxy[:, 0], msg.vxy[:, 1]).tolist()
    yaw = np.arctan2(msg.vxy[:, 1], msg.vxy[:, 0])
    qz, qw = np.sin(yaw / 2).tolist(), np.cos(yaw / 2).tolist()
    for i, ((x, y), agent, kind) in enumerate(zip(msg.xy.tolist(), msg.ids.tolist(), msg.kind.tolist(), strict=False)):
        position = {"x": x, "y": y, "z": 0.0}
        color = _color(kind)
        spheres.append({"pose": {"position": position, "orientation": q0}, "size": _SPHERE, "color": color})
        texts.append({"pose": {"position": {"x": x, "y": y, "z": 0.6}, "orientation": q0}, "billboard": True,
                      "font_size": 14.0, "scale_invariant": True, "color": color, "text": str(agent)})
        if speed[i] > 1e-3:
            arrows.append({"pose": {"position": position, "orientation": {"x": 0.0, "y": 0.0, "z": qz[i], "w": qw[i]}},
                           "shaft_length": speed[i], "shaft_diameter": 0.05, "head_length": 0.15,
                           "head_diameter": 0.15, "color": color})
    return {"deletions": [], "entities": [_entity(msg, topic, spheres=spheres, texts=texts, arrows=arrows)]}


def _line(path: list[list[float]], color: dict[str, float], thickness: float) -> dict[str, Any]:
    """A line strip (LinePrimitive type 0) through the points of path[T][2], at z = 0."""
    return {"type": 0, "pose": _IDENTITY, "thickness": thickness, "scale_invariant": False,
            "points": [{"x": x, "y": y, "z": 0.0} for x, y in path], "color": color, "colors": [], "indices": []}


def _predictions(msg: Predictions, topic: str) -> dict[str, Any]:
    """A line per agent; with K futures (`modes`), a line per future, drawn as strongly as it is probable
    next to the agent's most probable one: alpha 0.1 to 0.9, thickness 0.04 to 0.08 m in proportion to
    its probability over the most probable's (which is drawn as the one line of a single future, last,
    on top). Probabilities a hostile message makes NaN or out of [0, 1] count as 0 or are clipped."""
    kinds = msg.kind.tolist()
    colors = [kinds[i] if i < len(kinds) else 0 for i in range(len(msg.xy))]
    if not msg.modes.shape[1]:
        lines = [_line(path, _color(c, 0.9), 0.08) for c, path in zip(colors, msg.xy.tolist(), strict=True)]
        return {"deletions": [], "entities": [_entity(msg, topic, lines=lines)]}
    p = np.nan_to_num(np.clip(msg.prob.astype(np.float64), 0.0, 1.0))
    strength = (p / np.maximum(p.max(1, keepdims=True), 1e-12)).tolist()
    lines = []
    for c, paths, s, order in zip(colors, msg.modes.tolist(), strength, np.argsort(p, 1, kind="stable").tolist(),
                                  strict=True):
        lines += [_line(paths[k], _color(c, 0.1 + 0.8 * s[k]), 0.04 + 0.04 * s[k]) for k in order]
    return {"deletions": [], "entities": [_entity(msg, topic, lines=lines)]}


def _detections(msg: Detections, topic: str) -> dict[str, Any]:
    """A box per object (its footprint, 1.5 m high; 0.5 m where no size is known), labelled with its
    track id when it has one."""
    cubes, texts = [], []
    for (x, y), oid, kind, length, width, yaw in zip(msg.xy.tolist(), msg.ids.tolist(), msg.kind.tolist(),
                                                     msg.length.tolist(), msg.width.tolist(), msg.heading.tolist(),
                                                     strict=False):
        color = _color(kind, 0.5)
        pose = {"position": {"x": x, "y": y, "z": 0.75}, "orientation": _yaw_quat(yaw)}
        cubes.append({"pose": pose, "size": {"x": _size(length), "y": _size(width), "z": 1.5}, "color": color})
        if oid >= 0:
            texts.append({"pose": {"position": {"x": x, "y": y, "z": 1.8}, "orientation": _IDENTITY["orientation"]},
                          "billboard": True, "font_size": 14.0, "scale_invariant": True, "color": color,
                          "text": str(oid)})
    return {"deletions": [], "entities": [_entity(msg, topic, cubes=cubes, texts=texts)]}


def _size(v: float) -> float:
    return v if math.isfinite(v) and v > 0 else 0.5


def _yaw_quat(yaw: float) -> dict[str, float]:
    yaw = yaw if math.isfinite(yaw) else 0.0
    return {"x": 0.0, "y": 0.0, "z": math.sin(yaw / 2), "w": math.cos(yaw / 2)}


def _laserscan(msg: LaserScan, topic: str) -> dict[str, Any]:
    """No-return beams become NaN (null in JSON: not drawn)."""
    r = msg.ranges.astype(np.float64)
    r[~((r >= msg.range_min) & (r <= msg.range_max))] = np.nan
    end = msg.angle_min + msg.angle_increment * max(len(r) - 1, 0)
    return {"timestamp": _time(msg.stamp_ns), "frame_id": frame(msg), "pose": _IDENTITY,
            "start_angle": msg.angle_min, "end_angle": end, "ranges": r.tolist(),
            "intensities": msg.intensities.tolist()}


def _odometry(msg: Odometry, topic: str) -> dict[str, Any]:
    p, q = msg.position, msg.orientation
    return {"timestamp": _time(msg.stamp_ns), "frame_id": frame(msg), "pose": {
        "position": {"x": float(p[0]), "y": float(p[1]), "z": float(p[2])},
        "orientation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])}}}


def _gnss(msg: GnssFix, topic: str) -> dict[str, Any]:
    return {"timestamp": _time(msg.stamp_ns), "frame_id": frame(msg), "latitude": msg.latitude,
            "longitude": msg.longitude, "altitude": msg.altitude, "position_covariance": [0.0] * 9,
            "position_covariance_type": 0}


def _imu(msg: Imu, topic: str) -> dict[str, Any]:
    return {"timestamp": _time(msg.stamp_ns), "frame_id": msg.frame_id,
            "orientation": msg.orientation.tolist(), "angular_velocity": msg.angular_velocity.tolist(),
            "linear_acceleration": msg.linear_acceleration.tolist()}


JSON: dict[str, tuple[str, Callable[[Any, str], dict[str, Any]], list[str]]] = {
    Tracks.SCHEMA: ("foxglove.SceneUpdate", _tracks, ["deletions", "entities"]),
    Predictions.SCHEMA: ("foxglove.SceneUpdate", _predictions, ["deletions", "entities"]),
    Detections.SCHEMA: ("foxglove.SceneUpdate", _detections, ["deletions", "entities"]),
    LaserScan.SCHEMA: ("foxglove.LaserScan", _laserscan, ["timestamp", "frame_id", "pose", "start_angle", "end_angle",
                                                           "ranges", "intensities"]),
    Odometry.SCHEMA: ("foxglove.PoseInFrame", _odometry, ["timestamp", "frame_id", "pose"]),
    GnssFix.SCHEMA: ("foxglove.LocationFix", _gnss, ["timestamp", "frame_id", "latitude", "longitude", "altitude"]),
    Imu.SCHEMA: ("drivecast.Imu", _imu, ["timestamp", "frame_id", "orientation", "angular_velocity",
                                         "linear_acceleration"]),
}
