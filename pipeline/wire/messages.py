"""Message schemas: typed headers plus struct-of-arrays numpy fields.

Every message carries the same header fields (`stamp_ns` = sensor time in integer nanoseconds,
`frame_id`, `seq`). Per-item data are numpy arrays in struct-of-arrays form (`Tracks.xy` is
`float32[N, 2]`, never a list of objects), so a message of 1000 agents is a handful of buffers that
travel zero-copy. Each array field declares its dtype and shape (a name for a free axis); the codec
checks received arrays against exactly these declarations.

A schema is a dataclass subclass of `Message` with a `SCHEMA` name and a `VERSION`; subclassing
registers it. Bump `VERSION` when a field changes meaning or layout: peers refuse other versions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

__all__ = [
    "SCHEMAS",
    "AgentKind",
    "ArraySpec",
    "Clock",
    "Detections",
    "Diagnostics",
    "GnssFix",
    "Image",
    "Imu",
    "LaserScan",
    "Message",
    "Odometry",
    "PointCloud",
    "Predictions",
    "StateEvent",
    "Tracks",
    "schema_by_name",
]


class AgentKind:
    """Values of the `kind` arrays (uint8). Kept as plain ints: they travel in arrays."""

    UNKNOWN = 0
    VEHICLE = 1
    PEDESTRIAN = 2
    CYCLIST = 3
    NAMES: ClassVar[dict[int, str]] = {0: "unknown", 1: "vehicle", 2: "pedestrian", 3: "cyclist"}


@dataclass(frozen=True)
class ArraySpec:
    """Declared dtype and shape of an array field. An axis is a fixed size (int) or a name (str):
    arrays of one message that name the same axis must agree on its length (`Tracks.ids` and
    `Tracks.xy` both have N rows), which the codec checks on both sides of the wire."""

    dtype: np.dtype
    shape: tuple[int | str, ...]

    def empty(self) -> np.ndarray:
        return np.zeros(tuple(0 if isinstance(d, str) else d for d in self.shape), dtype=self.dtype)


def array(dtype: str, *shape: int | str) -> Any:
    """Declare an array field of a message (used as a dataclass field default)."""
    spec = ArraySpec(np.dtype(dtype), tuple(shape))
    return field(default_factory=spec.empty, metadata={"array": spec})


SCHEMAS: dict[str, type[Message]] = {}
_M = TypeVar("_M", bound="type[Message]")


@dataclass(kw_only=True, eq=False)
class Message:
    """Base of all schemas: the header fields every message has."""

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    # Sensor data of any size (camera frames, 3D clouds): queues hold fewer of them (`endpoints.BULK_HWM`).
    BULK: ClassVar[bool] = False
    ARRAYS: ClassVar[dict[str, ArraySpec]]
    SCALARS: ClassVar[dict[str, type]]

    stamp_ns: int = 0
    frame_id: str = ""
    seq: int = 0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.SCHEMA:
            SCHEMAS[cls.SCHEMA] = cls

    def __post_init__(self) -> None:
        # Coerce arrays to their declared dtype once, at construction: a publisher that builds
        # `xy` from float64 data still sends float32, and decode never sees a surprise.
        for name, spec in self.ARRAYS.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.dtype != spec.dtype:
                setattr(self, name, np.asarray(a, dtype=spec.dtype))

    def __eq__(self, other: object) -> bool:
        """Field-wise equality, arrays compared by dtype, shape and value (tests, replay checks)."""
        if type(other) is not type(self):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                if a.dtype != b.dtype or a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                    return False
            elif a != b:
                return False
        return True


def _finish(cls: _M) -> _M:
    """Collect a schema's array and scalar fields once, so the codec never introspects per message."""
    arrays, scalars = {}, {}
    hints = {"int": int, "float": float, "str": str, "bool": bool, "dict[str, float]": dict}
    for f in dataclasses.fields(cls):
        if "array" in f.metadata:
            arrays[f.name] = f.metadata["array"]
        else:
            t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            scalars[f.name] = hints[t]
    cls.ARRAYS, cls.SCALARS = arrays, scalars
    return cls


@_finish
@dataclass(kw_only=True, eq=False)
class Tracks(Message):
    """Tracked agents at one time: world-frame positions (m) and velocities (m/s)."""

    SCHEMA = "drivecast/Tracks"
    ids: np.ndarray = array("int64", "N")
    xy: np.ndarray = array("float32", "N", 2)
    vxy: np.ndarray = array("float32", "N", 2)
    kind: np.ndarray = array("uint8", "N")


