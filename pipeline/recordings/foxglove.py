"""Drivecast messages as Foxglove well-known schemas, so a drive opens in Foxglove (or Lichtblick)
with 3D, image and plot panels. Used by the recorder (the stored form of images and point clouds,
and mirror channels `/foxglove/<topic>` for the rest) and the live bridge node.

| drivecast   | Foxglove schema                    | shown as                                            |
|-------------|------------------------------------|-----------------------------------------------------|
| Tracks      | foxglove.SceneUpdate               | a sphere and an id label per agent, velocity arrows |
| Predictions | foxglove.SceneUpdate               | one line strip per agent (predicted path), or per   |
|             |                                    | future of K, alpha and width by its probability     |
| Detections  | foxglove.SceneUpdate               | a box per object, its track id where it has one     |
| LaserScan   | foxglove.LaserScan                 | the scan's returns (3D)                             |
| Odometry    | foxglove.PoseInFrame               | a pose (3D), x/y plots                              |
| GnssFix     | foxglove.LocationFix               | the Map panel                                       |
| Image       | foxglove_msgs/msg/RawImage (CDR)   | the Image panel                                     |
| PointCloud  | foxglove_msgs/msg/PointCloud (CDR) | 3D points (float32 columns as named in `fields`)    |
| Imu         | drivecast.Imu (plain)              | plots                                               |

Small messages are JSON (`pipeline.recordings.foxglove_json`). Images and point clouds are ROS 2 CDR with `ros2msg` schemas of the same Foxglove types
(the `foxglove_msgs` package): JSON would carry their bytes as base64, a copy, a third more bytes
and slower compression. An empty `frame_id` becomes `world` so that the 3D panel has a frame.

Images and point clouds are stored once, not mirrored (`STORED`, `stored`): as their Foxglove
type plus a trailing `drivecast_header` field, `data` and `drivecast_header` being the wire frames
verbatim. Foxglove decodes with the schema text in the file and ignores the extra field; replay
slices the frames back out (`pipeline.recordings.mcap_format.unpack_stored`). Both sides take the
field order from that schema text (`_layout`). `convert` serves the messages that do not fit, and
the bridge.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import msgspec
import numpy as np

from pipeline.errors import DecodeError
from pipeline.recordings.foxglove_json import JSON, frame
from pipeline.wire.codec import decode
from pipeline.wire.messages import SCHEMAS, Image, Message, PointCloud

__all__ = ["STORED", "ChannelSpec", "Layout", "StoredForm", "channel_spec", "convert", "stored", "supported"]


class _Cdr:
    """A little-endian ROS 2 CDR writer (alignment relative to the end of the 4-byte encapsulation).
    The methods named like a layout's kinds (`_KINDS`) write one field of that kind."""

    def __init__(self) -> None:
        self.parts: list[Any] = [b"\x00\x01\x00\x00"]
        self.pos = 0

    def _put(self, fmt: str, size: int, *v: Any) -> None:
        pad = -self.pos % size
        if pad:
            self.parts.append(b"\0" * pad)
        self.parts.append(struct.pack(fmt, *v))
        self.pos += pad + struct.calcsize(fmt)

    def time(self, ns: int) -> None:
        # builtin_interfaces/Time has int32 seconds: saturate stamps outside 1901..2038
        sec = min(max(ns // 1_000_000_000, -(2**31)), 2**31 - 1)
        self._put("<iI", 4, sec, ns % 1_000_000_000)

    def u32(self, v: int) -> None:
        self._put("<I", 4, v)

    def u8(self, v: int) -> None:
        self._put("<B", 1, v)

    def pose(self, v: Sequence[float]) -> None:
        self._put("<7d", 8, *v)  # position x, y, z, orientation x, y, z, w

    def string(self, text: str) -> None:
        b = text.encode() + b"\0"
        self.u32(len(b))
        self.parts.append(b)
        self.pos += len(b)

    def packed_fields(self, fields: Sequence[tuple[str, int, int]]) -> None:
        self.u32(len(fields))
        for name, offset, numeric_type in fields:
            self.string(name)
            self.u32(offset)
            self.u8(numeric_type)

    def blob(self, data: Any) -> None:
        view = memoryview(data).cast("B") if getattr(data, "size", 1) else memoryview(b"")
        self.u32(view.nbytes)
        self.parts.append(view)
        self.pos += view.nbytes

    def bytes(self) -> bytes:
        return b"".join(self.parts)


_SEP = "\n" + "=" * 80 + "\n"
_TIME = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec"
_RAW_IMAGE_FIELDS = ("builtin_interfaces/Time timestamp\nstring frame_id\nuint32 width\nuint32 height\n"
                     "string encoding\nuint32 step\nuint8[] data")
_POINT_CLOUD_FIELDS = ("builtin_interfaces/Time timestamp\nstring frame_id\ngeometry_msgs/Pose pose\n"
                       "uint32 point_stride\nfoxglove_msgs/PackedElementField[] fields\nuint8[] data")
_POINT_CLOUD_DEPS = (
    _TIME,
    "MSG: geometry_msgs/Pose\ngeometry_msgs/Point position\ngeometry_msgs/Quaternion orientation",
    "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z",
    "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w",
    "MSG: foxglove_msgs/PackedElementField\nstring name\nuint32 offset\nuint8 type")
# What a stored type has after its own fields (`STORED`): Foxglove decodes with the schema text in
# the file, so it reads this field too and ignores it.
_HEADER_FIELD = ("\n# the drivecast wire header of this message, byte for byte (pipeline.wire.codec)\n"
                 "uint8[] drivecast_header")

# The kind of each field type that comes before `uint8[] data`: a `_Cdr` method here and a reader
# method in `pipeline.recordings.mcap_format`, so the order and alignment come from the schema text alone.
_KINDS = {"builtin_interfaces/Time": "time", "string": "string", "uint32": "u32", "geometry_msgs/Pose": "pose",
          "foxglove_msgs/PackedElementField[]": "packed_fields"}
Layout = tuple[tuple[str, str], ...]


def _layout(fields: str) -> Layout:
    """`(name, kind)` of the fields of a ros2msg text before its last one, `uint8[] data`."""
    return tuple((name, _KINDS[typ]) for typ, name in (line.split() for line in fields.splitlines()[:-1]))


_RAW_IMAGE_LAYOUT = _layout(_RAW_IMAGE_FIELDS)
_POINT_CLOUD_LAYOUT = _layout(_POINT_CLOUD_FIELDS)
_FLOAT32 = 7  # foxglove_msgs/PackedElementField type (NumericType)
_IDENTITY_POSE = (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def _cdr(layout: Layout, values: Sequence[Any], *blobs: Any) -> bytes:
    """One CDR message: `values` as the fields of `layout`, then each of `blobs` as a uint8[]."""
    out = _Cdr()
    for (_, kind), value in zip(layout, values, strict=True):
        getattr(out, kind)(value)
    for blob in blobs:
        out.blob(blob)
    return out.bytes()


def _image_values(msg: Image, data: np.ndarray) -> tuple[Any, ...]:
    h, w, c = data.shape
    return msg.stamp_ns, frame(msg), w, h, msg.encoding, w * c * data.dtype.itemsize


def _image(msg: Image, topic: str, preview: bool = False) -> bytes:
    data = _half(msg.data) if preview else msg.data
    return _cdr(_RAW_IMAGE_LAYOUT, _image_values(msg, data), np.ascontiguousarray(data))


def _half(image: np.ndarray) -> np.ndarray:
    """Every other row and column of an HxWxC image, pixels copied whole: numpy copies
    `image[::2, ::2]` of an RGB image one byte at a time, a C-byte item per pixel is faster."""
    if not image.size:
        return image[::2, ::2]
    rows = np.ascontiguousarray(image[::2])
    pixels = rows.reshape(len(rows), -1).view(f"V{image.shape[2] * image.dtype.itemsize}")
    return np.ascontiguousarray(pixels[:, ::2]).view(image.dtype).reshape(len(rows), -1, image.shape[2])


def _names(msg: PointCloud) -> list[str]:
    return [n.strip() for n in msg.fields.split(",")]


def _cloud_values(msg: PointCloud, pts: np.ndarray) -> tuple[Any, ...]:
    fields = [(name, 4 * i, _FLOAT32) for i, name in enumerate(_names(msg))]
    return msg.stamp_ns, frame(msg), _IDENTITY_POSE, 4 * pts.shape[1] if pts.ndim == 2 else 0, fields


def _points(msg: PointCloud, topic: str, preview: bool = False) -> bytes:
    pts = np.ascontiguousarray(msg.points[::4] if preview else msg.points, dtype="<f4")
    return _cdr(_POINT_CLOUD_LAYOUT, _cloud_values(msg, pts), pts)


class ChannelSpec(NamedTuple):
    message_encoding: str   # "json" or "cdr"
    schema_name: str
    schema_encoding: str    # "jsonschema" or "ros2msg"
    schema_data: bytes


_CDR_TYPES: dict[str, tuple[str, str, tuple[str, ...], Callable[[Any, str, bool], bytes]]] = {
    Image.SCHEMA: ("foxglove_msgs/msg/RawImage", _RAW_IMAGE_FIELDS, (_TIME,), _image),
    PointCloud.SCHEMA: ("foxglove_msgs/msg/PointCloud", _POINT_CLOUD_FIELDS, _POINT_CLOUD_DEPS, _points),
}


def supported(schema: str) -> bool:
    return schema in JSON or schema in _CDR_TYPES


def _ros2msg(schema: str, extra: str = "") -> ChannelSpec:
    """The channel of a CDR type, with `extra` field lines after the type's own fields."""
    name, fields, deps, _ = _CDR_TYPES[schema]
    return ChannelSpec("cdr", name, "ros2msg", _SEP.join((fields + extra, *deps)).encode())


def channel_spec(schema: str) -> ChannelSpec:
    """How the Foxglove form of a drivecast schema is written: encoding and schema record."""
    if schema in _CDR_TYPES:
        return _ros2msg(schema)
    name, _, props = JSON[schema]
    body = {"title": name, "type": "object", "properties": {p: {} for p in props}}
    return ChannelSpec("json", name, "jsonschema", json.dumps(body, sort_keys=True).encode())


_encoder = msgspec.json.Encoder()


def convert(msg: Message, topic: str, preview: bool = False) -> bytes:
    """`msg` in its Foxglove form (deterministic: same message, same bytes). `preview`: images at
    half resolution (every other row and column), clouds with every 4th point."""
    schema = type(msg).SCHEMA
    if schema in _CDR_TYPES:
        return _CDR_TYPES[schema][3](msg, topic, preview)
    return _encoder.encode(JSON[schema][1](msg, topic))


# -- images and point clouds stored once: the recorder's channel of such a topic is the Foxglove type ------

# Bytes per pixel of the RawImage encodings Foxglove displays (its documented list): an Image's
# uint8 data is HxWxC, so C must be this for the panel to read `step * height` bytes right.
_PIXEL_BYTES = {"mono8": 1, "8UC1": 1, "bayer_rggb8": 1, "bayer_bggr8": 1, "bayer_gbrg8": 1, "bayer_grbg8": 1,
                "mono16": 2, "16UC1": 2, "uyvy": 2, "yuv422": 2, "yuyv": 2, "yuv422_yuy2": 2,
                "rgb8": 3, "bgr8": 3, "8UC3": 3, "rgba8": 4, "bgra8": 4, "32FC1": 4}


def _stored_image(msg: Image) -> tuple[Any, ...] | None:
    """None for an encoding Foxglove does not display, or one whose bytes per pixel are not C."""
    return _image_values(msg, msg.data) if _PIXEL_BYTES.get(msg.encoding) == msg.data.shape[2] else None


def _stored_cloud(msg: PointCloud) -> tuple[Any, ...] | None:
    """None when `fields` does not name the F columns (the 3D panel would read the wrong bytes)."""
    return _cloud_values(msg, msg.points) if len(_names(msg)) == msg.points.shape[1] else None


class StoredForm(NamedTuple):
    """How the recorder stores a drivecast schema whose message has one array: as a Foxglove CDR
    type plus a trailing `uint8[] drivecast_header`, the type's `data` being the array frame."""

    spec: ChannelSpec                                # the channel's encodings and schema record
    layout: Layout                                   # (name, kind) of the fields before `data`
    values: Callable[[Any], tuple[Any, ...] | None]  # their values for a message; None: it does not fit
    checked: tuple[str, ...]                         # the fields that describe `data`: the reader checks them


STORED: dict[str, StoredForm] = {
    Image.SCHEMA: StoredForm(_ros2msg(Image.SCHEMA, _HEADER_FIELD), _RAW_IMAGE_LAYOUT, _stored_image,
                             ("width", "height", "encoding", "step")),
    PointCloud.SCHEMA: StoredForm(_ros2msg(PointCloud.SCHEMA, _HEADER_FIELD), _POINT_CLOUD_LAYOUT, _stored_cloud,
                                  ("point_stride", "fields")),
}


def stored(schema: str, frames: Sequence[Any]) -> bytes | None:
    """The record that stores one wire message `[header, data]` of `schema` in its `STORED` form:
    CDR of the Foxglove type whose `data` is the data frame and whose `drivecast_header` is the
    header frame, both verbatim. Foxglove shows it in full; `pipeline.recordings.mcap_format.unpack_stored`
    slices the two frames back out, so replay stays byte-identical. One join of the frames, no
    numpy copy.

    None when the schema has no stored form or the frames do not fit it (not a valid message of
    the schema, or one the form refuses: see `_stored_image`, `_stored_cloud`). The recorder then
    keeps the drivecast form.
    """
    form = STORED.get(schema)
    if form is None:
        return None
    try:
        msg = decode(frames, expect=SCHEMAS[schema])[0]
    except DecodeError:
        return None
    values = form.values(msg)
    if values is None:
        return None
    header, data = (memoryview(getattr(f, "buffer", f)).cast("B") for f in frames)
    return _cdr(form.layout, values, data, header)
