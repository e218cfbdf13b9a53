"""Drivecast messages as Foxglove well-known schemas (JSON encoding), so a drive opens in Foxglove
(or Lichtblick) with 3D, image and plot panels. Used by the recorder (mirror channels
`/foxglove/<topic>`) and the live bridge node.

| drivecast   | Foxglove schema         | shown as                                               |
|-------------|-------------------------|--------------------------------------------------------|
| Tracks      | foxglove.SceneUpdate    | a sphere and an id label per agent, velocity arrows    |
| Predictions | foxglove.SceneUpdate    | one line strip per agent (predicted path)              |
| Odometry    | foxglove.PoseInFrame    | a pose (3D), x/y plots                                 |
| GnssFix     | foxglove.LocationFix    | the Map panel                                          |
| Image       | foxglove.RawImage       | the Image panel                                        |
| PointCloud  | foxglove.PointCloud     | 3D points (float32 columns as named in `fields`)       |
| Imu         | drivecast.Imu (plain)   | plots                                                  |

The JSON schemas are minimal (`{"type": "object"}` plus the top-level properties): Foxglove picks
the renderer by schema name. Bytes fields are base64 strings, as Foxglove's JSON encoding expects.
An empty `frame_id` becomes `world` so that the 3D panel has a frame to draw in.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np

from pipeline.messages import GnssFix, Image, Imu, Message, Odometry, PointCloud, Predictions, Tracks

__all__ = ["convert", "json_schema", "supported"]

_DEFAULT_FRAME = "world"
_IDENTITY = {"position": {"x": 0.0, "y": 0.0, "z": 0.0}, "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}
# agent kind -> RGBA (unknown, vehicle, pedestrian, cyclist)
_COLORS = [(0.6, 0.6, 0.6), (0.2, 0.5, 1.0), (1.0, 0.6, 0.1), (0.3, 0.8, 0.3)]


def _time(ns: int) -> dict[str, int]:
    return {"sec": ns // 1_000_000_000, "nsec": ns % 1_000_000_000}


def _frame(msg: Message) -> str:
    return msg.frame_id or _DEFAULT_FRAME


def _color(kind: int, a: float = 1.0) -> dict[str, float]:
    r, g, b = _COLORS[kind] if 0 <= kind < len(_COLORS) else _COLORS[0]
    return {"r": r, "g": g, "b": b, "a": a}


def _entity(msg: Message, entity_id: str, **prims: list[Any]) -> dict[str, Any]:
    e: dict[str, Any] = {"timestamp": _time(msg.stamp_ns), "frame_id": _frame(msg), "id": entity_id,
                         "lifetime": {"sec": 0, "nsec": 0}, "frame_locked": False, "metadata": []}
    for k in ("arrows", "cubes", "spheres", "cylinders", "lines", "triangles", "texts", "models"):
        e[k] = prims.get(k, [])
    return e


def _tracks(msg: Tracks, topic: str) -> dict[str, Any]:
    spheres, texts, arrows = [], [], []
    for i in range(len(msg.ids)):
        x, y = float(msg.xy[i, 0]), float(msg.xy[i, 1])
        kind = int(msg.kind[i])
        pose = {"position": {"x": x, "y": y, "z": 0.0}, "orientation": _IDENTITY["orientation"]}
        spheres.append({"pose": pose, "size": {"x": 0.5, "y": 0.5, "z": 0.5}, "color": _color(kind)})
        texts.append({"pose": {"position": {"x": x, "y": y, "z": 0.6}, "orientation": _IDENTITY["orientation"]},
                      "billboard": True, "font_size": 14.0, "scale_invariant": True,
                      "color": _color(kind), "text": str(int(msg.ids[i]))})
        vx, vy = float(msg.vxy[i, 0]), float(msg.vxy[i, 1])
        speed = float(np.hypot(vx, vy))
        if speed > 1e-3:
            yaw = float(np.arctan2(vy, vx))
            arrows.append({"pose": {"position": pose["position"], "orientation": {
                "x": 0.0, "y": 0.0, "z": float(np.sin(yaw / 2)), "w": float(np.cos(yaw / 2))}},
                "shaft_length": speed, "shaft_diameter": 0.05, "head_length": 0.15, "head_diameter": 0.15,
                "color": _color(kind, 0.8)})
    return {"deletions": [], "entities": [_entity(msg, topic, spheres=spheres, texts=texts, arrows=arrows)]}


def _predictions(msg: Predictions, topic: str) -> dict[str, Any]:
    lines = []
    for i in range(len(msg.ids)):
        pts = [{"x": float(x), "y": float(y), "z": 0.0} for x, y in msg.xy[i]]
        lines.append({"type": 0, "pose": _IDENTITY, "thickness": 0.08, "scale_invariant": False,
                      "points": pts, "color": _color(int(msg.kind[i]) if len(msg.kind) > i else 0, 0.9),
                      "colors": [], "indices": []})
    return {"deletions": [], "entities": [_entity(msg, topic, lines=lines)]}


def _odometry(msg: Odometry, topic: str) -> dict[str, Any]:
    p, q = msg.position, msg.orientation
    return {"timestamp": _time(msg.stamp_ns), "frame_id": _frame(msg), "pose": {
        "position": {"x": float(p[0]), "y": float(p[1]), "z": float(p[2])},
        "orientation": {"x": float(q[0]), "y": float(q[1]), "z": float(q[2]), "w": float(q[3])}}}


def _gnss(msg: GnssFix, topic: str) -> dict[str, Any]:
    return {"timestamp": _time(msg.stamp_ns), "frame_id": _frame(msg), "latitude": msg.latitude,
            "longitude": msg.longitude, "altitude": msg.altitude, "position_covariance": [0.0] * 9,
            "position_covariance_type": 0}


def _image(msg: Image, topic: str) -> dict[str, Any]:
    h, w, c = msg.data.shape
    return {"timestamp": _time(msg.stamp_ns), "frame_id": _frame(msg), "width": w, "height": h,
            "encoding": msg.encoding, "step": w * c, "data": msg.data.tobytes()}


def _points(msg: PointCloud, topic: str) -> dict[str, Any]:
    names = [n.strip() for n in msg.fields.split(",")]
    pts = np.ascontiguousarray(msg.points, dtype="<f4")
    return {"timestamp": _time(msg.stamp_ns), "frame_id": _frame(msg), "pose": _IDENTITY,
            "point_stride": 4 * pts.shape[1] if pts.ndim == 2 else 0,
            "fields": [{"name": n, "offset": 4 * i, "type": 7} for i, n in enumerate(names)],
            "data": pts.tobytes()}


def _imu(msg: Imu, topic: str) -> dict[str, Any]:
    return {"timestamp": _time(msg.stamp_ns), "frame_id": msg.frame_id,
            "orientation": msg.orientation.tolist(), "angular_velocity": msg.angular_velocity.tolist(),
            "linear_acceleration": msg.linear_acceleration.tolist()}


_CONVERT: dict[str, tuple[str, Callable[[Any, str], dict[str, Any]], list[str]]] = {
    Tracks.SCHEMA: ("foxglove.SceneUpdate", _tracks, ["deletions", "entities"]),
    Predictions.SCHEMA: ("foxglove.SceneUpdate", _predictions, ["deletions", "entities"]),
    Odometry.SCHEMA: ("foxglove.PoseInFrame", _odometry, ["timestamp", "frame_id", "pose"]),
    GnssFix.SCHEMA: ("foxglove.LocationFix", _gnss, ["timestamp", "frame_id", "latitude", "longitude", "altitude"]),
    Image.SCHEMA: ("foxglove.RawImage", _image, ["timestamp", "frame_id", "width", "height", "encoding", "step", "data"]),
    PointCloud.SCHEMA: ("foxglove.PointCloud", _points, ["timestamp", "frame_id", "pose", "point_stride", "fields", "data"]),
    Imu.SCHEMA: ("drivecast.Imu", _imu, ["timestamp", "frame_id", "orientation", "angular_velocity",
                                         "linear_acceleration"]),
}

_BYTES = {"data": {"type": "string", "contentEncoding": "base64"}}


def supported(schema: str) -> bool:
    return schema in _CONVERT


def json_schema(schema: str) -> tuple[str, bytes]:
    """(Foxglove schema name, JSON Schema bytes) for a drivecast schema with a conversion."""
    name, _, props = _CONVERT[schema]
    body = {"title": name, "type": "object",
            "properties": {p: _BYTES.get(p, {}) for p in props}}
    return name, json.dumps(body, sort_keys=True).encode()


_encoder = msgspec.json.Encoder()


def convert(msg: Message, topic: str) -> bytes:
    """The JSON bytes of `msg` in its Foxglove schema (deterministic: same message, same bytes)."""
    return _encoder.encode(_CONVERT[type(msg).SCHEMA][1](msg, topic))