@_finish
@dataclass(kw_only=True, eq=False)
class Detections(Message):
    """Objects seen in one sensor frame, or a tracker's boxes: centre (m), footprint and heading.

    `length` is along `heading` (rad, counter-clockwise from the frame's x axis), `width` across it;
    `observed` says which of them the sensor saw (`OBSERVED_*` bits: a lidar that sees one side of a
    car knows its length, not its width; 0 for a point-like object). `ids` are -1 for untracked
    detections and the track id in a tracker's output."""

    SCHEMA = "drivecast/Detections"
    VERSION = 2
    OBSERVED_LENGTH: ClassVar[int] = 1
    OBSERVED_WIDTH: ClassVar[int] = 2
    OBSERVED_HEADING: ClassVar[int] = 4
    xy: np.ndarray = array("float32", "N", 2)
    kind: np.ndarray = array("uint8", "N")
    score: np.ndarray = array("float32", "N")
    ids: np.ndarray = array("int64", "N")
    length: np.ndarray = array("float32", "N")
    width: np.ndarray = array("float32", "N")
    heading: np.ndarray = array("float32", "N")
    observed: np.ndarray = array("uint8", "N")


@_finish
@dataclass(kw_only=True, eq=False)
class LaserScan(Message):
    """A planar lidar scan (ROS sensor_msgs/LaserScan): beam i at angle `angle_min + i *
    angle_increment` (rad, in `frame_id`) measured `ranges[i]` (m); a range outside [`range_min`,
    `range_max`] or not finite is no return. `intensities` is empty or one per beam. `stamp_ns` is
    the time of the first beam, `time_increment` (s) the time between beams."""

    SCHEMA = "drivecast/LaserScan"
    angle_min: float = 0.0
    angle_increment: float = 0.0
    time_increment: float = 0.0
    range_min: float = 0.0
    range_max: float = 0.0
    ranges: np.ndarray = array("float32", "N")
    intensities: np.ndarray = array("float32", "M")


@_finish
@dataclass(kw_only=True, eq=False)
class Predictions(Message):
    """Future positions per agent in world coordinates at absolute times `t_ns`.

    `stamp_ns` is the stamp of the Tracks message the prediction was made from. One message holds
    agents of one model (one sample period), so `t_ns` is shared by all rows.
    """

    SCHEMA = "drivecast/Predictions"
    model: str = ""
    ids: np.ndarray = array("int64", "N")
    kind: np.ndarray = array("uint8", "N")
    t_ns: np.ndarray = array("int64", "T")
    xy: np.ndarray = array("float32", "N", "T", 2)


@_finish
@dataclass(kw_only=True, eq=False)
class Odometry(Message):
    """Pose and twist of `child_frame_id` in `frame_id` (ROS nav_msgs/Odometry, no covariances)."""

    SCHEMA = "drivecast/Odometry"
    child_frame_id: str = ""
    position: np.ndarray = array("float64", 3)
    orientation: np.ndarray = array("float64", 4)  # quaternion x, y, z, w
    linear: np.ndarray = array("float64", 3)
    angular: np.ndarray = array("float64", 3)


@_finish
@dataclass(kw_only=True, eq=False)
class Imu(Message):
    SCHEMA = "drivecast/Imu"
    orientation: np.ndarray = array("float64", 4)
    angular_velocity: np.ndarray = array("float64", 3)
    linear_acceleration: np.ndarray = array("float64", 3)


@_finish
@dataclass(kw_only=True, eq=False)
class GnssFix(Message):
    SCHEMA = "drivecast/GnssFix"
    latitude: float = 0.0
    longitude: float = 0.0
    altitude: float = 0.0
    status: int = 0


@_finish
@dataclass(kw_only=True, eq=False)
class Image(Message):
    """A camera image, `data` is uint8[height, width, channels]."""

    SCHEMA = "drivecast/Image"
    BULK = True
    encoding: str = "rgb8"
    data: np.ndarray = array("uint8", "H", "W", "C")


@_finish
@dataclass(kw_only=True, eq=False)
class PointCloud(Message):
    """Points as float32[N, len(fields)]; `fields` names the columns ("x,y,z,intensity")."""

    SCHEMA = "drivecast/PointCloud"
    BULK = True
    fields: str = "x,y,z"
    points: np.ndarray = array("float32", "N", "F")


@_finish
@dataclass(kw_only=True, eq=False)
class Clock(Message):
    """The replayed time: `stamp_ns` is the clock value."""

    SCHEMA = "drivecast/Clock"


@_finish
@dataclass(kw_only=True, eq=False)
class Diagnostics(Message):
    """Per-node counters and latency figures, published about once a second."""

    SCHEMA = "drivecast/Diagnostics"
    node: str = ""
    values: dict[str, float] = field(default_factory=dict)


@_finish
@dataclass(kw_only=True, eq=False)
class StateEvent(Message):
    """A node tells downstream that agent states were `restored` or `reset` (and why)."""

    SCHEMA = "drivecast/StateEvent"
    event: str = ""
    reason: str = ""
    ids: np.ndarray = array("int64", "N")


def schema_by_name(name: str) -> type[Message]:
    try:
        return SCHEMAS[name]
    except KeyError:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(sorted(SCHEMAS))}") from None
